"""The trainer: schedule, accumulation arithmetic, non-finite steps, run folder, resume, DDP, CLI."""

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, run_command

import cellrcnn
from cellrcnn import Config, DataConfig, ModelConfig, TrainConfig
from cellrcnn.engine.loop import lr_factor

SAMPLE = REPO / "data" / "sample"


def tiny_config(**train) -> Config:
    return Config(
        model=ModelConfig(backbone="resnet18_fpn", weights="none", min_size=64, max_size=64,
                          rpn_batch_size_per_image=32, box_batch_size_per_image=32),
        data=DataConfig(val_fraction=0.34),
        train=TrainConfig(**{"epochs": 2, "workers": 0, "device": "cpu", **train}),
    )


@pytest.fixture
def small_sample(tmp_path):
    """Six sample pairs in a fresh folder."""
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for i in range(6):
            shutil.copy(SAMPLE / sub / f"sample_{i:02d}.png", root / sub)
    return root


def test_default_schedule_is_steplr_halving_every_5_epochs():
    cfg = Config().train  # pretrained (COCO) weights: the fine-tuning protocol
    assert (cfg.lr, cfg.lr_step, cfg.warmup_epochs) == (0.001, 5, 0)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    reference = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    for epoch in range(60):
        assert cfg.lr * lr_factor(cfg)(epoch) == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
        opt.step()
        reference.step()
    assert cfg.lr * lr_factor(cfg)(50) < 1.0e-6


def test_from_scratch_the_defaults_are_the_recipe_and_explicit_values_win():
    scratch = Config(model=ModelConfig(backbone="resnet18_fpn", weights="none")).train
    assert (scratch.lr, scratch.lr_step, scratch.warmup_epochs) == (0.02, 10, 1)
    lrs = [scratch.lr * lr_factor(scratch)(e) for e in range(21)]
    assert lrs[:3] == pytest.approx([0.01, 0.02, 0.02]) and lrs[10] == pytest.approx(0.01)
    mine = Config(model=ModelConfig(backbone="resnet18_fpn", weights="none"), train=TrainConfig(lr=0.005)).train
    assert (mine.lr, mine.lr_step, mine.warmup_epochs) == (0.005, 10, 1)
    with pytest.raises(ValueError, match="part of a Config"):
        lr_factor(TrainConfig())


def test_lr_floor_and_warmup():
    cfg = TrainConfig(lr=0.001, lr_step=5, lr_floor=1e-4, warmup_epochs=3)
    lrs = [cfg.lr * lr_factor(cfg)(e) for e in range(40)]
    assert lrs[:4] == pytest.approx([0.00025, 0.0005, 0.00075, 0.001])
    assert min(lrs) == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-4)


class LinearLoss(torch.nn.Module):
    """loss = w * mean(image) per image, summed; NaN for images listed in `poison`."""

    def __init__(self, poison=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.poison = set(poison)

    def forward(self, images, targets):
        loss = sum(self.w * img.mean() for img in images)
        if any(int(t["image_id"]) in self.poison for t in targets):
            loss = loss * float("nan")
        return {"loss": loss[0]}


class MeanImages(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i + 1)), {"image_id": torch.tensor(i)}


class ToyTrainer(cellrcnn.Trainer):
    """A Trainer subclass with another model, data and optimizer: the extension points at work."""

    def __init__(self, model, n_images, cfg, out, hooks=()):
        super().__init__(Config(train=dataclasses.replace(cfg, device="cpu", workers=0)), None, out, hooks=hooks,
                         quiet=True)
        self.toy, self.n_images = model, n_images

    def build_model(self):
        return self.toy

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=1.0)

    def build_datasets(self):
        return {"train": MeanImages(self.n_images), "val": None}

    def build_loaders(self, epoch):  # in order, so the accumulation groups are known
        loader = torch.utils.data.DataLoader(self.datasets["train"], batch_size=self.config.train.batch_size,
                                             collate_fn=cellrcnn.collate)
        return {"train": loader}

    def image_name(self, index):
        return f"img{index}"


def run_epoch(model, n_images, cfg, out):
    return ToyTrainer(model, n_images, dataclasses.replace(cfg, epochs=1), out).train()


class Recorder(cellrcnn.hooks.HookBase):
    def __init__(self):
        self.events = []

    def before_train(self, trainer):
        self.events.append("before_train")

    def before_epoch(self, trainer):
        self.events.append(f"before_epoch {trainer.epoch}")

    def before_step(self, trainer):
        self.events.append(f"before_step {trainer.iter}")

    def after_step(self, trainer):
        self.events.append(f"after_step {trainer.iter} loss {trainer.step_losses['loss']:.0f}")

    def after_epoch(self, trainer):
        self.events.append(f"after_epoch {trainer.epoch} rows {len(trainer.history)}")

    def after_train(self, trainer):
        self.events.append("after_train")


