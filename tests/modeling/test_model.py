"""The assembled model: build, one training step, one eval forward, mask geometry, weight loading."""

import math
import os

import numpy as np
import pytest
import torch
import torchvision
from conftest import WBC_DIR
from torch import nn
from torchvision.models.detection import MaskRCNN, fasterrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.faster_rcnn import FasterRCNN_MobileNet_V3_Large_FPN_Weights
from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops import MultiScaleRoIAlign, roi_align

from cellrcnn import (Config, DataConfig, ModelConfig, PartRoIHeads, build_model, find_pairs, load_checkpoint,
                      model_from_checkpoint, part_dice, part_mask_loss, paste_parts_in_image, project_parts_on_boxes)
from cellrcnn.data.dataset import CellDataset, build_target, collate, load_sample
from cellrcnn.modeling.backbone import build_backbone, resolve_norm
from cellrcnn.modeling.heads import AlignedMultiScaleRoIAlign, renamed_legacy_keys
from cellrcnn.modeling.paste import paste_labels, to_label_images

WBC_DATA = DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))

STOCK_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def test_build_composes_torchvision_mask_rcnn(tiny_config):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    model = build_model(tiny_config)
    assert isinstance(model, GeneralizedRCNN)
    # the parts torchvision's MaskRCNN builds from the same backbone and settings: modules, shapes, thresholds
    backbone, _ = build_backbone(tiny_config)
    stock = MaskRCNN(backbone, num_classes=None, min_size=64, max_size=64, rpn_batch_size_per_image=32,
                     box_batch_size_per_image=32, box_predictor=FastRCNNPredictor(1024, 2),
                     mask_head=MaskRCNNHeads(256, [256] * 4, 1, norm_layer=lambda c: torch.nn.GroupNorm(32, c)),
                     mask_predictor=MaskRCNNPredictor(256, 256, 3))  # from scratch: group norm in the heads
    ours, theirs = model.state_dict(), stock.state_dict()
    # the same tensors, the mask branch's under the part head (checkpoints with torchvision's names still load),
    # and ours: the part weights and the size model's buffers
    assert {k: v.shape for k, v in ours.items()
            if k != "roi_heads.part_weights" and not k.startswith("size_model.")} == {
        k: v.shape for k, v in renamed_legacy_keys(theirs).items()}
    for a, b in ((model.rpn, stock.rpn), (model.roi_heads, stock.roi_heads)):
        for name in ("nms_thresh", "score_thresh", "_pre_nms_top_n", "_post_nms_top_n", "detections_per_img"):
            assert getattr(a, name, None) == getattr(b, name, None), name
        assert (a.proposal_matcher.high_threshold, a.proposal_matcher.low_threshold) == (
            b.proposal_matcher.high_threshold, b.proposal_matcher.low_threshold)
        assert vars(a.fg_bg_sampler) == vars(b.fg_bg_sampler)
    assert model.roi_heads.box_coder.weights == stock.roi_heads.box_coder.weights
    assert isinstance(model.roi_heads, PartRoIHeads)
    assert model.roi_heads.part_head.mask_predictor.mask_fcn_logits.out_channels == 3
    assert model.roi_heads.part_weights.tolist() == [1.0, 1.0, 1.0]
    assert model.transform.min_size == (64,) and model.transform.max_size == 64


def test_one_training_step_reduces_nothing_to_nan_and_updates_the_mask_head(tiny_config, synthetic_batch):
    torch.manual_seed(0)
    images, targets = synthetic_batch
    model = build_model(tiny_config).train()
    losses = model(images, targets)
    assert set(losses) == STOCK_LOSSES
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    head = model.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    before = head.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert not torch.equal(before, head.detach())


