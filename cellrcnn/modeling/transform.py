"""The model's transform (resize, normalise, paste back) and label prediction."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .paste import paste_labels, paste_parts_in_image

__all__ = ["PartRCNNTransform"]


class PartRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's transform whose ``postprocess`` pastes cell and part masks together.

    Follows torchvision 0.29: ``super().postprocess`` rescales the boxes to the
    original image; :func:`paste_parts_in_image` then pastes ``masks`` and
    ``part_masks`` in one pass instead of torchvision's binary paste.

    With ``aligned=True`` the training targets' part masks are not resized at
    all: they keep the image's own resolution and :class:`PartRoIHeads` projects
    them with the proposals scaled back to it, so no label map is ever resampled
    by nearest neighbour. (torchvision resizes them with ``"nearest"``, which
    moves every edge by up to a pixel; even centre-aligned resizing costs 0.011
    cytoplasm Dice on the WBC cells, see docs/benchmarks.md.)
    """

    def __init__(self, *args: Any, mask_threshold: float = 0.5, aligned: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_threshold = mask_threshold
        self.aligned = aligned

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                scale: float | None = None):
        """torchvision's transform; with ``scale`` (eval only), each image is resized by that factor instead of
        to ``min_size``: prediction at the scale the model was trained at, whatever the image size."""
        if scale is None or self.training:
            return super().forward(images, targets)
        resized = []
        for image in images:
            if image.dim() != 3:
                raise ValueError(f"images is expected to be a list of 3d tensors of shape [C, H, W], got {image.shape}")
            # torchvision's order and resize call, with the factor fixed instead of derived from min_size
            resized.append(F.interpolate(self.normalize(image)[None], scale_factor=scale, mode="bilinear",
                                         recompute_scale_factor=True, align_corners=False)[0])
        sizes = [(int(r.shape[-2]), int(r.shape[-1])) for r in resized]
        return ImageList(self.batch_images(resized, size_divisible=self.size_divisible), sizes), targets

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if not self.aligned or target is None or "masks" not in target:
            return super().resize(image, target)
        image, resized = super().resize(image, {k: v for k, v in target.items() if k != "masks"})
        resized["masks"] = target["masks"]
        return image, resized

    def _boxes_to_original(self, result, image_shapes, original_image_sizes) -> list[Tensor]:
        """Each image's ``part_probs``, taken out of ``result``, whose boxes torchvision rescales to the original
        image (its ``masks`` are dropped: they are pasted with the parts)."""
        part_probs = [r.pop("part_probs") for r in result]
        mask_boxes = [r.pop("mask_boxes", None) for r in result]
        for r in result:
            del r["masks"]
        super().postprocess(result, image_shapes, original_image_sizes)
        for r, boxes, shape, size in zip(result, mask_boxes, image_shapes, original_image_sizes):
            # the boxes the masks belong to (grown by the RoI heads' box_scale), in the original image
            r["mask_boxes"] = r["boxes"] if boxes is None else resize_boxes(boxes, shape, size)
        return part_probs

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        part_probs = self._boxes_to_original(result, image_shapes, original_image_sizes)
        for r, probs, size in zip(result, part_probs, original_image_sizes):
            r.update(paste_parts_in_image(probs, r.pop("mask_boxes"), size, self.mask_threshold, self.aligned))
        return result

    def postprocess_labels(self, result, image_shapes, original_image_sizes):
        """As :meth:`postprocess`, but each image's detections pasted straight into ``cells`` and ``parts`` label
        images (:func:`paste_labels`, with ``order``): a tile of hundreds of cells costs two images, not hundreds."""
        part_probs = self._boxes_to_original(result, image_shapes, original_image_sizes)
        for r, probs, size in zip(result, part_probs, original_image_sizes):
            r.update(paste_labels(probs, r.pop("mask_boxes"), r["scores"], size, self.mask_threshold, self.aligned))
        return result


@torch.no_grad()
def predict_labels(model: nn.Module, images: list[Tensor], scale: float | None,
                   score_threshold: float) -> list[dict[str, Tensor]]:
    """Detections of each image pasted into label images: the prediction path, with its settings as arguments.

    ``model(images)`` is left as torchvision's (per-detection masks); this runs
    the same stages (transform, backbone, RPN, RoI heads, postprocess) with the
    settings given instead of any left on the model.

    Parameters
    ----------
    model : torch.nn.Module
        A model from :func:`build_model` (or its DistributedDataParallel
        wrapper), in eval mode.
    images : list of Tensor
        float ``[3, H, W]`` images, values 0..1.
    scale : float or None
        Resize factor from image to network pixels; None resizes each image
        to ``min_size`` as in training.
    score_threshold : float
        Detections scoring at most this are dropped before their masks are
        predicted.

    Returns
    -------
    list of dict
        Per image: ``boxes``, ``labels``, ``scores`` of the detections (the
        RoI heads' order), ``cells`` int64 ``[H, W]`` (label ``k`` is detection
        ``order[k - 1]``), ``parts`` uint8 ``[H, W]`` and ``order`` int64 ``[N]``
        (the detections by descending score).
    """
    model = getattr(model, "module", model)
    if model.training:
        raise ValueError("predict_labels needs the model in eval mode (model.eval())")
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batch, _ = model.transform(images, scale=scale)
    features = model.backbone(batch.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes, score_threshold=score_threshold)
    return model.transform.postprocess_labels(detections, batch.image_sizes, sizes)