def test_a_hook_receives_step_and_epoch_events_in_order_and_a_subclass_trains_its_own_model(tmp_path):
    recorder, model = Recorder(), LinearLoss()
    history = ToyTrainer(model, 3, TrainConfig(epochs=2, batch_size=2, accumulate=2), tmp_path / "run",
                         hooks=[recorder]).train()
    # 3 images in batches [1, 2], [3]: a batch's loss is w * (sum of its image means), w starts at 0.
    # One optimizer step per batch (lr 1, gradient 3 per batch): w goes 0, -3, -6, -9, -12.
    assert recorder.events == ["before_train", "before_epoch 0", "before_step 0", "after_step 1 loss 0",
                               "before_step 1", "after_step 2 loss -9", "after_epoch 0 rows 1",
                               "before_epoch 1", "before_step 2", "after_step 3 loss -18", "before_step 3",
                               "after_step 4 loss -27", "after_epoch 1 rows 2", "after_train"]
    assert model.w.item() == pytest.approx(-12.0)
    assert list(history["epoch"]) == [1, 2] and (tmp_path / "run" / "last.pt").is_file()


def test_accumulation_divides_by_the_group_and_steps_a_partial_group(tmp_path):
    # 5 images, batches of 2 -> batches [1,2], [3,4], [5]; accumulate 4 -> groups {b0,b1} and {b2}.
    model = LinearLoss()
    run_epoch(model, 5, TrainConfig(batch_size=2, accumulate=4), tmp_path)
    # grad of a batch is the sum of its image means; group 1: ((1+2)+(3+4))/2 = 5, partial group: 5/1 = 5.
    assert model.w.item() == pytest.approx(-10.0)


def test_a_non_finite_loss_skips_its_step_and_names_the_images(caplog, tmp_path):
    model = LinearLoss(poison={0})
    with caplog.at_level(logging.WARNING, logger="cellrcnn"):
        run_epoch(model, 5, TrainConfig(batch_size=2, accumulate=4), tmp_path)
    assert model.w.item() == pytest.approx(-5.0)  # only the last (clean) group stepped
    assert "non-finite loss" in caplog.text and "img0, img1" in caplog.text


def test_non_finite_losses_in_a_row_abort(tmp_path):
    with pytest.raises(FloatingPointError, match="2 non-finite losses in a row .*lower train.lr"):
        run_epoch(LinearLoss(poison={0, 1, 2, 3}), 4, TrainConfig(batch_size=1, accumulate=2, max_nonfinite=2),
                  tmp_path)


def measured_part_weights(masks: list) -> tuple[float, ...]:
    """``part_weights="auto"`` counted here as the mask head sees each cell: its box, other cells' pixels as
    background."""
    import numpy as np
    from PIL import Image
    from skimage.measure import label as measure_label
    from skimage.measure import regionprops

    from cellrcnn.modeling.losses import balanced_part_weights

    counts = np.zeros(3)
    for mask in masks:
        parts = np.asarray(Image.open(mask))
        for cell in regionprops(measure_label(parts > 0)):
            inside = parts[cell.slice][cell.image]
            counts += [cell.area_bbox - cell.area, (inside == 1).sum(), (inside == 2).sum()]
    return balanced_part_weights(counts)


def test_fit_writes_the_run_folder_and_a_loadable_best_checkpoint(small_sample, tmp_path, caplog):
    out = tmp_path / "run"
    seen = []
    auto = tiny_config()
    auto = dataclasses.replace(auto, model=dataclasses.replace(auto.model, part_weights="auto"))
    with caplog.at_level(logging.INFO, logger="cellrcnn.engine"):
        history = cellrcnn.fit(auto, small_sample, out, quiet=True,
                               hooks=[cellrcnn.hooks.Callback(lambda row, frame: seen.append(len(frame)))])
    # The sample's cells (about 42 px) shrink to about 21 px at min_size 64: below the anchors, and it says so.
    assert "cells span about 42 px" in caplog.text and "they span about 21 px" in caplog.text
    assert "set model.min_size and model.max_size to about 384 and 384" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "curves.png", "history.csv",
                                                      "last.pt", "split.csv", "train.log"]
    assert seen == [1, 2] and list(history["epoch"]) == [1, 2]
    for column in ("lr", "train_loss", "train_loss_mask", "train_seconds", "val_loss", "cytoplasm_dice", "nucleus_dice",
                   "cell_dice", "part_dice", "seconds"):
        assert column in history and history[column].notna().all(), column
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), history, check_dtype=False)
    split = pd.read_csv(out / "split.csv")
    assert (split["split"] == "val").sum() == 2 and len(split) == 6
    model, config = cellrcnn.model_from_checkpoint(out / "best.pt")
    # The run records the normalisation it built ("auto" resolved: group norm from scratch), the scale it
    # trained at (sample images of 128 px resized to 64: factor 0.5, cells of about 42 px at 21) and the part
    # weights it measured on its training images (the sample's nucleus is the rarer part), the rest as given.
    expected = tiny_config()
    assert config.model.input_scale == 0.5 and 15 < config.model.cell_size < 30
    weights = measured_part_weights(split.query("split == 'train'")["masks"].tolist())
    assert tuple(config.model.part_weights.values()) == pytest.approx(weights) and weights[2] > 1
    assert "part weights measured (--part-weights auto): background 1.00, cytoplasm 1.00" in caplog.text
    assert config == dataclasses.replace(expected, model=dataclasses.replace(
        expected.model, norm="group", input_scale=0.5, cell_size=config.model.cell_size, single_cell=False,
        part_weights=config.model.part_weights))
    assert not model.training
    assert "epoch 2/2" in (out / "train.log").read_text()