def test_training_accepts_an_image_without_cells(tiny_config, synthetic_batch):
    images, targets = synthetic_batch
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, *images[1].shape[1:], dtype=torch.uint8)}
    losses = build_model(tiny_config).train()(images, [targets[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_training_rejects_masks_that_do_not_match_the_boxes(tiny_config, synthetic_batch):
    images, targets = synthetic_batch
    t = targets[0]
    bad = dict(t, boxes=torch.cat([t["boxes"], t["boxes"]]), labels=torch.cat([t["labels"], t["labels"]]))
    with pytest.raises(ValueError, match=r"masks must be \[N, H, W\] with one map per box"):
        build_model(tiny_config).train()(images[:1], [bad])


@torch.no_grad()
def test_eval_forward_returns_cell_probabilities_and_part_labels(tiny_config, synthetic_batch):
    torch.manual_seed(0)
    images, _ = synthetic_batch
    model = build_model(tiny_config).eval()
    outputs = model(images)
    for image, out in zip(images, outputs):
        N, (H, W) = len(out["boxes"]), image.shape[1:]
        assert N > 0  # an untrained model still scores its proposals above 0.05 here
        assert out["masks"].shape == (N, 1, H, W) and out["masks"].dtype == torch.float32
        assert out["part_masks"].shape == (N, H, W) and out["part_masks"].dtype == torch.uint8
        assert 0 <= out["masks"].min() and out["masks"].max() <= 1
        assert out["part_masks"].max() <= 2
        assert torch.equal(out["part_masks"] > 0, out["masks"][:, 0] > 0.5)


def test_class_specific_parts_pick_the_logits_of_each_class(tiny_config, synthetic_batch):
    images, targets = synthetic_batch
    config = ModelConfig(**{**tiny_config.__dict__, "num_classes": 3, "class_specific_parts": True})
    model = build_model(config)
    assert model.roi_heads.part_head.mask_predictor.mask_fcn_logits.out_channels == 9
    targets = [dict(t, labels=torch.full_like(t["labels"], 3)) for t in targets]
    losses = model.train()(images, targets)
    losses["loss_mask"].backward()
    grad = model.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight.grad.abs().sum(dim=(1, 2, 3))
    assert grad[6:].sum() > 0 and grad[:6].sum() == 0  # only class 3's parts learn
    with torch.no_grad():
        out = model.eval()(images[:1])[0]
    assert out["part_masks"].shape[1:] == images[0].shape[1:]


PASTE_BOXES = torch.tensor([[10.0, 10.0, 66.0, 66.0], [-5.0, 3.0, 20.0, 40.0], [50.0, 60.0, 95.0, 79.5],
                            [30.2, 12.7, 31.0, 13.1]])  # inside, over the edge, at the corner, tiny


def test_torchvision_paste_matches_torchvision_for_the_whole_cell_and_labels_the_parts():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 28, 28, generator=g).softmax(dim=1)
    out = paste_parts_in_image(probs, PASTE_BOXES, (80, 100), aligned=False)
    expected = paste_masks_in_image(1 - probs[:, :1], PASTE_BOXES, (80, 100))
    torch.testing.assert_close(out["masks"], expected, rtol=0, atol=1e-5)
    assert out["part_masks"].dtype == torch.uint8 and out["part_masks"].max() <= 2
    assert torch.equal(out["part_masks"] > 0, out["masks"][:, 0] > 0.5)


@pytest.mark.parametrize("aligned", [True, False])
def test_paste_labels_the_parts_and_skips_boxes_outside_the_image(aligned):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 56, 56, generator=g).softmax(dim=1)
    out = paste_parts_in_image(probs, PASTE_BOXES, (80, 100), aligned=aligned)
    assert out["masks"].shape == (4, 1, 80, 100) and out["part_masks"].dtype == torch.uint8
    assert torch.equal(out["part_masks"] > 0, out["masks"][:, 0] > 0.5)
    # torchvision fails on a box wholly outside the image; here it simply pastes nothing.
    outside = paste_parts_in_image(probs[:1], torch.tensor([[90.0, 90.0, 120.0, 120.0]]), (80, 100), aligned=aligned)
    assert outside["masks"].max() == 0 and outside["part_masks"].max() == 0


@pytest.mark.parametrize("aligned", [True, False])
def test_paste_picks_the_most_likely_part_inside_the_cell(aligned):
    probs = torch.zeros(1, 3, 28, 28)
    probs[0, :, :, :14] = torch.tensor([0.1, 0.2, 0.7])[:, None, None]  # nucleus-dominated half
    probs[0, :, :, 14:] = torch.tensor([0.1, 0.7, 0.2])[:, None, None]  # cytoplasm-dominated half
    out = paste_parts_in_image(probs, torch.tensor([[10.0, 10.0, 66.0, 66.0]]), (80, 80), aligned=aligned)
    labels = out["part_masks"][0]
    assert labels[38, 15].item() == 2 and labels[38, 60].item() == 1
    assert labels[5, 5].item() == 0 and labels[75, 75].item() == 0


def test_exact_paste_fills_exactly_the_pixels_whose_centre_lies_in_the_box():
    """The definition of pixel-exact: a certain cell spanning its box covers pixel i iff i + 0.5 lies inside
    (checked along the box's middle row and column; corners are rounded by the bilinear edge)."""
    g = torch.Generator().manual_seed(1)
    for M in (28, 56):
        probs = torch.zeros(40, 3, M, M)
        probs[:, 1] = 1.0
        lo = torch.rand(40, 2, generator=g) * 60
        boxes = torch.cat([lo, lo + 8 + torch.rand(40, 2, generator=g) * 60], dim=1)
        exact = paste_parts_in_image(probs, boxes, (130, 140))["part_masks"] > 0
        shifted = paste_parts_in_image(probs, boxes, (130, 140), aligned=False)["part_masks"] > 0
        centres_x, centres_y = torch.arange(140) + 0.5, torch.arange(130) + 0.5
        misses = 0
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            row, col = int((y0 + y1) / 2), int((x0 + x1) / 2)
            assert torch.equal(exact[i, row], (centres_x > x0) & (centres_x < x1)), (M, i)
            assert torch.equal(exact[i, :, col], (centres_y > y0) & (centres_y < y1)), (M, i)
            misses += int(not torch.equal(shifted[i, row], (centres_x > x0) & (centres_x < x1)))
        assert misses > 10  # torchvision's integer boxes miss the edge pixels of most boxes


def test_exact_round_trip_keeps_the_cell_where_it_is():
    """Project a cell onto its box and paste it back: no half-pixel drift in exact mode."""
    yy, xx = np.mgrid[0:96, 0:96]
    centre = (47.3, 41.8)
    cell = ((yy + 0.5 - centre[0]) ** 2 / 30**2 + (xx + 0.5 - centre[1]) ** 2 / 24**2) <= 1
    parts = torch.from_numpy(cell.astype(np.uint8))[None]
    ys, xs = np.nonzero(cell)
    boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    drift = {}
    for aligned in (True, False):
        fractions = project_parts_on_boxes(parts, boxes, torch.zeros(1, dtype=torch.int64), 2, 28, aligned)
        pasted = paste_parts_in_image(fractions, boxes, (96, 96), aligned=aligned)["part_masks"][0].numpy() > 0
        py, px = np.nonzero(pasted)
        drift[aligned] = (py.mean() - ys.mean(), px.mean() - xs.mean())
        assert part_dice(pasted.astype(np.uint8), cell.astype(np.uint8), ("background", "cell"))["cell_dice"] > 0.97
    assert max(map(abs, drift[True])) < 0.05, drift
    assert max(map(abs, drift[False])) > 0.3, drift  # torchvision's geometry moves the cell


@pytest.mark.parametrize("aligned", [True, False])
def test_paste_labels_equals_the_label_images_of_the_full_paste(aligned):
    """The compact paste (label images, one box at a time) gives the pixels of the per-detection paste."""
    g = torch.Generator().manual_seed(2)
    lo = torch.rand(60, 2, generator=g) * 90
    boxes = torch.cat([lo, lo + 4 + torch.rand(60, 2, generator=g) * 40], dim=1)  # overlapping, some past the edge
    probs = torch.rand(60, 3, 28, 28, generator=g).softmax(dim=1)
    scores = torch.rand(60, generator=g)
    full = paste_parts_in_image(probs, boxes, (100, 120), aligned=aligned)
    compact = paste_labels(probs, boxes, scores, (100, 120), aligned=aligned)
    assert compact["cells"].max() > 40  # most detections keep pixels: the overlap rule is exercised
    want = to_label_images({"scores": scores, **full}, 0.0)  # the threshold is applied before the paste
    for got, key in ((compact["cells"], "cells"), (compact["parts"], "parts"), (compact["order"], "kept")):
        assert torch.equal(got, want[key]), key
    start = 0  # each detection's whole mask, overlaps kept, equals its own full paste
    for rank, (y0, y1, x0, x1) in enumerate(compact["crop_boxes"].tolist()):
        own = torch.zeros((100, 120), dtype=torch.uint8)
        own[y0:y1, x0:x1] = compact["crop_parts"][start:start + (y1 - y0) * (x1 - x0)].view(y1 - y0, x1 - x0)
        start += (y1 - y0) * (x1 - x0)
        assert torch.equal(own, full["part_masks"][compact["order"][rank]]), rank
    assert start == len(compact["crop_parts"])
    empty = paste_labels(probs[:0], boxes[:0], scores[:0], (30, 40))
    assert empty["cells"].shape == (30, 40) and empty["cells"].max() == 0 and len(empty["order"]) == 0


def test_paste_with_no_detections_gives_empty_maps():
    out = paste_parts_in_image(torch.zeros(0, 3, 28, 28), torch.zeros(0, 4), (30, 40))
    assert out["masks"].shape == (0, 1, 30, 40) and out["part_masks"].shape == (0, 30, 40)


def wbc_targets():
    data = WBC_DATA
    for pair in find_pairs(WBC_DIR, data):
        sample = load_sample(pair, data)
        target = build_target(sample["parts"], sample["cells"], 1, data)
        yield pair.name, sample["parts"], {k: torch.from_numpy(v) for k, v in target.items()}


@pytest.mark.wbc
def test_wbc_round_trip_is_pixel_exact_and_torchvision_mode_is_torchvision():
    """Every WBC cell projected onto its true box (M = 28) and pasted back: exact mode keeps mean cytoplasm and
    nucleus Dice >= 0.99; torchvision mode equals torchvision's own project and paste functions."""
    scores = {True: [], False: []}
    for name, parts, target in wbc_targets():
        masks, boxes, idx = target["masks"], target["boxes"], torch.arange(len(target["boxes"]))
        for aligned in (True, False):
            fractions = project_parts_on_boxes(masks, boxes, idx, 3, 28, aligned)
            pasted = paste_parts_in_image(fractions, boxes, parts.shape, aligned=aligned)
            scores[aligned].append(part_dice(pasted["part_masks"].max(dim=0).values.numpy(), parts,
                                             ("background", "cytoplasm", "nucleus")))
        # torchvision mode: each part is torchvision's binary projection, the cell its binary paste.
        theirs = torch.stack([project_masks_on_boxes((masks == k).to(torch.uint8), boxes, idx, 28) for k in (1, 2)], 1)
        torch.testing.assert_close(fractions[:, 1:], theirs, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(pasted["masks"], paste_masks_in_image(theirs.sum(1, keepdim=True), boxes,
                                                                         parts.shape), rtol=0, atol=1e-5, msg=name)
    assert len(scores[True]) == 240
    exact, shifted = (pd_mean(scores[a]) for a in (True, False))
    assert exact["cytoplasm_dice"] >= 0.99 and exact["nucleus_dice"] >= 0.99, exact
    assert exact["cell_dice"] >= 0.995, exact
    assert shifted["cytoplasm_dice"] < 0.96, shifted  # the loss this issue set out to remove


def pd_mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def test_aligned_pooler_is_roi_align_with_aligned_true_on_torchvisions_levels():
    g = torch.Generator().manual_seed(0)
    features = {str(k): torch.randn(2, 4, 128 >> k, 128 >> k, generator=g) for k in range(4)}
    boxes = [torch.tensor([[3.2, 5.1, 20.7, 19.9], [10.0, 2.0, 170.0, 160.0]]),  # FPN levels 0 and 1
             torch.tensor([[0.0, 0.0, 300.0, 300.0], [40.3, 60.6, 500.5, 510.2]])]  # levels 2 and 3
    ours = AlignedMultiScaleRoIAlign(list(features), 7, 2)
    theirs = MultiScaleRoIAlign(list(features), 7, 2)
    out, reference = ours(features, boxes, [(512, 512)] * 2), theirs(features, boxes, [(512, 512)] * 2)
    assert ours.scales == theirs.scales
    levels = theirs.map_levels(boxes)
    assert levels.tolist() == [0, 1, 2, 3]
    for j, (image, box) in enumerate((i, b) for i, bs in enumerate(boxes) for b in bs):
        feature, scale = features[str(int(levels[j]))], theirs.scales[int(levels[j])]
        roi = torch.cat([torch.tensor([float(image)]), box])[None]
        torch.testing.assert_close(out[j], roi_align(feature, roi, 7, scale, 2, aligned=True)[0])
        torch.testing.assert_close(reference[j], roi_align(feature, roi, 7, scale, 2, aligned=False)[0])
    assert not torch.allclose(out, reference)


@pytest.mark.parametrize("alignment", ["exact", "torchvision"])
def test_mask_alignment_sets_every_part_of_the_mask_geometry(tiny_config, alignment):
    model = build_model(ModelConfig(**{**tiny_config.__dict__, "mask_alignment": alignment}))
    exact = alignment == "exact"
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.part_head.mask_roi_pool):
        assert isinstance(pool, AlignedMultiScaleRoIAlign) == exact and isinstance(pool, MultiScaleRoIAlign)
    assert model.roi_heads.aligned == exact and model.transform.aligned == exact


@pytest.mark.parametrize("alignment", ["exact", "torchvision"])
def test_training_targets_are_projected_from_the_right_resolution(tiny_config, synthetic_batch, alignment):
    """Exact mode projects from the masks at the image's own resolution (boxes scaled back); torchvision mode
    resizes the masks with the image. Both train, and the exact target is the pixel-exact one."""
    images, targets = synthetic_batch  # 64 x 80 and 64 x 64 images: the 64 x 80 one is resized for min_size 48
    config = ModelConfig(**{**tiny_config.__dict__, "min_size": 48, "max_size": 60, "mask_alignment": alignment})
    model = build_model(config).train()
    batch, resized = model.transform(images, [dict(t) for t in targets])
    assert batch.image_sizes[0] == (48, 60)
    assert resized[0]["masks"].shape[-2:] == ((64, 80) if alignment == "exact" else (48, 60))
    seen = {}
    model.roi_heads.part_head.mask_roi_pool.register_forward_hook(lambda m, args, out: seen.update(boxes=args[1]))
    model.roi_heads.part_head.mask_predictor.register_forward_hook(lambda m, args, out: seen.update(logits=out))
    torch.manual_seed(0)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # The loss equals the pure loss on the proposals (drawn in the 0.75x network frame) taken back by hand to
    # each mask's own grid: exact mode by the image's resize factor, torchvision mode by none.
    proposals, expected_masks = [], []
    for boxes, image, target, net, small in zip(seen["boxes"], images, targets, batch.image_sizes, resized):
        gt = small["boxes"]
        matched = torchvision.ops.box_iou(boxes, gt).argmax(1)  # positives overlap their own cell best
        scale = image.shape[-1] / net[1] if alignment == "exact" else 1.0
        proposals.append((boxes * scale, matched))
        expected_masks.append(target["masks"] if alignment == "exact" else small["masks"])
    expected = part_mask_loss(seen["logits"], [b for b, _ in proposals], expected_masks, [m for _, m in proposals],
                              model.roi_heads.part_weights, aligned=alignment == "exact")
    torch.testing.assert_close(losses["loss_mask"], expected)


@pytest.mark.parametrize("mask_size", [28, 56])
def test_mask_size_sets_the_pooling_and_the_predicted_resolution(tiny_config, synthetic_batch, mask_size):
    images, targets = synthetic_batch
    model = build_model(ModelConfig(**{**tiny_config.__dict__, "mask_size": mask_size}))
    assert model.roi_heads.part_head.mask_roi_pool.output_size == (mask_size // 2,) * 2
    seen = {}
    model.roi_heads.part_head.mask_predictor.register_forward_hook(lambda m, i, o: seen.update(logits=o.shape))
    losses = model.train()(images, targets)
    assert seen["logits"][1:] == (3, mask_size, mask_size)
    assert torch.isfinite(losses["loss_mask"])
    with torch.no_grad():
        out = model.eval()(images[:1])[0]
    assert out["part_masks"].shape[1:] == images[0].shape[1:]


def norm_layers(module):
    return {type(m) for m in module.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm,
                                                                torchvision.ops.FrozenBatchNorm2d))}


