"""The part loss and the part projection, tested as pure functions (no model)."""

import numpy as np
import pytest
import torch
from skimage.transform import downscale_local_mean
from torchvision.models.detection.roi_heads import maskrcnn_loss, project_masks_on_boxes

from cellrcnn import part_mask_loss, project_parts_on_boxes
from cellrcnn.modeling.losses import balanced_part_weights, soft_dice_loss

M = 28


def random_case(seed: int, num_parts: int, inside: bool = True):
    """Two images of random blob cells with random proposals matched to them."""
    g = torch.Generator().manual_seed(seed)
    masks, proposals, matched = [], [], []
    for H, W, N, P in ((40, 50, 3, 7), (64, 48, 2, 5)):
        labels = torch.randint(0, num_parts, (N, H // 4, W // 4), generator=g).to(torch.uint8)
        masks.append(labels.repeat_interleave(4, 1).repeat_interleave(4, 2))  # blocky parts
        lo = torch.rand(P, 2, generator=g) * torch.tensor([W, H]) * 0.5
        size = torch.rand(P, 2, generator=g) * torch.tensor([W, H]) * 0.5 + 2
        boxes = torch.cat([lo, lo + size], dim=1)
        if not inside:
            boxes = boxes * 1.5 - 10
        proposals.append(boxes)
        matched.append(torch.randint(0, N, (P,), generator=g))
    return masks, proposals, matched


def test_two_parts_equal_torchvision_maskrcnn_loss():
    masks, proposals, matched = random_case(0, num_parts=2)
    P = sum(len(p) for p in proposals)
    x = torch.randn(P, M, M, generator=torch.Generator().manual_seed(1)) * 3
    # torchvision picks the logit channel of each RoI's class; give every RoI class 1.
    labels = [torch.ones(len(m), dtype=torch.int64) for m in masks]
    expected = maskrcnn_loss(torch.stack([torch.zeros_like(x), x], 1), proposals, masks, labels, matched)
    logits = torch.stack([torch.zeros_like(x), x], 1)
    ours = part_mask_loss(logits, proposals, masks, matched, torch.ones(2), aligned=False)
    assert expected.item() > 0.1
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # The exact geometry samples the same masks half a pixel elsewhere: a different loss.
    assert abs(part_mask_loss(logits, proposals, masks, matched, torch.ones(2)).item() - expected.item()) > 1e-4


@pytest.mark.parametrize("factor", [2.0, 5.0])
def test_cytoplasm_weight_scales_its_pixels_gradient(factor):
    # One big cell: cytoplasm ring around a nucleus; proposals cover pure and mixed pixels.
    mask = torch.zeros(1, 60, 60, dtype=torch.uint8)
    mask[0, 5:55, 5:55] = 1
    mask[0, 22:38, 22:38] = 2
    proposals = [torch.tensor([[5.0, 5.0, 55.0, 55.0], [0.0, 0.0, 40.0, 40.0], [10.0, 8.0, 30.0, 50.0]])]
    matched = [torch.zeros(3, dtype=torch.int64)]
    target = project_parts_on_boxes(mask[0:1].expand(1, -1, -1), proposals[0], matched[0], 3, M)
    logits = torch.randn(3, 3, M, M, generator=torch.Generator().manual_seed(0))

    def grad(weights):
        z = logits.clone().requires_grad_(True)
        part_mask_loss(z, proposals, [mask], matched, torch.tensor(weights)).backward()
        return z.grad

    base, weighted = grad([1.0, 1.0, 1.0]), grad([1.0, factor, 1.0])
    pure_cyto = target[:, 1] == 1.0
    no_cyto = target[:, 1] == 0.0
    assert pure_cyto.sum() > 100 and no_cyto.sum() > 100
    pure_cyto, no_cyto = pure_cyto[:, None].expand_as(base), no_cyto[:, None].expand_as(base)
    torch.testing.assert_close(weighted[pure_cyto], factor * base[pure_cyto], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(weighted[no_cyto], base[no_cyto], rtol=1e-5, atol=1e-9)


def test_no_positive_proposals_gives_zero_loss_with_grad():
    logits = torch.randn(0, 3, M, M, requires_grad=True)
    masks = [torch.zeros(0, 30, 30, dtype=torch.uint8), torch.ones(2, 30, 30, dtype=torch.uint8)]
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    idxs = [torch.zeros(0, dtype=torch.int64)] * 2
    loss = part_mask_loss(logits, empty, masks, idxs, torch.ones(3))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


def test_weights_of_the_wrong_length_are_rejected():
    masks, proposals, matched = random_case(0, num_parts=3)
    logits = torch.zeros(sum(len(p) for p in proposals), 3, M, M)
    with pytest.raises(ValueError, match=r"part_weights must have shape \[3\]"):
        part_mask_loss(logits, proposals, masks, matched, torch.ones(2))


@pytest.mark.parametrize("num_parts", [2, 3, 4])
def test_torchvision_geometry_matches_per_part_one_hot_projection(num_parts):
    """Brute force: a full K x H x W one-hot per cell, each part projected by torchvision."""
    masks, proposals, matched = random_case(2, num_parts)
    for m, boxes, idxs in zip(masks, proposals, matched):
        ours = project_parts_on_boxes(m, boxes, idxs, num_parts, M, aligned=False)
        one_hot = torch.nn.functional.one_hot(m.long(), num_parts).permute(0, 3, 1, 2)
        brute = torch.stack([project_masks_on_boxes(one_hot[:, k], boxes, idxs, M) for k in range(num_parts)], 1)
        assert ours.shape == (len(boxes), num_parts, M, M)
        torch.testing.assert_close(ours, brute, rtol=0, atol=1e-5)


def test_exact_projection_is_the_block_average_of_the_crop():
    """Integer boxes a multiple of M wide: each mask pixel covers a whole block of image pixels, and the
    exact projection is the one-hot crop block-averaged to M x M (torchvision's is half a pixel off)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (8, 8)).repeat(16, 0).repeat(16, 1).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 2  # pixel-level detail, so half a pixel matters
    boxes = np.array([[0, 0, 112, 112], [8, 16, 64, 72], [20, 4, 104, 88]])
    args = (torch.from_numpy(labels)[None], torch.from_numpy(boxes).float(), torch.zeros(3, dtype=torch.int64), 3, M)
    exact = project_parts_on_boxes(*args).numpy()
    shifted = project_parts_on_boxes(*args, aligned=False).numpy()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        step = (x1 - x0) // M
        brute = downscale_local_mean(np.eye(3)[labels[y0:y1, x0:x1]], (step, step, 1)).transpose(2, 0, 1)
        np.testing.assert_allclose(exact[i], brute, atol=1e-5)
        assert np.abs(shifted[i] - brute).max() > 0.1


@pytest.mark.parametrize("aligned", [True, False])
def test_projection_never_invents_a_part_between_two_others(aligned):
    """Nucleus (2) touching background (0): interpolating label values would give 'cytoplasm' (1)."""
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:30, 10:30] = 2
    boxes, idxs = torch.tensor([[3.3, 4.7, 37.1, 35.9]]), torch.zeros(1, dtype=torch.int64)
    fractions = project_parts_on_boxes(mask, boxes, idxs, 3, M, aligned)
    assert fractions[:, 1].max().item() == 0.0
    torch.testing.assert_close(fractions.sum(1), torch.ones(1, M, M))
    blurred_values = project_masks_on_boxes(mask, boxes, idxs, M)
    assert ((blurred_values > 0.5) & (blurred_values < 1.5)).any()


@pytest.mark.parametrize("aligned", [True, False])
def test_projection_outside_the_image_is_background(aligned):
    masks, proposals, matched = random_case(3, num_parts=3, inside=False)
    for m, boxes, idxs in zip(masks, proposals, matched):
        fractions = project_parts_on_boxes(m, boxes, idxs, 3, M, aligned)
        assert fractions.min() >= 0 and fractions.max() <= 1 + 1e-6
        torch.testing.assert_close(fractions.sum(1), torch.ones(len(boxes), M, M))


def test_edge_pixels_are_where_the_cell_meets_its_outside_and_weigh_more():
    from cellrcnn.modeling.losses import edge_pixels

    M = 8
    cell = torch.zeros(1, M, M)
    cell[0, 2:6, 2:6] = 1.0  # a 4x4 cell, its inner 2x2 away from the edge
    target = torch.stack([1 - cell, cell * 0.5, cell * 0.5], dim=1)  # background, cytoplasm, nucleus
    edge = edge_pixels(target)[0]
    near = torch.zeros(M, M, dtype=torch.bool)
    near[1:7, 1:7] = True
    inside = torch.zeros(M, M, dtype=torch.bool)
    inside[3:5, 3:5] = True
    assert torch.equal(edge, near & ~inside)  # the ring of pixels on either side of the cell's outline
    # the weighted loss grows by the edge pixels' own loss times the weight, and equals the plain one at 0
    logits = torch.randn(1, 3, M, M, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[0.0, 0.0, M, M]])]
    masks = [(cell[0] > 0).to(torch.uint8)[None] * 2]  # the cell as nucleus label 2, projected on its own box
    matched = [torch.zeros(1, dtype=torch.int64)]
    weights = torch.ones(3)
    plain = part_mask_loss(logits, boxes, masks, matched, weights)
    assert torch.equal(part_mask_loss(logits, boxes, masks, matched, weights, edge_weight=0.0), plain)
    target = torch.stack([1 - cell, torch.zeros_like(cell), cell], dim=1)
    per_pixel = -(target * torch.log_softmax(logits, 1)).sum(1)[0]
    weighted = part_mask_loss(logits, boxes, masks, matched, weights, edge_weight=3.0)
    assert weighted == pytest.approx(float((per_pixel + 3 * per_pixel * edge_pixels(target)[0]).mean()), rel=1e-5)
    from cellrcnn import ModelConfig

    with pytest.raises(ValueError, match="edge_weight must be a number >= 0"):
        ModelConfig(edge_weight=-1)


def test_soft_dice_is_zero_for_an_exact_prediction_and_known_for_a_uniform_one():
    target = torch.zeros(1, 3, 2, 2)
    target[0, 0, 0, :] = 1  # two background pixels
    target[0, 1, 1, 0] = 1  # one cytoplasm pixel
    target[0, 2, 1, 1] = 1  # one nucleus pixel
    assert soft_dice_loss(target, target).item() == pytest.approx(0.0)
    # p = 1/3 everywhere: each part's overlap 1/3, sum p 4/3, sum t 1: Dice (2/3 + 1) / (4/3 + 1 + 1) = 0.5
    uniform = torch.full_like(target, 1 / 3)
    assert soft_dice_loss(uniform, target).item() == pytest.approx(0.5)
    # the background is not a Dice part: getting it wrong alone costs nothing
    assert soft_dice_loss(uniform, target, smooth=0.0).item() == pytest.approx(1 - (2 / 3) / (7 / 3))


def test_the_dice_term_pulls_a_rare_parts_own_pixels_towards_it():
    """A nucleus of 2 % of a box's pixels, predicted at its prior: the Dice term adds half again to the
    cross-entropy's pull on the nucleus logits of the nucleus's own pixels, and pushes them nowhere else."""
    target = torch.zeros(1, 3, 28, 28)
    target[0, 0, :, :8] = 1
    target[0, 1, :, 8:] = 1
    target[0, 1, 13:17, 13:17] = 0
    target[0, 2, 13:17, 13:17] = 1  # 16 of 784 pixels
    labels = target.argmax(1)[0].to(torch.uint8)[None]
    box = [torch.tensor([[0.0, 0.0, 28.0, 28.0]])]
    prior = target.mean(dim=(2, 3), keepdim=True).clamp(min=1e-3).log().expand(1, 3, 28, 28)
    nucleus = target[0, 2] > 0

    def grad(dice_weight):
        logits = prior.clone().requires_grad_(True)
        part_mask_loss(logits, box, [labels], [torch.zeros(1, dtype=torch.int64)], torch.ones(3),
                       dice_weight=dice_weight).backward()
        return logits.grad[0, 2]

    ce, both = grad(0.0), grad(1.0)
    assert (both[nucleus] < 0).all() and (both[~nucleus] >= 0).all()  # descent raises the nucleus only there
    assert both[nucleus].sum() < 1.4 * ce[nucleus].sum()


def test_the_loss_is_the_cross_entropy_plus_the_weighted_dice():
    masks, proposals, matched = random_case(2, num_parts=3)
    P = sum(len(p) for p in proposals)
    logits = torch.randn(P, 3, M, M, generator=torch.Generator().manual_seed(3))
    ce = part_mask_loss(logits, proposals, masks, matched, torch.ones(3))
    both = part_mask_loss(logits, proposals, masks, matched, torch.ones(3), dice_weight=0.5)
    target = torch.cat([project_parts_on_boxes(m, p, i, 3, M) for m, p, i in zip(masks, proposals, matched)])
    expected = ce + 0.5 * soft_dice_loss(logits.softmax(1), target)
    torch.testing.assert_close(both, expected)


@pytest.mark.parametrize("pixels, expected", [
    ((30, 68, 2), (1.0, 1.0, 10.0)),        # ISBI's nucleus, 2 % of a box: 17.5, capped
    ((25, 45, 30), (1.0, 1.0, 1.25)),       # WBC-like shares: little to balance
    ((50, 40, 10), (1.0, 1.0, 2.5)),        # the cell parts' median 0.25 over 0.1; the background stays 1
    ((60, 40, 0), (1.0, 1.0, 10.0)),        # a part never seen gets the cap
    ((10, 20, 30, 40), (1.0, 1.5, 1.0, 1.0)),  # four parts: the median of the three cell parts over each
])
def test_balanced_part_weights_raise_only_rare_parts(pixels, expected):
    assert balanced_part_weights(pixels) == pytest.approx(expected)


def test_balanced_part_weights_refuse_what_is_not_a_count():
    for bad in ((1,), (1, -2, 3), (1, float("nan"), 3)):
        with pytest.raises(ValueError, match="pixels must be"):
            balanced_part_weights(bad)
    assert balanced_part_weights((0, 0, 0)) == (1.0, 1.0, 1.0)