def test_fit_refuses_to_overwrite_a_run(small_sample, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already holds a run"):
        cellrcnn.fit(tiny_config(), small_sample, out, quiet=True)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("augment", ["none", "strong"])
def test_resume_matches_an_uninterrupted_run(small_sample, tmp_path, augment):
    config = tiny_config(epochs=2, lr_step=1)  # the resumed epoch runs at the stepped lr
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, augment=augment))
    whole = cellrcnn.fit(config, small_sample, tmp_path / "whole", quiet=True)

    def stop_after_first(row, frame):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        cellrcnn.fit(config, small_sample, tmp_path / "cut", hooks=[cellrcnn.hooks.Callback(stop_after_first)],
                     quiet=True)
    resumed = cellrcnn.fit(config, small_sample, tmp_path / "cut", resume=True, quiet=True)
    columns = [c for c in whole.columns if not c.endswith("seconds")]
    pd.testing.assert_frame_equal(resumed[columns], whole[columns], rtol=1e-6)
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=False) for run in ("whole", "cut"))
    assert a["hooks"] == b["hooks"] and a["hooks"]["BestCheckpoint"]["best"] is not None  # the hooks' own state
    # only last.pt, which resume reads, carries the optimizer's state: best.pt is the model a user shares
    best = torch.load(tmp_path / "whole" / "best.pt", weights_only=False)
    assert "optimizer" in a and "optimizer" not in best and best["model"].keys() == a["model"].keys()
    assert (tmp_path / "whole" / "best.pt").stat().st_size < 0.7 * (tmp_path / "whole" / "last.pt").stat().st_size
    a, b = a["model"], b["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_same_seed_same_run_with_strong_augmentation(small_sample, tmp_path):
    config = tiny_config(epochs=1, workers=2)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, augment="strong"))
    first, second = (cellrcnn.fit(config, small_sample, tmp_path / name, quiet=True) for name in ("a", "b"))
    columns = [c for c in first.columns if not c.endswith("seconds")]
    pd.testing.assert_frame_equal(first[columns], second[columns], check_exact=True)
    other = cellrcnn.fit(config.with_overrides({"train.seed": 1}), small_sample, tmp_path / "c", quiet=True)
    assert other["train_loss"].iloc[0] != first["train_loss"].iloc[0]


def test_a_runs_best_checkpoint_starts_a_new_model_even_with_other_parts(small_sample, tmp_path, caplog):
    cellrcnn.fit(tiny_config(epochs=1), small_sample, tmp_path / "run", quiet=True)
    best = tmp_path / "run" / "best.pt"
    trained = cellrcnn.model_from_checkpoint(best)[0].state_dict()
    start = cellrcnn.model_config_from_run(tmp_path / "run")
    assert start.weights == str(best) and start.norm == "group" and start.min_size == 64
    assert start.trainable_backbone_layers == 5  # trained from scratch: every stage trained, and keeps training
    with caplog.at_level(logging.INFO, logger="cellrcnn.modeling"):
        model = cellrcnn.build_model(ModelConfig(**{**start.__dict__, "norm": "auto"}))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    assert f"loaded {len(trained) - 1} of {len(trained) - 1} tensors from {best}; none left fresh" in caplog.text
    caplog.clear()
    # Four parts and two classes: every layer but the predictors comes from the run.
    other = dataclasses.replace(start, parts=("background", "membrane", "cytoplasm", "nucleus"), num_classes=2)
    with caplog.at_level(logging.INFO, logger="cellrcnn.modeling"):
        model = cellrcnn.build_model(other)
    fresh = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
             "roi_heads.part_head.mask_predictor.mask_fcn_logits")
    assert f"left fresh: {', '.join(fresh)}" in caplog.text
    for name, value in model.state_dict().items():
        if name.startswith(fresh):
            assert value.shape != trained[name].shape, name
        elif name != "roi_heads.part_weights":  # a setting from the config, not a weight
            torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)