@pytest.mark.parametrize("norm, body, fpn_and_mask_head", [
    ("auto", {nn.GroupNorm}, {nn.GroupNorm}),  # weights="none": group norm
    ("group", {nn.GroupNorm}, {nn.GroupNorm}),
    ("batch", {nn.BatchNorm2d}, set()),  # torchvision's v1 FPN and mask head have no normalisation
])
def test_norm_chooses_the_normalisation_layers(tiny_config, norm, body, fpn_and_mask_head):
    model = build_model(ModelConfig(**{**tiny_config.__dict__, "norm": norm}))
    assert norm_layers(model.backbone.body) == body
    assert norm_layers(model.backbone.fpn) == fpn_and_mask_head
    assert norm_layers(model.roi_heads.part_head.mask_head) == fpn_and_mask_head
    assert all(m.num_channels % m.num_groups == 0 for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_group_norm_fits_mobilenet_channels():
    model = build_model(ModelConfig(backbone="mobilenet_v3_fpn", weights="none", min_size=64, max_size=64))
    groups = {(m.num_groups, m.num_channels) for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert (16, 16) in groups and (8, 24) in groups and (32, 256) in groups
    assert not norm_layers(model) - {nn.GroupNorm}


@pytest.mark.wbc
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_first_losses_on_wbc_start_near_chance(norm):
    """A fresh resnet18-FPN from scratch on 4 WBC images: the part loss starts within 20% of ln 3, the two
    classification losses near ln 2; torchvision's own predictor initialisation starts the part loss far above."""
    pairs = find_pairs(WBC_DIR, WBC_DATA)[:4]
    images, targets = collate([CellDataset(pairs, WBC_DATA)[i] for i in range(4)])
    first = {}
    for init in ("chance", "torchvision"):
        torch.manual_seed(0)
        config = ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128, norm=norm,
                             predictor_init=init)
        first[init] = {k: v.item() for k, v in build_model(config).train()(images, targets).items()}
    chance = first["chance"]
    assert abs(chance["loss_mask"] - math.log(3)) < 0.2 * math.log(3), chance
    for name in ("loss_classifier", "loss_objectness"):
        assert abs(chance[name] - math.log(2)) < 0.2 * math.log(2), chance
    assert first["torchvision"]["loss_mask"] > 3 * math.log(3), first["torchvision"]


def test_predictor_init_is_small_and_unbiased(tiny_config):
    model = build_model(tiny_config)
    box, logits = model.roi_heads.box_predictor, model.roi_heads.part_head.mask_predictor.mask_fcn_logits
    for layer, std in ((box.cls_score, 0.01), (box.bbox_pred, 0.001), (logits, 0.001)):
        assert abs(layer.weight.std().item() - std) < 0.2 * std and layer.bias.abs().max() == 0
    stock = build_model(ModelConfig(**{**tiny_config.__dict__, "predictor_init": "torchvision"}))
    assert stock.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight.std() > 0.05


def save(state, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_weights_from_a_local_state_dict_load_every_matching_layer(tiny_config, tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig(**{**tiny_config.__dict__, "norm": "batch"}))
    path = save(source.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(2)
    loaded = build_model(ModelConfig(**{**tiny_config.__dict__, "weights": str(path)}))
    for name, value in source.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # weights from a file mean frozen batch norm, which has no counter
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
    # A cellrcnn checkpoint ({"model": state_dict, ...}) is accepted as well.
    ckpt = save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    again = build_model(ModelConfig(**{**tiny_config.__dict__, "weights": str(ckpt)}))
    torch.testing.assert_close(again.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight,
                               source.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight)


def test_coco_weights_go_through_torchvision_and_keep_predictors_fresh(tmp_path, monkeypatch):
    """The real torchvision path (hub cache) with a local file standing in for the download."""
    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    torch.manual_seed(3)
    stock = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)  # predictor shapes match ours
    save(stock.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(4)
    model = build_model(ModelConfig(backbone="resnet50_fpn", weights="coco", min_size=64, max_size=64))
    ours, theirs = model.state_dict(), stock.state_dict()
    torch.testing.assert_close(ours["backbone.body.layer4.2.conv3.weight"], theirs["backbone.body.layer4.2.conv3.weight"])
    torch.testing.assert_close(ours["roi_heads.part_head.mask_head.0.0.weight"], theirs["roi_heads.mask_head.0.0.weight"])
    torch.testing.assert_close(ours["rpn.head.conv.0.0.weight"], theirs["rpn.head.conv.0.0.weight"])
    theirs = renamed_legacy_keys(theirs)
    for fresh in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.part_head.mask_predictor.conv5_mask.weight"):
        assert ours[fresh].shape == theirs[fresh].shape and not torch.equal(ours[fresh], theirs[fresh]), fresh
    # Pretrained weights freeze batch norm and the two lowest stages, as torchvision does.
    assert isinstance(model.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_coco_weights_for_mobilenet_come_from_faster_rcnn(tmp_path, monkeypatch):
    weights = FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1
    stock = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    save(stock.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(ModelConfig(backbone="mobilenet_v3_fpn", weights="coco", min_size=64, max_size=64))
    ours, theirs = model.state_dict(), stock.state_dict()
    for name in ("backbone.body.16.0.weight", "backbone.fpn.layer_blocks.1.0.weight", "roi_heads.box_head.fc7.weight"):
        torch.testing.assert_close(ours[name], theirs[name], msg=name)


def test_imagenet_weights_load_the_backbone_only(tmp_path, monkeypatch):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    resnet = torchvision.models.resnet18()
    save(resnet.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(ModelConfig(backbone="resnet18_fpn", weights="imagenet", min_size=64, max_size=64))
    torch.testing.assert_close(model.backbone.body.conv1.weight, resnet.conv1.weight)


def test_a_model_started_from_a_weights_file_is_rebuilt_as_it_was_without_the_file(tiny_config, tmp_path):
    """Resume and model_from_checkpoint rebuild the architecture from the recorded config alone: batch norm
    and frozen stages follow the starting weights, and the file is not read again."""
    source = build_model(ModelConfig(**{**tiny_config.__dict__, "norm": "batch"}))
    path = save(source.state_dict(), tmp_path / "start.pt")
    config = resolve_norm(ModelConfig(**{**tiny_config.__dict__, "weights": str(path)}))
    assert config.norm == "frozen"  # a batch-norm file fine-tunes with its statistics frozen
    started = build_model(config)
    path.unlink()  # a rebuild must not need it
    rebuilt = build_model(config, load_weights=False)
    assert isinstance(rebuilt.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert [n for n, p in started.named_parameters() if p.requires_grad] == \
        [n for n, p in rebuilt.named_parameters() if p.requires_grad]
    checkpoint = save({"model": started.state_dict(), "config": Config(model=config).to_dict()}, tmp_path / "best.pt")
    model, _ = model_from_checkpoint(checkpoint)
    torch.testing.assert_close(model.backbone.body.conv1.weight, started.backbone.body.conv1.weight)


def test_a_group_norm_weights_file_builds_group_norm(tiny_config, tmp_path):
    """A from-scratch (group norm) model has no batch-norm statistics: "auto" follows the file, and every
    tensor loads; an explicit batch norm that the file cannot fill is refused, naming the file."""
    torch.manual_seed(5)
    source = build_model(tiny_config)  # weights none: group norm
    assert isinstance(source.backbone.body.bn1, nn.GroupNorm)
    path = save(source.state_dict(), tmp_path / "scratch.pt")
    config = ModelConfig(**{**tiny_config.__dict__, "weights": str(path)})
    assert resolve_norm(config).norm == "group"
    loaded = build_model(config)
    assert isinstance(loaded.backbone.body.bn1, nn.GroupNorm)
    assert loaded.state_dict().keys() == source.state_dict().keys()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
    with pytest.raises(ValueError, match="scratch.pt holds a model trained with group norm"):
        build_model(ModelConfig(**{**tiny_config.__dict__, "weights": str(path), "norm": "batch"}))


def test_a_checkpoint_saved_before_the_geometry_options_loads_in_torchvision_mode(tiny_config, tmp_path):
    """Old checkpoints have no mask_alignment, mask_size, norm or predictor_init in their config: they rebuild
    with torchvision geometry and batch norm (what they were trained with), and their weights load strictly."""
    legacy = ModelConfig(**{**tiny_config.__dict__, "mask_alignment": "torchvision", "norm": "batch",
                            "predictor_init": "torchvision"})
    old = build_model(legacy)
    saved = Config(model=legacy).to_dict()
    for field in ("mask_alignment", "mask_size", "norm", "predictor_init"):
        del saved["model"][field]
    model, config = model_from_checkpoint(save({"model": old.state_dict(), "config": saved}, tmp_path / "old.pt"))
    assert config.model.mask_alignment == "torchvision" and config.model.norm == "batch"
    assert config.model.mask_size == 28
    assert not isinstance(model.roi_heads.part_head.mask_roi_pool, AlignedMultiScaleRoIAlign)
    assert not model.transform.aligned and not model.roi_heads.aligned
    torch.testing.assert_close(model.backbone.body.bn1.running_var, old.backbone.body.bn1.running_var)


def test_checkpoints_with_numpy_rng_state_load_safely_and_the_configs_loss_weights_win(tiny_config, tmp_path):
    """Checkpoints written before this release kept numpy's RNG state, which torch.load(weights_only=True) refused."""
    source = build_model(tiny_config)
    config = Config(model=tiny_config)
    state = {"model": source.state_dict(), "config": config.to_dict(), "epoch": 1,
             "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    path = save(state, tmp_path / "old.pt")
    assert load_checkpoint(path)["epoch"] == 1
    weighted = build_model(ModelConfig(**{**tiny_config.__dict__, "weights": str(path),
                                          "part_weights": {"cytoplasm": 4.0}}))
    torch.testing.assert_close(weighted.roi_heads.part_weights, torch.tensor([1.0, 4.0, 1.0]))
    torch.testing.assert_close(weighted.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight,
                               source.roi_heads.part_head.mask_predictor.mask_fcn_logits.weight)


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, "does not exist"),
        (b"not a checkpoint", ValueError, "cannot read weights from .*: the file is damaged or is no torch file; "
                                          "save or copy it again"),
        ({"epoch": 1}, ValueError, "is neither a cellrcnn checkpoint nor a state dict"),
        ({"model": torch.nn.Linear(2, 2)}, ValueError, "Python objects besides tensors .* not loaded for safety"),
        ({"head.weight": torch.zeros(2, 2)}, ValueError, "no layer of .* matches this model"),
    ],
)
def test_bad_weight_files_say_what_is_wrong(tiny_config, tmp_path, content, error, message):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(error, match=message):
        build_model(ModelConfig(**{**tiny_config.__dict__, "weights": str(path)}))


@pytest.mark.gpu
def test_training_step_and_inference_on_cuda_with_amp(tiny_config, synthetic_batch):
    images, targets = synthetic_batch
    model = build_model(tiny_config).cuda().train()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(images)
    assert out[0]["part_masks"].device.type == "cuda"


def test_a_checkpoint_whose_config_names_another_backbone_than_its_weights_is_one_clear_error(tiny_config, tmp_path):
    weights = build_model(tiny_config).state_dict()
    other = Config(model=ModelConfig(**{**tiny_config.__dict__, "backbone": "resnet34_fpn"})).to_dict()
    path = save({"model": weights, "config": other}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed.pt: its weights do not fit the model its config describes "
                                         r"\(resnet34_fpn, .*\); the file was edited or mixed up") as err:
        model_from_checkpoint(path)
    assert "\n" not in str(err.value)
