"""Part heads as plug-ins: the registry, the refinement head's shape and gradient, old checkpoints' names."""

import dataclasses

import pytest
import torch
from torch import nn

from cellrcnn import build_model, load_matching_state_dict
from cellrcnn.modeling import part_heads
from cellrcnn.modeling.heads import AlignedMultiScaleRoIAlign, renamed_legacy_keys
from cellrcnn.modeling.part_heads import FCNPartHead, PartHead, RefinedPartHead, build_part_head, register_part_head


def one_step(model, batch, lr=0.01):
    images, targets = batch
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def test_refined_head_doubles_the_resolution_starts_as_the_coarse_logits_and_learns(tiny_config, synthetic_batch):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny_config, part_head="refine"))
    head = model.roi_heads.part_head
    assert isinstance(head, RefinedPartHead) and head.resolution == 2 * tiny_config.mask_size
    images, targets = synthetic_batch
    features = model.backbone(torch.stack([nn.functional.interpolate(i[None], (64, 64))[0] for i in images]))
    boxes = [t["boxes"].float() * 64 / 80 for t in targets]
    logits = head(features, boxes, [(64, 64)] * 2)
    assert logits.shape == (sum(len(b) for b in boxes), 3, 56, 56)
    coarse = FCNPartHead.forward(head, features, boxes, [(64, 64)] * 2)
    assert coarse.shape[-1] == 28
    expected = nn.functional.interpolate(coarse, size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)  # the correction starts at zero
    logits.pow(2).mean().backward()
    assert head.refine[-1].weight.grad.abs().sum() > 0  # the correction learns from the first step
    assert head.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0  # and the coarse head through it
    # it reads the image's own pixels, finer than any FPN level: other pixels, other logits, same features
    assert head.reads_image and features["image"].shape == (2, 3, 64, 64)
    with torch.no_grad():
        nn.init.normal_(head.refine[-1].weight, std=0.1)
        brighter = {**features, "image": features["image"] + 1.0}
        assert not torch.allclose(head(brighter, boxes, [(64, 64)] * 2), head(features, boxes, [(64, 64)] * 2))