def test_finetune_from_a_run_takes_its_model_settings_and_weights(small_sample, tmp_path):
    cellrcnn.fit(tiny_config(epochs=1), small_sample, tmp_path / "run", quiet=True)
    result = finetune(small_sample, "--from", tmp_path / "run", "--out", tmp_path / "adapted", "--epochs", "1",
                      "--workers", "0", "--device", "cpu", "--max-size", "80", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    source, adapted = (Config.from_json(tmp_path / name / "config.json") for name in ("run", "adapted"))
    assert adapted.model.weights == str(tmp_path / "run" / "best.pt")
    assert adapted.model.max_size == 80  # the flag given wins
    # All else is the run's, and the stages it trained (all: it was trained from scratch) keep training; the
    # recipe refines the run's part head and adds the Dice term to the part loss.
    assert source.model.part_head == "fcn" and source.model.dice_weight == 0
    assert adapted.model == dataclasses.replace(source.model, weights=adapted.model.weights, max_size=80,
                                                trainable_backbone_layers=5, cell_size=adapted.model.cell_size,
                                                part_head="refine", dice_weight=1.0, part_box_scale=1.15)
    assert adapted.model.cell_size is not None  # measured again on the new data, not taken from the source
    # The adaptation recipe, but for what the flags replace: --epochs the step count, --max-size the scale matching.
    assert (adapted.train.lr, adapted.train.lr_schedule, adapted.train.accumulate) == (0.01, "cosine", 2)
    assert adapted.train.steps is None and adapted.train.epochs == 1 and adapted.data.augment == "adapt"
    assert adapted.model.target_cell_size is None
    # every tensor of the run is loaded; only the refinement starts fresh (its correction at zero)
    n = len(torch.load(tmp_path / "run" / "best.pt", weights_only=False)["model"]) - 1  # less the loss weights
    assert f"loaded {n} of " in result.stdout
    assert f"tensors from {tmp_path / 'run' / 'best.pt'}; left fresh: roi_heads.part_head.reduce," in result.stdout
    # Other classes and parts: their counts follow the names given; weights of dropped parts go.
    from cellrcnn.cli.finetune import config_from_finetune_args, finetune_parser
    weighted = cellrcnn.fit(tiny_config(epochs=1).with_overrides({"model.part_weights": "cytoplasm=3"}), small_sample,
                            tmp_path / "weighted", quiet=True)
    assert len(weighted) == 1
    args = finetune_parser().parse_args([str(small_sample), "--out", "x", "--from", str(tmp_path / "weighted"),
                                         "--class-names", "a,b", "--parts", "background,membrane,nucleus"])
    config = config_from_finetune_args(args)
    assert config.model.num_classes == 2 and config.model.part_weights == {} and config.model.min_size == 64
    missing = finetune(small_sample, "--from", tmp_path / "nothing", "--out", tmp_path / "x")
    assert missing.returncode == 2 and "--from" in missing.stderr and "Traceback" not in missing.stderr
    check_adaptation_recipe(small_sample, tmp_path)


def check_adaptation_recipe(small_sample, tmp_path):
    """``--from`` alone is the adaptation recipe, and flags given win (the run in tmp_path/run is the source)."""
    from cellrcnn.cli.finetune import config_from_finetune_args, finetune_parser

    source = Config.from_json(tmp_path / "run" / "config.json")

    def parsed(*flags):
        return config_from_finetune_args(finetune_parser().parse_args(
            [str(small_sample), "--out", "x", "--from", str(tmp_path / "run"), *flags]))

    recipe = parsed()
    assert (recipe.train.steps, recipe.train.lr, recipe.train.lr_schedule, recipe.train.accumulate,
            recipe.train.warmup_epochs, recipe.data.augment) == (150, 0.01, "cosine", 2, 0, "adapt")
    assert recipe.model.target_cell_size == source.model.cell_size  # cells resized to the size the run saw
    assert (recipe.model.part_head, recipe.model.dice_weight, recipe.model.part_box_scale) == ("refine", 1.0, 1.15)
    assert parsed("--part-head", "fcn", "--dice-weight", "0").model.part_head == "fcn"  # flags win
    mine = parsed("--epochs", "7", "--lr-step", "3", "--augment", "none", "--min-size", "96", "--max-size", "96")
    assert (mine.train.steps, mine.train.epochs, mine.train.lr_schedule, mine.train.lr_step) == (None, 7, "step", 3)
    assert mine.data.augment == "none" and mine.model.target_cell_size is None and mine.model.min_size == 96
    source.to_json(tmp_path / "file.json")
    from_file = parsed("--config", str(tmp_path / "file.json"))  # a config file's training settings are kept
    assert from_file.train == source.train and from_file.model.weights == str(tmp_path / "run" / "best.pt")


def test_a_run_set_in_steps_takes_the_epochs_they_need_matches_the_cell_size_and_follows_the_cosine(
        small_sample, tmp_path):
    config = tiny_config(steps=5, accumulate=2, lr=0.01, lr_schedule="cosine", lr_floor=0.001, warmup_epochs=0)
    sizes = cellrcnn.data.cell_sizes(cellrcnn.make_splits(small_sample, config.data)["train"], config.data)
    wanted = 1.5 * float(sizes["cell_side"].median()) * 64 / float(sizes[["height", "width"]].min(axis=1).median())
    config = config.with_overrides({"model.target_cell_size": wanted})  # cells 1.5x as large as min_size 64 makes
    history = cellrcnn.fit(config, small_sample, tmp_path / "run", quiet=True)
    saved = Config.from_json(tmp_path / "run" / "config.json")
    # 4 training images, 2 per step: 2 steps an epoch, so 5 steps take 3 epochs (the last step is the 6th)
    assert len(history) == 3 and saved.train.epochs == 3 and saved.train.steps == 5
    assert saved.model.min_size == pytest.approx(96, abs=2) and saved.model.cell_size == pytest.approx(wanted, rel=0.05)
    assert saved.model.single_cell is False  # the sample's images hold one to three cells
    lr = lr_factor(saved.train, 6, 2)
    assert list(history["lr"]) == pytest.approx([0.01 * lr(0), 0.01 * lr(2), 0.01 * lr(4)])
    assert history["lr"].is_monotonic_decreasing and lr(5) > 0.1  # floored at 0.001 of 0.01
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6  # stepped after each optimizer step


def test_cosine_schedule_and_steps_per_epoch():
    from cellrcnn.engine.loop import steps_per_epoch

    cfg = TrainConfig(lr=0.01, lr_step=5, warmup_epochs=1, lr_schedule="cosine", lr_floor=0.001)
    f = lr_factor(cfg, total_steps=104, steps_per_epoch=4)
    assert [f(0), f(3)] == pytest.approx([0.2, 0.8])  # 4 warm-up steps
    assert f(4) == pytest.approx(1.0) and f(54) == pytest.approx(0.55) and f(104) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(4, 104))
    with pytest.raises(ValueError, match="number of optimizer steps"):
        lr_factor(cfg)
    assert steps_per_epoch(10, TrainConfig(batch_size=2, accumulate=2)) == 5
    assert steps_per_epoch(10, TrainConfig()) == 3  # 5 batches of 2, a step every 2 batches, the last partial
    assert steps_per_epoch(200, TrainConfig(), world_size=2) == 50


