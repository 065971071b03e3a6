"""The private torch and torchvision names of cellrcnn.compat, pinned against the torchvision setup.cfg asks for."""

import configparser
import re

import pytest
import torch
import torchvision
from conftest import REPO
from packaging.version import Version
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from cellrcnn.utils.compat import BatchNormBase, mobilenet_extractor, resnet_fpn_extractor, setup_scales


def test_the_installed_torchvision_is_the_one_setup_cfg_asks_for():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    floor = re.search(r"torchvision>=([\d.]+)", config["options"]["install_requires"]).group(1)
    assert Version(torchvision.__version__.split("+")[0]) >= Version(floor)


def test_setup_scales_gives_each_level_its_stride_and_boxes_their_level():
    image = [(64, 64)]
    features = [torch.zeros(1, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    scales, mapper = setup_scales(features, image, canonical_scale=224, canonical_level=4)
    assert scales == [0.25, 0.125, 0.0625, 0.03125]
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 1000.0, 1000.0]])]
    assert mapper(boxes).tolist() == [0, 2, 3]  # small boxes to the finest level, large ones to the coarsest


def test_resnet_fpn_extractor_freezes_the_stages_not_trained_and_gives_five_maps():
    backbone = resnet_fpn_extractor(resnet18(weights=None, norm_layer=FrozenBatchNorm2d), 2)
    assert isinstance(backbone, BackboneWithFPN) and backbone.out_channels == 256
    trained = {name.split(".")[0] for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert trained == {"layer3", "layer4"}
    out = backbone(torch.zeros(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"] and out["0"].shape == (1, 256, 16, 16)


def test_mobilenet_extractor_gives_its_fpn_maps():
    from torchvision.models import mobilenet_v3_large

    backbone = mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d), True, 3)
    assert backbone.out_channels == 256 and list(backbone(torch.zeros(1, 3, 64, 64))) == ["0", "1", "pool"]


@pytest.mark.parametrize("layer, is_batch_norm", [(nn.BatchNorm2d(4), True), (nn.SyncBatchNorm(4), True),
                                                 (FrozenBatchNorm2d(4), False), (nn.GroupNorm(2, 4), False)])
def test_batch_norm_base_is_every_batch_norm_with_statistics(layer, is_batch_norm):
    assert isinstance(layer, BatchNormBase) is is_batch_norm
