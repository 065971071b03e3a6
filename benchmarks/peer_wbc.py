#!/usr/bin/env python
"""cellrcnn against a plain semantic U-Net (``unet_peer.py``) at equal wall-clock time, on one thread each
(issues 21 and 31).

Rows of the table (``table`` prints it from the rows the runs leave):

- **same microscope**: trained on ``wbc_jtsc`` 001-200, scored on 201-240;
- **zero-shot**: those two models on ``wbc_cellavision_test`` (and, as extra rows, on the two halves of
  ``wbc_cellavision_few``);
- **adapted**: each model adapted on all 20 ``wbc_cellavision_few`` images, as the README tells a lab to, and
  scored on the 20 images of ``wbc_cellavision_test``, 3 seeds; the U-Net gets the wall-clock minutes that
  cellrcnn's whole ``cellrcnn-finetune`` command took with the same seed;
- **few-shot** (extra rows, issue 21): adapted on one half of ``wbc_cellavision_few`` and scored on the other.

Each model runs in its own process on one thread, so the two can run side by side on a
2-core machine:

    python benchmarks/peer_wbc.py cellrcnn --out runs/peer --stage source --epochs 14
    python benchmarks/peer_wbc.py unet --out runs/peer --stage source --minutes 25
    python benchmarks/peer_wbc.py cellrcnn --out runs/peer --stage zeroshot --test-only
    python benchmarks/peer_wbc.py unet --out runs/peer --stage zeroshot --test-only
    python benchmarks/peer_wbc.py cellrcnn --out runs/peer --stage adapt --seeds 0,1,2
    python benchmarks/peer_wbc.py unet --out runs/peer --stage adapt --seeds 0,1,2   # after each cellrcnn seed
    python benchmarks/peer_wbc.py table --out runs/peer

Scores are mean per-image Dice (``cellrcnn.metrics.part_dice``) of cytoplasm, nucleus and
the whole cell at each image's own resolution, the same function for both models.
Finished runs are not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from train_wbc import DATA, PARTS, WBC, link_split
from transfer_wbc import link_halves

import cellrcnn
from cellrcnn.evaluation.metrics import edge_band_dice

# wbc_cellavision_test has a few stray mask values (image 034): each to the nearest part, as its README advises
DATA = dataclasses.replace(DATA, snap_values=True)

#: The shared CellaVision test set (images 021-040): scored on, never trained or tuned on.
CV_TEST = WBC.parent / "wbc_cellavision_test"
CV_FEW = WBC.parent / "wbc_cellavision_few"


def folders(root: Path) -> dict[str, Path]:
    train, val = link_split(root / "split", WBC)
    cv_a, cv_b = link_halves(root / "split")  # CellaVision 001-010 and 011-020
    return {"jtsc_train": train, "jtsc_test": val, "cv_a": cv_a, "cv_b": cv_b, "cv_all": CV_FEW, "cv_test": CV_TEST}


def append_row(path: Path, row: dict) -> None:
    """One scored row, appended to a file of JSON lines (rows differ in their columns; the table reads them all)."""
    with path.with_suffix(".jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


class AtScales:
    """A predictor at a scale of its own for each image (the scales ``cell_diameter="auto"`` estimated once),
    so that one estimate serves every threshold scored."""

    def __init__(self, predictor: cellrcnn.Predictor, scales: pd.Series) -> None:
        self.predictor, self.scales = predictor, scales

    def predict(self, path, **options):
        self.predictor.scale = float(self.scales[Path(path).name])
        return self.predictor.predict(path, **options)


def auto_scales(checkpoint: Path, folder: Path) -> pd.Series:
    """The scale ``--cell-diameter auto`` estimates for each image of ``folder``, by file name."""
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", cell_diameter="auto")
    pairs = cellrcnn.find_pairs(folder, DATA)
    return pd.Series({p.image.name: predictor.estimate_scale(p.image) for p in pairs})


def cellrcnn_score(checkpoint: Path, folder: Path, scale=None, tta: bool = False, **options) -> dict[str, float]:
    """Mean per-image Dice of each part and the whole cell, precision at IoU 0.5, and seconds per image
    (``scale``: None for the training scale, a number, or a Series of one scale per image; ``tta``: test-time
    augmentation)."""
    fixed = scale if isinstance(scale, float) else None
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", scale=fixed)
    predictor.tta = tta
    if isinstance(scale, pd.Series):
        predictor = AtScales(predictor, scale)
    dataset = cellrcnn.CellDataset(cellrcnn.find_pairs(folder, DATA), DATA)
    start = time.perf_counter()
    result = cellrcnn.report.score_folder(dataset, PARTS, predictor, **options)
    seconds = (time.perf_counter() - start) / len(dataset)
    summary = result["summary"]
    means = summary.set_index("metric")["value"]
    at50 = summary.query("threshold == 0.5").set_index("metric")["value"]
    bands = pd.DataFrame([edge_band_dice(item.pred_parts, item.true_parts, PARTS) for item in result["items"]]).mean()
    return {**{name: float(means[f"mean {name}_dice"]) for name in ("cytoplasm", "nucleus", "cell")},
            **{f"{name}_{region}": float(bands[f"{name}_dice_{region}"]) for name in ("cytoplasm", "nucleus", "cell")
               for region in ("band", "interior")},
            "precision50": float(at50["precision"]), "recall50": float(at50["recall"]),
            "seconds_per_image": seconds}


#: Model settings of the sources other than the recipe's: source tag -> ModelConfig fields.
SOURCE_MODELS = {"-refine": {"part_head": "refine", "dice_weight": 1.0, "part_weights": "auto"},
                 "-dice": {"dice_weight": 1.0, "part_weights": "auto"}}


def source_config(epochs: int, seed: int = 0, augment: str = "light", **model) -> cellrcnn.Config:
    """The documented from-scratch recipe (resnet18-FPN, 128 px, 32/32 sampling) on all of 001-200, with flips
    (``augment="adapt"``: with stain, colour and scale jitter too; ``model``: other model settings)."""
    return cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
                                   rpn_batch_size_per_image=32, box_batch_size_per_image=32, **model),
        data=dataclasses.replace(DATA, val_fraction=0.0, augment=augment),
        train=cellrcnn.TrainConfig(epochs=epochs, workers=0, device="cpu", seed=seed))


def run_cellrcnn(args, root: Path) -> None:
    dirs = folders(root)
    results = root / "cellrcnn.csv"
    source = root / f"cellrcnn-source{args.source_tag}"
    if args.stage == "source":
        if not (source / "best.pt").is_file():
            start = time.process_time()
            augment = "adapt" if args.source_tag == "-jitter" else "light"
            cellrcnn.Trainer(source_config(args.epochs, augment=augment, **SOURCE_MODELS.get(args.source_tag, {})),
                             dirs["jtsc_train"], source,
                             quiet=True).train()
            print(f"source trained in {(time.process_time() - start) / 60:.1f} CPU-minutes", flush=True)
        minutes = float(pd.read_csv(source / "history.csv")["train_seconds"].sum() / 60)
        append_row(results, {"row": "same microscope", "seed": 0, "minutes": minutes, "source": args.source_tag,
                             **cellrcnn_score(source / "best.pt", dirs["jtsc_test"])})
        return
    if args.stage == "adapt":
        adapt_cellrcnn(args, root, dirs, source, results)
        return
    if args.stage == "curve":
        curve_cellrcnn(args, root, dirs, source, results)
        return
    if args.stage == "zeroshot":
        for half in ("cv_test",) if args.test_only else ("cv_test", "cv_a", "cv_b"):
            hand = hand_scale(source / "best.pt", dirs[half])
            auto = auto_scales(source / "best.pt", dirs[half])
            print(f"{half}: scale set by hand {hand:.3f}; estimated per image: median {auto.median():.3f}, "
                  f"{auto.min():.3f}-{auto.max():.3f}", flush=True)
            for label, scale in (("training scale", None), ("auto scale", auto), ("scale set by hand", hand)):
                for largest in (False, True):
                    for threshold in (0.5,) if args.test_only else (0.5, 0.7, 0.9):
                        append_row(results, {"row": f"zero-shot, {half}", "seed": 0, "minutes": 0.0,
                                             "source": args.source_tag, "tag": args.tag, "rule": "nucleated",
                                             "scale": label, "largest": largest, "threshold": threshold,
                                             **cellrcnn_score(source / "best.pt", dirs[half], scale=scale,
                                                              largest=largest, score_threshold=threshold)})
        return
    for seed in [int(s) for s in args.seeds.split(",")]:
        for train_half, test_half in (("cv_a", "cv_b"), ("cv_b", "cv_a")):
            run_dir = root / f"cellrcnn-fewshot{args.tag}-{train_half}-seed{seed}"
            if not (run_dir / "best.pt").is_file():
                # the one command of the README, with the flags that describe the files, all 10 images
                # training (as the U-Net's), one process and no loader workers
                command = [str(dirs[train_half]), "--from", str(source), "--out", str(run_dir),
                           "--image-glob", "*.bmp", "--mask-glob", "*.png", "--part-values", "0,128,255",
                           "--val-fraction", "0", "--seed", str(seed), "--workers", "0", "--device", "cpu",
                           "--quiet", *args.extra]
                if cellrcnn.cli.finetune_main(command) != 0:
                    raise SystemExit(f"cellrcnn-finetune {' '.join(command)} failed")
            minutes = float(pd.read_csv(run_dir / "history.csv")["train_seconds"].sum() / 60)
            for largest in (False, True):
                for threshold in (0.5, 0.9):
                    append_row(results, {"row": f"few-shot, {train_half} -> {test_half}", "seed": seed,
                                         "minutes": minutes, "scale": "recorded", "largest": largest,
                                         "threshold": threshold, "tag": args.tag,
                                         **cellrcnn_score(run_dir / "best.pt", dirs[test_half], largest=largest,
                                                          score_threshold=threshold)})


def adapt_cellrcnn(args, root: Path, dirs: dict[str, Path], source: Path, results: Path) -> None:
    """The README's adaptation: ``cellrcnn-finetune wbc_cellavision_few --from SOURCE --out RUN`` with only the
    flags that describe the files (and the seed), scored on ``wbc_cellavision_test`` by each single-cell rule.
    The wall-clock minutes of the whole command are recorded: the U-Net's adaptation gets as many."""
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = root / f"cellrcnn-adapt{args.source_tag}{args.tag}-seed{seed}"
        wall = run_dir / "wall.json"
        if not (run_dir / "best.pt").is_file():
            command = [str(dirs["cv_all"]), "--from", str(source), "--out", str(run_dir), "--image-glob", "*.bmp",
                       "--mask-glob", "*.png", "--part-values", "0,128,255", "--seed", str(seed), "--workers", "0",
                       "--device", "cpu", "--quiet", *args.extra]
            start = time.perf_counter()
            if cellrcnn.cli.finetune_main(command) != 0:
                raise SystemExit(f"cellrcnn-finetune {' '.join(command)} failed")
            wall.write_text(json.dumps({"seconds": time.perf_counter() - start}))
        minutes = json.loads(wall.read_text())["seconds"] / 60
        choices = [(False, "nucleated", False), (True, "largest", False), (True, "nucleated", False),
                   (True, "score", False)]
        if not args.tag:  # test-time augmentation of the recipe's model, with the default rule
            choices.append((True, "nucleated", True))
        for largest, rule, tta in choices:
            append_row(results, {"row": "adapted, all 20 -> test", "seed": seed, "minutes": minutes,
                                 "source": args.source_tag, "scale": "recorded", "largest": largest, "rule": rule if largest else "",
                                 "threshold": 0.5, "tag": args.tag + ("-tta" if tta else ""),
                                 **cellrcnn_score(run_dir / "best.pt", dirs["cv_test"], tta=tta, largest=largest,
                                                  single_rule=rule)})