def test_best_checkpoint_averages_the_metric_over_validations_when_they_are_few():
    from cellrcnn.engine.hooks import smoothed_metric

    history = [{"epoch": 1, "part_dice": 0.5}, {"epoch": 2}, {"epoch": 3, "part_dice": 0.9},
               {"epoch": 4, "part_dice": 0.4}]
    assert smoothed_metric(history, "part_dice", 1) == pytest.approx(0.4)
    assert smoothed_metric(history, "part_dice", 3) == pytest.approx(0.6)  # the epoch without validation is skipped
    assert smoothed_metric(history[:1], "part_dice", 3) == pytest.approx(0.5)
    assert smoothed_metric(history[:2], "part_dice", 3) is None  # not validated this epoch: nothing to compare


def test_metric_hooks_keep_their_own_state_whatever_their_order(tmp_path):
    """BestCheckpoint and EarlyStopping each follow the metric (no shared state on the trainer), so their order
    does not matter, and each hook's state_dict restores it."""
    from types import SimpleNamespace

    from cellrcnn.engine.hooks import BestCheckpoint, EarlyStopping

    config = Config(train=TrainConfig(patience=2, val_every=1, epochs=10, best_metric="part_dice", best_smoothing=1))
    values = [0.5, 0.6, 0.55, 0.58, 0.7]

    def run(hooks, epochs):
        saved = []
        trainer = SimpleNamespace(config=config, history=[], row={}, has_validation=True, validation_due=True,
                                  out=tmp_path, stop=False, improved=False, datasets={"val": [None] * 10},
                                  checkpoint_state=lambda: {}, save_checkpoint=lambda path, state: saved.append(path))
        for epoch, value in enumerate(epochs, start=1):
            trainer.row = {"epoch": epoch, "part_dice": value}
            trainer.history.append(trainer.row)
            for hook in hooks:
                hook.after_epoch(trainer)
            if trainer.stop:
                return epoch, saved
        return None, saved

    for order in ((BestCheckpoint, EarlyStopping), (EarlyStopping, BestCheckpoint)):
        hooks = [cls() for cls in order]
        stopped, saved = run(hooks, values)
        assert stopped == 4  # 0.55 and 0.58 do not beat 0.6: two validations without improvement
        assert [h.state_dict() for h in hooks] == [{"best": 0.6, "since_best": 2}] * 2
        assert [p.name for p in saved].count("best.pt") == 2  # epochs 1 and 2
    resumed = EarlyStopping()
    resumed.load_state_dict({"best": 0.6, "since_best": 1})
    assert run([resumed], [0.5])[0] == 1  # one more validation without improvement stops it
    # a checkpoint keys each hook's state by its class; one from before hooks kept state has it at the top
    trainer = cellrcnn.Trainer(config, None, tmp_path / "run")
    trainer.hooks = [BestCheckpoint(), EarlyStopping(), BestCheckpoint()]
    trainer._restore_hooks({"hooks": {"BestCheckpoint": {"best": 0.8, "since_best": 0},
                                      "EarlyStopping": {"best": 0.7, "since_best": 1},
                                      "BestCheckpoint.2": {"best": 0.9, "since_best": 3}}})
    assert [h.state_dict() for h in trainer.hooks] == [{"best": 0.8, "since_best": 0}, {"best": 0.7, "since_best": 1},
                                                       {"best": 0.9, "since_best": 3}]
    trainer._restore_hooks({"best": 0.5, "since_best": 2})
    assert [h.state_dict() for h in trainer.hooks] == [{"best": 0.5, "since_best": 2}] * 3


def test_sweep_names_the_weighted_part_and_follows_the_part_names(small_sample, tmp_path):
    config = tiny_config(epochs=1).with_overrides({"model.parts": "background,membrane,nucleus",
                                                   "train.best_metric": "membrane_dice"})
    results = cellrcnn.sweep(config, small_sample, tmp_path / "sweep", weights=(1.0, 3.0), part="membrane")
    assert list(results["weight"]) == [1.0, 3.0] and set(results["part"]) == {"membrane"}
    assert {"membrane_dice", "nucleus_dice", "cell_dice", "part_dice"} <= set(results.columns)
    assert results["membrane_dice"].notna().all()
    saved = Config.from_json(tmp_path / "sweep" / "membrane_weight_3" / "config.json")
    assert saved.model.part_weight_vector == (1.0, 3.0, 1.0)
    with pytest.raises(ValueError, match="part 'cytoplasm' is not a foreground part"):
        cellrcnn.sweep(config, small_sample, tmp_path / "sweep2", part="cytoplasm")