def test_a_frozen_backbone_is_not_updated_by_a_step_while_the_part_head_is(tiny_config, synthetic_batch):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny_config, part_head="refine", trainable_backbone_layers=0))
    body = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    last = model.roi_heads.part_head.refine[-1].weight.clone()
    losses = one_step(model, synthetic_batch)
    assert torch.isfinite(losses["loss_mask"])
    for name, value in model.backbone.body.state_dict().items():
        torch.testing.assert_close(value, body[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(model.roi_heads.part_head.refine[-1].weight, last)


class PooledLinearHead(PartHead):
    """A lab's own head: features pooled at 16 x 16 and one 1x1 conv."""

    def __init__(self, in_channels: int, parts: int) -> None:
        super().__init__()
        self.resolution = 16
        self.pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 16, 2)
        self.logits = nn.Conv2d(in_channels, parts, 1)

    def forward(self, features, boxes, image_shapes):
        return self.logits(self.pool(features, boxes, image_shapes))


def test_a_head_of_ones_own_is_one_registered_module_chosen_by_the_config(tiny_config, synthetic_batch,
                                                                          monkeypatch):
    monkeypatch.setattr(part_heads, "_REGISTRY", dict(part_heads._REGISTRY))
    register_part_head("pooled_linear")(lambda config, channels: PooledLinearHead(channels, config.num_parts))
    assert "pooled_linear" in part_heads.part_head_names()
    model = build_model(dataclasses.replace(tiny_config, part_head="pooled_linear"))
    assert isinstance(model.roi_heads.part_head, PooledLinearHead)
    losses = one_step(model, synthetic_batch, lr=0.0)
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    model.eval()
    images, _ = synthetic_batch
    with torch.no_grad():
        out = model(images)
    for image, result in zip(images, out):  # pasted into the image from the head's own 16 x 16 logits
        assert result["masks"].shape[-2:] == image.shape[-2:]
        assert result["part_masks"].shape[-2:] == image.shape[-2:]


def test_an_unknown_part_head_names_the_registered_ones(tiny_config):
    with pytest.raises(ValueError, match="'nope' is not a registered part head; choose one of fcn, refine"):
        build_part_head(dataclasses.replace(tiny_config, part_head="nope"), 256)
    with pytest.raises(ValueError, match="part_head must be the name"):
        dataclasses.replace(tiny_config, part_head="no pe")


def test_weights_saved_with_torchvisions_names_load_into_the_part_head(tiny_config):
    torch.manual_seed(0)
    source = build_model(tiny_config).state_dict()
    old = {k.replace("roi_heads.part_head.", "roi_heads."): v for k, v in source.items()}
    assert "roi_heads.mask_head.0.0.weight" in old and renamed_legacy_keys(old).keys() == source.keys()
    torch.manual_seed(1)
    strict = build_model(tiny_config)
    strict.load_state_dict(old)  # a checkpoint of the last version, loaded as checkpoints are
    torch.manual_seed(2)
    matching = build_model(dataclasses.replace(tiny_config, part_head="refine"))
    report = load_matching_state_dict(matching, old)  # as --weights and --from load them
    assert all(not n.startswith("roi_heads.part_head.mask_") for n in report["missing"])
    for model in (strict, matching):
        torch.testing.assert_close(model.roi_heads.part_head.mask_head[0][0].weight,
                                   source["roi_heads.part_head.mask_head.0.0.weight"])


def test_part_rois_per_image_draws_that_many_positives_for_the_part_head(tiny_config, synthetic_batch):
    def counts(config):
        torch.manual_seed(0)
        model = build_model(config)
        seen = []
        model.roi_heads.part_head.register_forward_hook(lambda m, args, out: seen.append([len(b) for b in args[1]]))
        assert torch.isfinite(one_step(model, synthetic_batch, lr=0.0)["loss_mask"])
        return seen[0]

    every = counts(tiny_config)
    assert max(every) > 2
    assert counts(dataclasses.replace(tiny_config, part_rois_per_image=2)) == [min(n, 2) for n in every]


def test_scale_boxes_grows_about_the_centre_and_stays_in_the_image():
    from cellrcnn.modeling.heads import scale_boxes

    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 10.0, 10.0]])
    grown = scale_boxes(boxes, 1.5, (100, 100))
    torch.testing.assert_close(grown[0], torch.tensor([5.0, 10.0, 35.0, 70.0]))
    torch.testing.assert_close(grown[1], torch.tensor([0.0, 0.0, 12.5, 12.5]))  # clipped at the image's edge
    assert scale_boxes(boxes, 1.0, (100, 100)) is boxes


def test_the_part_head_reads_grown_boxes_at_inference_and_pastes_in_them(tiny_config, synthetic_batch):
    def boxes_seen(config, train):
        torch.manual_seed(0)
        model = build_model(config)
        seen = []
        model.roi_heads.part_head.register_forward_hook(lambda m, args, out: seen.append(torch.cat(args[1])))
        if train:
            one_step(model, synthetic_batch, lr=0.0)
            return seen[0], None
        model.eval()
        with torch.no_grad():
            out = model(synthetic_batch[0])
        return seen[0], out

    # training reads the sampled proposals as they are
    torch.testing.assert_close(boxes_seen(tiny_config, True)[0],
                               boxes_seen(dataclasses.replace(tiny_config, part_box_scale=1.2), True)[0])
    plain, _ = boxes_seen(dataclasses.replace(tiny_config, box_score_thresh=0.0), False)
    grown, out = boxes_seen(dataclasses.replace(tiny_config, part_box_scale=1.2, box_score_thresh=0.0), False)
    inside = (plain[:, 0] > 8) & (plain[:, 2] < 56) & (plain[:, 1] > 8) & (plain[:, 3] < 56)  # not clipped
    widths = (grown[:, 2] - grown[:, 0]) / (plain[:, 2] - plain[:, 0])
    assert inside.any() and torch.allclose(widths[inside], torch.tensor(1.2), atol=1e-4)
    for image, result in zip(synthetic_batch[0], out):
        assert "mask_boxes" not in result and result["part_masks"].shape[-2:] == image.shape[-2:]