#: Minutes of the time-to-accuracy curve (issue 38).
CURVE_MINUTES = (2.5, 5.0, 10.0, 20.0)


def curve_cellrcnn(args, root: Path, dirs: dict[str, Path], source: Path, results: Path) -> None:
    """Dice against minutes when adapting: the adaptation command with as many steps as fit each of
    ``--curve-minutes``, from the speed of that variant's 150-step recipe run (seed 0 of the adapt stage), each
    a run of its own (its lr schedule fits its length), scored on ``wbc_cellavision_test``."""
    recipe = root / f"cellrcnn-adapt{args.source_tag}{args.tag}-seed0" / "wall.json"
    if not recipe.is_file():
        raise SystemExit(f"{recipe} is missing: run the adapt stage of this variant for seed 0 first")
    per_step = json.loads(recipe.read_text())["seconds"] / 150
    for minutes in [float(m) for m in args.curve_minutes.split(",")]:
        steps = max(10, int(round(minutes * 60 / per_step)))
        run_dir = root / f"cellrcnn-curve{args.tag}-{minutes:g}min"
        wall = run_dir / "wall.json"
        if not (run_dir / "best.pt").is_file():
            command = [str(dirs["cv_all"]), "--from", str(source), "--out", str(run_dir), "--image-glob", "*.bmp",
                       "--mask-glob", "*.png", "--part-values", "0,128,255", "--seed", "0", "--workers", "0",
                       "--device", "cpu", "--quiet", "--steps", str(steps), *args.extra]
            start = time.perf_counter()
            if cellrcnn.cli.finetune_main(command) != 0:
                raise SystemExit(f"cellrcnn-finetune {' '.join(command)} failed")
            wall.write_text(json.dumps({"seconds": time.perf_counter() - start}))
        append_row(results, {"row": "curve", "seed": 0, "budget": minutes, "steps": steps, "tag": args.tag,
                             "minutes": json.loads(wall.read_text())["seconds"] / 60, "largest": True,
                             "rule": "nucleated", "threshold": 0.5,
                             **cellrcnn_score(run_dir / "best.pt", dirs["cv_test"])})