def test_latest_run_is_the_newest_by_time_not_by_name(tmp_path):
    for name, when in (("b-older", 1_000_000), ("a-newer", 2_000_000), ("z-no-best", 3_000_000)):
        (tmp_path / name).mkdir()
        target = tmp_path / name / ("last.pt" if name == "z-no-best" else "best.pt")
        target.write_bytes(b"")
        os.utime(target, (when, when))
    assert cellrcnn.latest_run(tmp_path) == tmp_path / "a-newer"


def test_epoch_seeds_differ_for_every_epoch_and_rank():
    seeds = {cellrcnn.engine.epoch_seed(0, epoch, rank) for epoch in range(50) for rank in range(8)}
    assert len(seeds) == 400
    assert cellrcnn.engine.epoch_seed(3, 2, 1) == cellrcnn.engine.epoch_seed(3, 2, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _GatherWeights(cellrcnn.hooks.HookBase):
    """Collects every rank's weights and sample ids after training, before the process group closes."""

    def __init__(self, result_path):
        self.result_path = result_path

    def before_train(self, trainer):
        self.before = torch.cat([p.detach().flatten() for p in trainer.raw_model.parameters()]).clone()
        self.draws = []

    def before_step(self, trainer):
        # What the RoI samplers draw from: each rank must draw its own samples.
        state = torch.get_rng_state()
        self.draws.append(torch.rand(4))
        torch.set_rng_state(state)

    def after_train(self, trainer):
        world_size = trainer.runtime.world_size
        after = torch.cat([p.detach().flatten() for p in trainer.raw_model.parameters()])
        gathered = [torch.zeros_like(after) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, after)
        ids = [int(i) for i in trainer.build_loaders(0)["train"].sampler]
        all_ids, all_draws = [None] * world_size, [None] * world_size
        torch.distributed.all_gather_object(all_ids, ids)
        torch.distributed.all_gather_object(all_draws, torch.stack(self.draws))
        if trainer.runtime.rank == 0:
            torch.save({"weights": gathered, "before": self.before, "ids": all_ids, "draws": all_draws},
                       self.result_path)


class _TwoImages(cellrcnn.Trainer):
    def build_datasets(self):
        pairs = cellrcnn.find_pairs(self.data_dir, self.config.data)[:2]
        return {"train": cellrcnn.CellDataset(pairs, self.config.data), "val": None}


def _ddp_worker(rank, world_size, port, data_dir, out, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    config = tiny_config(batch_size=1, accumulate=2, epochs=1, lr=0.01)
    _TwoImages(config, data_dir, out, hooks=[_GatherWeights(result_path)], quiet=True).train()


def test_ddp_with_gloo_keeps_weights_identical_on_both_ranks(small_sample, tmp_path):
    result = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(small_sample), str(tmp_path / "run"), str(result)),
             nprocs=2, join=True)
    out = torch.load(result, weights_only=False)
    w0, w1 = out["weights"]
    assert torch.equal(w0, w1)
    assert not torch.equal(w0, out["before"])  # one optimizer step (2 ranks x 1 image = accumulate 2) happened
    assert sorted(out["ids"][0] + out["ids"][1]) == [0, 1]  # each rank saw its own image
    assert not torch.equal(out["draws"][0], out["draws"][1])  # and sampled its own anchors and RoIs


_FAILING_RANK = """
import sys
import cellrcnn
from cellrcnn.cli.common import command, setup_logging

class ReadFails(cellrcnn.hooks.HookBase):  # a file only process 2 reads becomes unreadable in the first epoch
    def before_step(self, trainer):
        if trainer.runtime.rank == 1 and trainer.iter == 1:
            raise OSError("images/sample_03.png: cannot read the file; it may be corrupt or truncated")

@command
def main(argv=None):
    setup_logging()
    config = cellrcnn.Config.from_json(sys.argv[1])
    cellrcnn.fit(config, sys.argv[2], sys.argv[3], hooks=[ReadFails()], quiet=True)
    return 0

sys.exit(main())
"""


