"""Every private torch and torchvision name cellrcnn uses, in one place.

These are underscore names: torchvision may change them in any release.
``tests/utils/test_compat.py`` pins what cellrcnn relies on against the torchvision
version that ``setup.cfg`` asks for, so a change shows up there and nowhere
else. Public names are imported where they are used, not here.
"""

from __future__ import annotations

from torch.nn.modules.batchnorm import _BatchNorm as BatchNormBase
from torchvision.models.detection.backbone_utils import _mobilenet_extractor as mobilenet_extractor
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor as resnet_fpn_extractor
from torchvision.ops.poolers import _setup_scales as setup_scales

__all__ = ["BatchNormBase", "mobilenet_extractor", "resnet_fpn_extractor", "setup_scales"]