def plot_curve(root: Path, out: Path) -> None:
    """Dice against minutes of adapting, both models (the ``curve`` rows), as a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, peer = (pd.read_json(root / f"{name}.jsonl", lines=True) for name in ("cellrcnn", "unet"))
    ours["tag"] = ours["tag"].fillna("")
    # the adaptation recipe's own run (150 steps, seed 0, the default cell rule) is a point of its curve
    recipe = ours[(ours["row"] == "adapted, all 20 -> test") & (ours["seed"] == 0) & (ours["rule"] == "nucleated")
                  & ~ours["tag"].str.endswith("-tta") & (ours["source"].fillna("") == "")]
    ours = pd.concat([ours[ours["row"] == "curve"], recipe.assign(steps=150)])
    ours = ours[ours["tag"].isin(ours.loc[ours["row"] == "curve", "tag"])]
    peer = peer[peer["row"] == "curve"]
    print("| model | minutes | steps | cytoplasm | nucleus | whole cell | cytoplasm, 3-px edge band |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, frame in [(f"cellrcnn, {VARIANTS.get(t, t) or 'recipe'}", f) for t, f in ours.groupby("tag")] + [
            ("U-Net peer", peer)]:
        for _, r in frame.sort_values("minutes").iterrows():
            print(f"| {label} | {r['minutes']:.1f} | {int(r['steps'])} | {r['cytoplasm']:.3f} | {r['nucleus']:.3f} | "
                  f"{r['cell']:.3f} | {r['cytoplasm_band']:.3f} |")
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)
    for ax, part in zip(axes, ("cytoplasm", "nucleus", "cell")):
        for tag, frame in ours.groupby(ours["tag"].fillna("")):
            frame = frame.sort_values("minutes")
            ax.plot(frame["minutes"], frame[part], "o-", label=f"cellrcnn {VARIANTS.get(tag, tag) or 'recipe'}")
        frame = peer.sort_values("minutes")
        ax.plot(frame["minutes"], frame[part], "s--", color="k", label="U-Net peer")
        ax.set_title(f"{part} Dice" if part != "cell" else "whole-cell Dice")
        ax.set_xlabel("adapting, wall minutes (one thread)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def hand_scale(checkpoint: Path, folder: Path) -> float:
    """The scale a user sets by hand: the trained cell size over the median annotated cell diameter."""
    cell_size = cellrcnn.load_checkpoint(checkpoint)["config"]["model"]["cell_size"]
    table = cellrcnn.data.cell_sizes(cellrcnn.find_pairs(folder, DATA), DATA)
    return float(cell_size / table["cell_side"].median())


def run_unet(args, root: Path) -> None:
    import unet_peer

    dirs = folders(root)
    results = root / "unet.csv"
    source = root / "unet-source.pt"
    loaded = {}

    def data(name: str) -> dict:
        if name not in loaded:
            loaded[name] = unet_peer.load_folder(dirs[name], DATA)
        return loaded[name]

    def fresh(state=None) -> "unet_peer.UNet":
        torch.manual_seed(0)
        model = unet_peer.UNet(len(PARTS))
        if state is not None:
            model.load_state_dict(state)
        return model

    if args.stage == "source":
        model = fresh()
        if source.is_file():
            model.load_state_dict(torch.load(source, weights_only=True))
            minutes = json.loads(source.with_suffix(".json").read_text())["seconds"] / 60
        else:
            done = unet_peer.train(model, data("jtsc_train"), args.minutes * 60, lr=2e-3, seed=0)
            torch.save(model.state_dict(), source)
            source.with_suffix(".json").write_text(json.dumps(done))
            minutes = done["seconds"] / 60
        append_row(results, {"row": "same microscope", "seed": 0, "minutes": minutes,
                             **unet_peer.score(model, data("jtsc_test"), PARTS)})
        return
    state = torch.load(source, weights_only=True)
    if args.stage == "zeroshot":
        for half in ("cv_test",) if args.test_only else ("cv_test", "cv_a", "cv_b"):
            append_row(results, {"row": f"zero-shot, {half}", "seed": 0, "minutes": 0.0,
                                 **unet_peer.score(fresh(state), data(half), PARTS)})
        return
    if args.stage == "curve":  # one run of the longest budget, scored as it passes each shorter one
        marks = [float(m) * 60 for m in args.curve_minutes.split(",")]
        model = fresh(state)

        def at_mark(seconds: float, steps: int) -> None:
            append_row(results, {"row": "curve", "seed": 0, "budget": seconds / 60, "minutes": seconds / 60,
                                 "steps": steps, **unet_peer.score(model, data("cv_test"), PARTS)})

        done = unet_peer.train(model, data("cv_all"), max(marks), lr=5e-4, seed=0, marks=marks, at_mark=at_mark)
        at_mark(done["seconds"], done["steps"])
        return
    if args.stage == "adapt":  # as many wall-clock minutes as cellrcnn's adaptation with the same seed took
        for seed in [int(s) for s in args.seeds.split(",")]:
            wall = root / f"cellrcnn-adapt{args.tag}-seed{seed}" / "wall.json"
            if not wall.is_file():
                raise SystemExit(f"{wall} is missing: run the cellrcnn adapt stage for seed {seed} first")
            model = fresh(state)
            done = unet_peer.train(model, data("cv_all"), json.loads(wall.read_text())["seconds"], lr=5e-4, seed=seed)
            append_row(results, {"row": "adapted, all 20 -> test", "seed": seed, "minutes": done["seconds"] / 60,
                                 "steps": done["steps"], **unet_peer.score(model, data("cv_test"), PARTS)})
        return
    for seed in [int(s) for s in args.seeds.split(",")]:
        for train_half, test_half in (("cv_a", "cv_b"), ("cv_b", "cv_a")):
            model = fresh(state)
            done = unet_peer.train(model, data(train_half), args.minutes * 60, lr=5e-4, seed=seed)
            append_row(results, {"row": f"few-shot, {train_half} -> {test_half}", "seed": seed,
                                 "minutes": done["seconds"] / 60, "steps": done["steps"],
                                 **unet_peer.score(model, data(test_half), PARTS)})


#: The cellrcnn sources: tag -> how it was trained.
SOURCES = {"": "", "-jitter": "source trained with stain, colour and scale jitter (--augment adapt)",
           "-refine": "source trained with the refine head, the Dice term and auto part weights",
           "-dice": "source trained with the Dice term and auto part weights"}
#: Few-shot runs other than the recipe: run-folder tag -> what changed.
VARIANTS = {"": "", "-dice1": "recipe with --dice-weight 1", "-refine": "recipe with --part-head refine",
            "-refine-dice1": "recipe with --part-head refine --dice-weight 1",
            "-box12": "recipe with --part-box-scale 1.2",
            "-refine-dice1-box12": "recipe with --part-head refine --dice-weight 1 --part-box-scale 1.2", "-nucleus-scale": "auto scale from detections with a nucleus only", "-tta": "recipe, predicted with test-time augmentation (8 views)",
            "-edge2": "recipe with --edge-weight 2", "-m56": "recipe with --mask-size 56",
            "-before": "before: --from as it was (30 epochs, lr 0.001 halved every 5, a step every 4 "
                               "images, no augmentation, images at min_size 128)",
            "-light": "recipe with --augment light (no stain or scale jitter)",
            "-cyto2": "recipe with --cytoplasm-weight 2"}


def table(root: Path) -> None:
    """The markdown tables of docs/benchmarks.md from the rows the runs left."""
    ours, peer = (pd.read_json(root / f"{name}.jsonl", lines=True) for name in ("cellrcnn", "unet"))
    for frame in (ours, peer):
        frame["group"] = frame["row"].str.replace(r", cv_[ab]( -> cv_[ab])?$", "", regex=True)
    if "tag" not in ours:
        ours["tag"] = ""
    ours["tag"] = ours["tag"].fillna("")
    ours["source"] = ours["source"].fillna("") if "source" in ours else ""
    # rows without a rule were scored with the default of their day: "nucleated" since issue 31
    ours["rule"] = ours["rule"].fillna("nucleated") if "rule" in ours else "nucleated"
    ours.loc[~ours["largest"].astype("boolean").fillna(False).astype(bool), "rule"] = ""

    def cell(per_seed: pd.Series) -> str:
        """Mean ± standard deviation over seeds."""
        spread = f" ± {per_seed.std():.3f}" if len(per_seed) > 1 else ""
        return f"{per_seed.mean():.3f}{spread}"

    def summary(frame: pd.DataFrame) -> dict[str, str]:
        # each seed's mean over the scored halves, then mean ± sd over seeds
        seeds = frame.groupby("seed")[["cytoplasm", "nucleus", "cell", "precision50", "minutes"]].mean(
            numeric_only=True)
        return {k: cell(seeds[k]) if k in seeds and seeds[k].notna().any() else "" for k in seeds}

    print("| row | cytoplasm, cellrcnn / U-Net | nucleus | whole cell | cellrcnn precision at IoU 0.5 | "
          "training minutes, cellrcnn / U-Net |")
    print("| --- | --- | --- | --- | --- | --- |")
    unset = ours["largest"].isna()  # the same-microscope row: one cell an image, found alone either way
    ours["largest"] = ours["largest"].astype("boolean").fillna(False).astype(bool)
    ours["threshold"] = ours["threshold"].fillna(0.5).round(2)
    ours["scale"] = ours["scale"].fillna("")
    # the rows of the main table: cellrcnn as it predicts by default (a model trained on single-cell crops keeps
    # one complete cell, by the default rule), at the default score threshold
    default = (ours["tag"] == "") & (ours["source"] == "") & (ours["largest"] | unset) & (ours["threshold"] == 0.5) & (
        ours["rule"].isin(["", "nucleated"]) | ~ours["group"].str.startswith("adapted"))
    for group, label in (("same microscope", "same microscope: JTSC 001-200 -> 201-240"),
                         ("zero-shot, cv_test", "CellaVision zero-shot, on wbc_cellavision_test"),
                         ("adapted, all 20 -> test", "CellaVision adapted on all 20 of wbc_cellavision_few, "
                                                     "on wbc_cellavision_test, 3 seeds"),
                         ("zero-shot", "CellaVision zero-shot (wbc_cellavision_few, all 20 images)"),
                         ("few-shot", "CellaVision few-shot, 10 -> the other 10, both halves, 3 seeds")):
        mine = ours[default & (ours["group"] == group)]
        if group.startswith("zero-shot"):
            mine = mine[mine["scale"] == "scale set by hand"]
        theirs = peer[peer["group"] == group]
        if mine.empty or theirs.empty:
            continue
        a, b = summary(mine), summary(theirs.assign(precision50=float("nan")))
        print(f"| {label} | {a['cytoplasm']} / {b['cytoplasm']} | {a['nucleus']} / {b['nucleus']} | "
              f"{a['cell']} / {b['cell']} | {a['precision50']} | {a['minutes']} / {b['minutes']} |")
    print("\n| cellrcnn variant | cytoplasm | nucleus | whole cell | precision at IoU 0.5 | recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    keys = ["group", "source", "tag", "scale", "largest", "rule", "threshold"]
    for (group, source, tag, scale, largest, rule, threshold), frame in ours.groupby(keys, sort=False):
        seeds = frame.groupby("seed")[["cytoplasm", "nucleus", "cell", "precision50", "recall50"]].mean()
        one = {"largest": "largest cell", "nucleated": "largest cell with a nucleus",
               "score": "best-scoring cell with a nucleus"}.get(rule, "one cell")
        label = ", ".join(x for x in (group, SOURCES[source], VARIANTS.get(tag, tag), scale,
                                      one if largest else "every cell", f"score >= {threshold:g}") if x)
        print(f"| {label} | " + " | ".join(cell(seeds[c]) for c in seeds) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("cellrcnn", "unet", "table", "plot"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=("source", "zeroshot", "adapt", "fewshot", "curve"), default="source")
    parser.add_argument("--curve-minutes", default=",".join(f"{m:g}" for m in CURVE_MINUTES),
                        help="curve: the training budgets, in minutes")
    parser.add_argument("--figure", type=Path, default=Path("docs/adapt_curve.png"), help="plot: where to write")
    parser.add_argument("--test-only", action="store_true", help="zero-shot: score only wbc_cellavision_test")
    parser.add_argument("--source-tag", default="", choices=("", "-jitter", *SOURCE_MODELS),
                        help="cellrcnn: which source (-jitter: trained with stain, colour and scale jitter; -refine: "
                             "the refine head, the Dice term and auto part weights; -dice: the Dice term and auto "
                             "part weights)")
    parser.add_argument("--epochs", type=int, default=14, help="cellrcnn source: epochs over 001-200")
    parser.add_argument("--minutes", type=float, default=25.0, help="U-Net: training budget of each run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="cellrcnn few-shot: suffix of the run folders, for variants")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="cellrcnn few-shot: more cellrcnn-finetune flags (a variant of the recipe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s), torch {torch.__version__}", flush=True)
    if args.model == "cellrcnn":
        run_cellrcnn(args, root)
    elif args.model == "unet":
        run_unet(args, root)
    elif args.model == "plot":
        plot_curve(root, args.figure)
    else:
        table(root)


if __name__ == "__main__":
    main()