def test_a_training_process_that_fails_under_torchrun_stops_the_others_each_with_one_line(tmp_path):
    """Issue 44: every training process checks in after each step; when one fails, each says one line, leaves the
    process group and exits, instead of the others waiting for it until the group's timeout."""
    import subprocess
    import time

    script, config = tmp_path / "train.py", tmp_path / "config.json"
    script.write_text(_FAILING_RANK)
    tiny_config(epochs=3, batch_size=1, accumulate=2).to_json(config)
    start = time.monotonic()
    result = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                             str(script), str(config), str(SAMPLE), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    told = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and time.monotonic() - start < 180, result.stderr
    assert len(told) == 2, result.stderr
    failed, stopped = sorted(told, key=lambda line: "stopped because" in line)
    assert "sample_03.png: cannot read the file" in failed
    assert "stopped because process 2 of 2 failed" in stopped and "--resume" in stopped
    frames = [line for line in result.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [line for line in frames if f"{REPO / 'cellrcnn'}/" in line]  # torchrun's own report only
    assert "destroy_process_group" not in result.stderr and "internal error" not in result.stderr


def finetune(*args) -> SimpleNamespace:
    return run_command("finetune", *args)


def test_finetune_cli_smoke(small_sample, tmp_path):
    out = tmp_path / "run"
    (small_sample / "images" / "sample_05.png").unlink()
    (small_sample / "images" / "sample_04.png").unlink()
    result = finetune(small_sample, "--out", out, "--backbone", "resnet18_fpn", "--weights", "none", "--min-size", "64",
                      "--max-size", "64", "--epochs", "2", "--workers", "0", "--val-fraction", "0.25",
                      "--cytoplasm-weight", "2", "--pixel-size", "0.325", "--no-size-model", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "best.pt").is_file() and len(pd.read_csv(out / "history.csv")) == 2
    config = Config.from_json(out / "config.json")
    assert config.model.part_weight_vector == (1.0, 2.0, 1.0) and config.train.accumulate == 4
    # the PNGs state no pixel size: the one given is the model's, recorded for prediction
    assert config.data.pixel_size == 0.325 and config.train.size_model is False
    recorded = cellrcnn.load_checkpoint(out / "best.pt")["config"]["model"]
    assert recorded["pixel_size"] == 0.325
    split = pd.read_csv(out / "split.csv")
    train = [p for p in cellrcnn.find_pairs(small_sample, DataConfig())
             if str(p.image) in set(split.query("split == 'train'")["image"])]
    sides = cellrcnn.data.cell_sizes(train, DataConfig())["cell_side"]
    assert recorded["cell_diameter_um"] == pytest.approx(sides.median() * 0.325)  # the training images' cells, in µm
    again = finetune(small_sample, "--out", out, "--weights", "none")
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    # The run's config.json starts a new run as is; --set changes exactly the field it names.
    copy = finetune(small_sample, "--config", out / "config.json", "--out", tmp_path / "copy", "--set",
                    "train.lr=0.002", "--quiet")
    assert copy.returncode == 0, copy.stdout + copy.stderr
    first, second = (json.loads((run / "config.json").read_text()) for run in (out, tmp_path / "copy"))
    assert first.pop("command").endswith("--cytoplasm-weight 2 --pixel-size 0.325 --no-size-model --quiet")
    assert second.pop("command").endswith(f"--config {out / 'config.json'} --out {tmp_path / 'copy'} "
                                          f"--set train.lr=0.002 --quiet")
    assert first["train"].pop("lr") == 0.02 and second["train"].pop("lr") == 0.002  # 0.02: the scratch default
    assert second == first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accumulate", "3"], "must be a multiple of batch_size"),
        (["--cytoplasm-weight", "2", "--parts", "background,cell", "--part-values", "0,1"], "needs a part named"),
        (["--part-weights", "cytoplasm:2"], "key=value pairs"),
        (["--set", "train.lrr=0.1"], "TrainConfig has no field 'lrr'"),
        (["--set", "train.epochs=two"], "train.epochs: expected an integer, got 'two'"),
        (["--set", "train.lr"], "expected SECTION.FIELD=VALUE"),
        (["--set", "model.mask_size=30"], "mask_size must be one of 28, 56"),
        (["--device", "tpu"], "device must be auto"),
        (["--parts", "background,membrane,nucleus", "--best-metric", "cytoplasm_dice"],
         "choose one of part_dice, cell_dice, membrane_dice, nucleus_dice, val_loss"),
        (["--resume"], "holds no last.pt"),
        (["--part-weights", "auto", "--cytoplasm-weight", "2"], "give one of the two"),
        (["--dice-weight", "-1"], "dice_weight must be a number >= 0"),
        (["--part-head", "pointrend"], "'pointrend' is not a registered part head; choose one of fcn, refine"),
    ],
)
def test_finetune_bad_flags_exit_2_with_one_line(small_sample, tmp_path, args, message):
    result = finetune(small_sample, "--out", tmp_path / "run", *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_training_on_crops_of_fields_validates_tiled_and_records_the_scale(tmp_path):
    from cellrcnn.sample_data.field import synthetic_field
    from cellrcnn.sample_data.files import write_field

    for seed in range(3):
        write_field(tmp_path / "fields", synthetic_field(224, seed=seed, cell_diameter=24), name=f"field{seed}")
    config = Config(model=ModelConfig(backbone="resnet18_fpn", weights="none", min_size=64, max_size=64,
                                      rpn_batch_size_per_image=32, box_batch_size_per_image=32),
                    data=DataConfig(encoding="cells+parts", crop=96, channels=(1, 0), val_fraction=0.34),
                    train=TrainConfig(epochs=1, batch_size=2, accumulate=2, workers=0, device="cpu"))
    history = cellrcnn.fit(config, tmp_path / "fields", tmp_path / "run", quiet=True)
    assert {"val_loss", "cytoplasm_dice", "cell_dice"} <= set(history.columns)
    assert history["cell_dice"].notna().all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["input_scale"] == pytest.approx(64 / 96)  # crops of 96 px seen at 64 px
    assert saved["model"]["cell_size"] == pytest.approx(24 * 64 / 96, rel=0.3)
    assert saved["data"]["channels"] == [1, 0] and saved["data"]["crop"] == 96


def _bad_annotations(folder, case):
    """A training folder whose annotations are wrong in one way (COCO from tests/io/test_coco.py)."""
    sys.path.insert(0, str(REPO / "tests" / "io"))
    import numpy as np
    import test_coco as coco

    anns = {"image_id": [{"id": 9, "image_id": 3, "category_id": 1, "segmentation": []}],
            "polygon": [{"id": 9, "image_id": 7, "category_id": 1, "segmentation": [[1.0, 2.0, 3.0, 4.0]]}],
            "rle": [{"id": 9, "image_id": 7, "category_id": 1, "segmentation": coco.rle(np.ones((10, 10), bool))}]}
    if case == "category":
        return coco.write_coco(folder, categories=[{"id": 1, "name": "whole"}, {"id": 2, "name": "nucleus"}])
    if case == "geojson":
        coco.write_coco(folder).joinpath("annotations.json").unlink()
        (folder / "a.geojson").write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))
        return folder
    return coco.write_coco(folder, anns[case])


