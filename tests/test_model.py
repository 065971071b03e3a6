"""The assembled model: build, one training step, one eval forward, weight loading."""

import os

import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN, fasterrcnn_mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.faster_rcnn import FasterRCNN_MobileNet_V3_Large_FPN_Weights
from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights

from torchvision.models.detection.roi_heads import paste_masks_in_image

from cellrcnn import ModelConfig, PartRoIHeads, build_model, paste_parts_in_image

STOCK_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def test_build_composes_torchvision_mask_rcnn(tiny_config):
    model = build_model(tiny_config)
    assert isinstance(model, MaskRCNN)
    assert isinstance(model.roi_heads, PartRoIHeads)
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
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
    head = model.roi_heads.mask_predictor.mask_fcn_logits.weight
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
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 9
    targets = [dict(t, labels=torch.full_like(t["labels"], 3)) for t in targets]
    losses = model.train()(images, targets)
    losses["loss_mask"].backward()
    grad = model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum(dim=(1, 2, 3))
    assert grad[6:].sum() > 0 and grad[:6].sum() == 0  # only class 3's parts learn
    with torch.no_grad():
        out = model.eval()(images[:1])[0]
    assert out["part_masks"].shape[1:] == images[0].shape[1:]


def test_paste_matches_torchvision_for_the_whole_cell_and_labels_the_parts():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 28, 28, generator=g).softmax(dim=1)
    boxes = torch.tensor([[10.0, 10.0, 66.0, 66.0], [-5.0, 3.0, 20.0, 40.0], [50.0, 60.0, 95.0, 79.5],
                          [30.2, 12.7, 31.0, 13.1]])  # inside, over the edge, at the corner, tiny
    out = paste_parts_in_image(probs, boxes, (80, 100))
    expected = paste_masks_in_image(1 - probs[:, :1], boxes, (80, 100))
    torch.testing.assert_close(out["masks"], expected, rtol=0, atol=1e-5)
    assert out["part_masks"].dtype == torch.uint8 and out["part_masks"].max() <= 2
    assert torch.equal(out["part_masks"] > 0, out["masks"][:, 0] > 0.5)
    # torchvision fails on a box wholly outside the image; here it simply pastes nothing.
    outside = paste_parts_in_image(probs[:1], torch.tensor([[90.0, 90.0, 120.0, 120.0]]), (80, 100))
    assert outside["masks"].max() == 0 and outside["part_masks"].max() == 0


def test_paste_picks_the_most_likely_part_inside_the_cell():
    probs = torch.zeros(1, 3, 28, 28)
    probs[0, :, :, :14] = torch.tensor([0.1, 0.2, 0.7])[:, None, None]  # nucleus-dominated half
    probs[0, :, :, 14:] = torch.tensor([0.1, 0.7, 0.2])[:, None, None]  # cytoplasm-dominated half
    labels = paste_parts_in_image(probs, torch.tensor([[10.0, 10.0, 66.0, 66.0]]), (80, 80))["part_masks"][0]
    assert labels[38, 15].item() == 2 and labels[38, 60].item() == 1
    assert labels[5, 5].item() == 0 and labels[75, 75].item() == 0


def test_paste_with_no_detections_gives_empty_maps():
    out = paste_parts_in_image(torch.zeros(0, 3, 28, 28), torch.zeros(0, 4), (30, 40))
    assert out["masks"].shape == (0, 1, 30, 40) and out["part_masks"].shape == (0, 30, 40)


def save(state, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_weights_from_a_local_state_dict_load_every_matching_layer(tiny_config, tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_config)
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
    torch.testing.assert_close(again.roi_heads.mask_predictor.mask_fcn_logits.weight,
                               source.roi_heads.mask_predictor.mask_fcn_logits.weight)


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
    torch.testing.assert_close(ours["roi_heads.mask_head.0.0.weight"], theirs["roi_heads.mask_head.0.0.weight"])
    torch.testing.assert_close(ours["rpn.head.conv.0.0.weight"], theirs["rpn.head.conv.0.0.weight"])
    for fresh in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_predictor.conv5_mask.weight"):
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


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, "does not exist"),
        (b"not a checkpoint", ValueError, "cannot read weights from"),
        ({"epoch": 1}, ValueError, "holds no state dict"),
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