@pytest.mark.parametrize("case, message", [
    ("image_id", "annotations.json: annotation 9 points to image_id 3, which no entry of images has"),
    ("polygon", "annotations.json: annotation 9: a polygon needs at least 3 points"),
    ("rle", "annotations.json: annotation 9: RLE of size 10x10 for an image of 64x48 pixels"),
    ("category", "annotations.json: no category 'cell' (it has 'whole', 'nucleus'); set --coco-cell"),
    ("geojson", "a.geojson: is a GeoJSON Feature, not a FeatureCollection"),
])
def test_finetune_on_bad_annotations_says_what_is_wrong_and_writes_nothing(tmp_path, case, message):
    result = finetune(_bad_annotations(tmp_path / "data", case), "--out", tmp_path / "run", "--device", "cpu",
                      "--epochs", "1")
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stdout + result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_finetune_with_unreadable_weights_says_so_and_leaves_no_run_folder(small_sample, tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"garbage")
    result = finetune(small_sample, "--out", tmp_path / "run", "--weights", tmp_path / "weights.pt", "--epochs", "1")
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error")]
    assert result.returncode == 2 and len(errors) == 1 and "weights.pt: the file is damaged" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it_and_resumes_with_what_was_spent(small_sample,
                                                                                                   tmp_path, caplog):
    out = tmp_path / "run"
    # one epoch of this tiny model takes seconds: a budget of 1.5 epochs' worth of time allows one
    first = cellrcnn.fit(tiny_config(epochs=1), small_sample, out, quiet=True)
    epoch = first["train_seconds"].max()
    budget = tiny_config(epochs=6, max_minutes=1.5 * epoch / 60)
    with caplog.at_level(logging.INFO, logger="cellrcnn"):
        history = cellrcnn.fit(budget, small_sample, tmp_path / "budget", quiet=True)
    assert 1 <= len(history) < 6 and (tmp_path / "budget" / "best.pt").is_file()
    assert "stopped at the time budget" in caplog.text
    state = torch.load(tmp_path / "budget" / "last.pt", map_location="cpu", weights_only=True)
    spent = next(v["spent"] for v in state["hooks"].values() if "spent" in v)
    assert spent >= history["train_seconds"].sum()  # training and validation time: what a resume starts from
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        TrainConfig(max_minutes=0)



def test_a_folder_of_ome_zarr_stores_with_ngff_labels_checks_trains_records_its_pixel_size_and_evaluates(tmp_path):
    """Issue 39: OME-Zarr images with their masks as NGFF labels inside each store, through the three commands."""
    zarr = pytest.importorskip("zarr")
    import numpy as np
    from ome_zarr.writer import write_image
    from skimage.io import imread

    from cellrcnn.export.ngff import write_ngff_labels
    from cellrcnn.io.calibration import PixelSize

    from conftest import SAMPLE

    folder = tmp_path / "stores"
    for i in range(4):
        store = folder / f"well{i}.ome.zarr"
        root = zarr.open_group(str(store), mode="w")
        image = imread(SAMPLE / "images" / f"sample_{i:02d}.png")
        write_image(np.moveaxis(image, -1, 0), root, axes="cyx", scale={"y": 0.4, "x": 0.4},
                    axes_units={"y": "micrometer", "x": "micrometer"})
        write_ngff_labels(store, {"parts": imread(SAMPLE / "masks" / f"sample_{i:02d}.png")}, PixelSize(0.4, 0.4))
    checked = run_command("check-data", folder)
    assert checked.returncode == 0 and "4 usable images" in checked.stdout, checked.stdout + checked.stderr
    out = tmp_path / "run"
    trained = finetune(folder, "--out", out, "--backbone", "resnet18_fpn", "--weights", "none", "--min-size", "64",
                       "--max-size", "64", "--epochs", "1", "--workers", "0", "--val-fraction", "0.25", "--quiet")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert cellrcnn.load_checkpoint(out / "best.pt")["config"]["model"]["pixel_size"] == pytest.approx(0.4)
    scored = run_command("evaluate", out / "best.pt", folder, "--out", tmp_path / "scores")
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert sorted(pd.read_csv(tmp_path / "scores" / "per_image.csv")["image"]) == [f"well{i}" for i in range(4)]
