#!/usr/bin/env python
"""Physical units (issue 39): the scale read from a file's metadata, the single-cell rule judged from the image as
given, and a whole OME-Zarr field predicted in tiles.

Stages (each appends its rows to ``OUT/units.jsonl`` as it scores them, so a cut run keeps what it did):

- ``magnified``: ``wbc_jtsc`` 201-240, the originals and the same pixels magnified 2x. The 2x images are written as
  OME-TIFF with half the pixel size and as plain PNG (no metadata); the JTSC model (``--source``: a run trained on
  001-200, such as ``peer_wbc.py``'s ``cellrcnn-source``) is told the originals' pixel size, as a run trained with
  ``--pixel-size`` records it. Rows: originals; 2x OME-TIFF, no scale flag; 2x PNG, no flag; 2x PNG,
  ``--cell-diameter auto``.
- ``zeroshot``: the JTSC model on ``wbc_cellavision_test`` (never trained or tuned on) as a user runs it: no scale
  flag and the model's own single-cell rule; ``--cell-diameter auto`` (with its size model, and ``--rows ladder``:
  the ladder of scales of a model without one); the scale set by hand. Run it with the code
  before and after a change (``--tag``) for a before/after.
- ``sizemodel``: the experiment behind the size model (a ridge regression from an image's style to its cell size,
  as Cellpose's): its estimates against the truth on ``wbc_cellavision_few`` (to choose the penalty) and
  ``wbc_cellavision_test``, for four penalties.
- ``fit-size``: the source model with its size model fitted as training now does at its end, written to
  ``OUT/source-size`` (then ``zeroshot --source OUT/source-size``).
- ``zarr``: an 8000 x 8000 OME-Zarr field of JTSC crops predicted by ``cellrcnn-predict`` in tiles, in a process
  of its own: its peak memory (max RSS), minutes, the labels in the store, and napari's OME-Zarr reader (headless)
  opening it.

    python benchmarks/units.py magnified --source runs/p38/cellrcnn-source --out runs/units
    python benchmarks/units.py zeroshot --source runs/p38/cellrcnn-source --out runs/units --tag after
    python benchmarks/units.py zarr --source runs/p38/cellrcnn-source --out runs/units
    python benchmarks/units.py fit-size --source runs/p38/cellrcnn-source --out runs/units
    python benchmarks/units.py zeroshot --source runs/units/source-size --out runs/units --tag size-model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from skimage.io import imread, imsave
from skimage.transform import rescale

import cellrcnn
from cellrcnn.modeling.size_model import fit_ridge, image_style

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets"
JTSC, CV_TEST = SHARED / "wbc_jtsc", SHARED / "wbc_cellavision_test"
PARTS = ("background", "cytoplasm", "nucleus")
BMP = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255), snap_values=True)
#: A nominal pixel size for the JTSC images (their source states none): only ratios matter here.
JTSC_UM = 0.2


def append_row(out: Path, row: dict) -> None:
    with (out / "units.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def score(predictor, folder: Path, data: cellrcnn.DataConfig, **options) -> dict[str, float]:
    """Mean per-image Dice of each part and the whole cell, and precision / recall at IoU 0.5."""
    dataset = cellrcnn.CellDataset(cellrcnn.find_pairs(folder, data), data)
    start = time.perf_counter()
    result = cellrcnn.report.score_folder(dataset, PARTS, predictor, **options)
    summary = result["summary"]
    means = summary.set_index("metric")["value"]
    at50 = summary.query("threshold == 0.5").set_index("metric")["value"]
    return {**{name: round(float(means[f"mean {name}_dice"]), 4) for name in ("cytoplasm", "nucleus", "cell")},
            "precision50": round(float(at50["precision"]), 4), "recall50": round(float(at50["recall"]), 4),
            "seconds_per_image": round((time.perf_counter() - start) / len(dataset), 3)}


def magnified_folders(out: Path) -> dict[str, Path]:
    """201-240 as they are (links), and magnified 2x as OME-TIFF (half the pixel size) and as PNG."""
    dirs = {name: out / "magnified" / name for name in ("original", "ome", "png")}
    if all((d / "240.png").exists() for d in dirs.values()):
        return dirs
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(201, 241):
        image, mask = JTSC / f"{i:03d}.bmp", JTSC / f"{i:03d}.png"
        for name, target in (("original", image), ("original", mask)):
            link = dirs[name] / target.name
            if not link.exists():
                link.symlink_to(target)
        big = rescale(imread(image), 2, order=1, channel_axis=-1, preserve_range=True).round().astype(np.uint8)
        big_mask = np.repeat(np.repeat(imread(mask), 2, axis=0), 2, axis=1)  # nearest: the truth stays 0/128/255
        tifffile.imwrite(dirs["ome"] / f"{i:03d}.ome.tif", big, ome=True, photometric="rgb",
                         metadata={"axes": "YXS", "PhysicalSizeX": JTSC_UM / 2, "PhysicalSizeY": JTSC_UM / 2})
        imsave(dirs["png"] / f"{i:03d}.png", big, check_contrast=False)
        for d in ("ome", "png"):
            imsave(dirs[d] / f"{i:03d}_masks.png", big_mask, check_contrast=False)
    return dirs


def calibrated(checkpoint: Path, **options) -> cellrcnn.Predictor:
    """The model as a run trained with ``--pixel-size JTSC_UM`` records it."""
    loaded = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", **options)
    config = dataclasses.replace(loaded.config, model=dataclasses.replace(loaded.config.model, pixel_size=JTSC_UM))
    return cellrcnn.Predictor(loaded.model, config, "cpu", **options)


def run_magnified(args) -> None:
    dirs = magnified_folders(args.out)
    checkpoint = args.source / "best.pt"
    tif = dataclasses.replace(BMP, image_glob="*.tif", mask_glob="*_masks.png")
    png = dataclasses.replace(BMP, image_glob="*.png", mask_glob="*_masks.png")
    rows = [("originals (BMP), as trained", dirs["original"], BMP, {}),
            ("2x, OME-TIFF with half the pixel size, no scale flag", dirs["ome"], tif, {}),
            ("2x, PNG (no metadata), no scale flag", dirs["png"], png, {}),
            ("2x, PNG (no metadata), --cell-diameter auto", dirs["png"], png, {"cell_diameter": "auto"})]
    for label, folder, data, options in rows:
        append_row(args.out, {"stage": "magnified", "row": label, "tag": args.tag,
                              **score(calibrated(checkpoint, **options), folder, data)})


def run_zeroshot(args) -> None:
    from peer_wbc import hand_scale  # the scale a user sets by hand, as the peer benchmark sets it

    checkpoint = args.source / "best.pt"
    hand = hand_scale(checkpoint, CV_TEST)
    auto = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", cell_diameter="auto")
    estimates = [auto.estimate_scale(p.image) for p in cellrcnn.find_pairs(CV_TEST, BMP)]
    append_row(args.out, {"stage": "zeroshot", "row": "scale estimates", "tag": args.tag, "hand": round(hand, 4),
                          "auto_median": round(float(np.median(estimates)), 4),
                          "auto_min": round(float(np.min(estimates)), 4), "auto_max": round(float(np.max(estimates)), 4)})
    rows = {"none": ("no scale flag", {}), "auto": ("--cell-diameter auto", {"cell_diameter": "auto"}),
            "ladder": ("--cell-diameter auto, the ladder of scales (a model without a size model)",
                       {"cell_diameter": "auto"}),
            "hand": ("scale set by hand", {"scale": hand})}
    for key in args.rows.split(","):
        label, options = rows[key]
        predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", **options)
        if key == "ladder":  # as a model trained before the size model (issue 39)
            predictor.model.size_model = None
        append_row(args.out, {"stage": "zeroshot", "row": label, "tag": args.tag, "rule": "the model's own",
                              **score(predictor, CV_TEST, BMP)})


def run_sizemodel(args) -> None:
    """The experiment behind the size model (:mod:`cellrcnn.modeling.size_model`, its functions) in the manner of
    Cellpose's: a ridge regression from the style of an image at the training
    scale to the log of its cell diameter in network pixels, fitted on the training images (JTSC 001-200)
    resized by 2^-1.5 .. 2^1.5; scored on wbc_cellavision_test against the scale ladder, image by image."""
    checkpoint = args.source / "best.pt"
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu")
    model = predictor.config.model
    base, cell = model.input_scale, model.cell_size
    rng = np.random.default_rng(0)

    def examples(pairs, factors):
        X, y = [], []
        sides = cellrcnn.data.cell_sizes(pairs, BMP, count=len(pairs)).groupby("image")["cell_side"].median()
        for pair in [p for p in pairs if p.image.name in sides.index]:  # cell_sizes may sample the images
            image = cellrcnn.read_image(pair.image, BMP)
            for f in factors:
                # the style at the training scale of an image whose cells are f times their size
                big = rescale(image, f, order=1, channel_axis=-1) if f != 1 else image
                tensor = torch.from_numpy(np.ascontiguousarray(big, dtype=np.float32)).permute(2, 0, 1)
                X.append(image_style(predictor.model, tensor, base).numpy())
                y.append(np.log(sides[pair.image.name] * f * base))
        return np.array(X), np.array(y)

    train = [p for p in cellrcnn.find_pairs(JTSC, BMP) if int(p.name) <= 200]
    X, y = examples(train, [2 ** rng.uniform(-1.5, 1.5) for _ in range(3)])
    tests = {name: examples(cellrcnn.find_pairs(folder, BMP), [1.0])
             for name, folder in (("cv_few", SHARED / "wbc_cellavision_few"), ("cv_test", CV_TEST))}
    for lam in (1.0, 10.0, 100.0, 1000.0):
        fit = fit_ridge(X, y, penalty=lam)
        for name, (Xt, yt) in tests.items():
            predicted = ((Xt - fit["mean"]) / fit["std"]) @ fit["coef"] + fit["intercept"]
            estimate = base * cell / np.exp(predicted)  # the scale that brings the predicted cell to cell_size
            truth = base * cell / np.exp(yt)
            ratio = estimate / truth
            append_row(args.out, {"stage": "sizemodel", "set": name, "lambda": lam, "tag": args.tag,
                                  "median_ratio": round(float(np.median(ratio)), 3),
                                  "within_15pct": int(np.sum(np.abs(ratio - 1) <= 0.15)), "images": len(ratio),
                                  "median_estimate": round(float(np.median(estimate)), 3),
                                  "median_truth": round(float(np.median(truth)), 3)})


def run_fit_size(args) -> None:
    """The source model with its size model fitted as training now fits it at its end (``SizeModelFit``), on
    its own training images (JTSC 001-200), written as ``OUT/source-size/best.pt`` for ``zeroshot --source``."""
    from cellrcnn.engine.size import fit_size_model
    from cellrcnn.modeling.checkpoint import model_from_checkpoint

    target = args.out / "source-size"
    state = cellrcnn.load_checkpoint(args.source / "best.pt")
    model, config = model_from_checkpoint(args.source / "best.pt")
    pairs = [p for p in cellrcnn.find_pairs(JTSC, config.data) if int(p.name) <= 200]
    start = time.perf_counter()
    count = fit_size_model(model, pairs, config.data, config.model, config.train.seed)
    seconds = time.perf_counter() - start
    target.mkdir(parents=True, exist_ok=True)
    state["model"] = model.state_dict()
    torch.save(state, target / "best.pt")
    (target / "config.json").write_text(json.dumps(state["config"]))
    append_row(args.out, {"stage": "fit-size", "row": "size model fitted", "tag": args.tag, "views": count,
                          "images": len(pairs), "seconds": round(seconds, 1)})


def make_field(store: Path, side: int) -> int:
    """An OME-Zarr field of ``side`` x ``side`` pixels tiled with the 120 x 120 JTSC crops (repeated); returns the
    number of crops placed."""
    import zarr
    from ome_zarr.writer import write_image

    crops = [c for c in (imread(JTSC / f"{i:03d}.bmp") for i in range(1, 241)) if c.shape[:2] == (120, 120)]
    per_row = side // 120
    rows = []
    for r in range(side // 120 + 1):
        row = np.concatenate([crops[(r * per_row + c) % len(crops)] for c in range(per_row + 1)], axis=1)[:, :side]
        rows.append(row)
    field = np.concatenate(rows, axis=0)[:side]
    root = zarr.open_group(str(store), mode="w")
    write_image(np.moveaxis(field, -1, 0), root, axes="cyx", scale={"y": JTSC_UM, "x": JTSC_UM},
                axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": (3, 1024, 1024)})
    return len(rows) * (per_row + 1)


def run_zarr(args) -> None:
    folder = args.out / "zarr"
    store = folder / "images" / "field.ome.zarr"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        # in a process of its own, so the field held while writing it counts in no one's peak
        subprocess.run([sys.executable, __file__, "make-field", "--out", str(store), "--side", str(args.side)],
                       check=True)
    model = folder / "model"
    if not (model / "best.pt").exists():  # the JTSC model with its pixel size recorded, as --pixel-size records it
        model.mkdir(parents=True, exist_ok=True)
        state = cellrcnn.load_checkpoint(args.source / "best.pt")
        state["config"]["model"]["pixel_size"] = JTSC_UM
        torch.save(state, model / "best.pt")
        (model / "config.json").write_text(json.dumps(state["config"]))
    out = folder / f"out{args.tag}"
    start = time.perf_counter()
    # the predict command in a process of its own, which reports its own peak (RUSAGE_CHILDREN would also
    # count the field's writer above)
    report = "import resource, sys; from cellrcnn.cli import predict_main; code = predict_main(sys.argv[1:]); " \
             "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
    done = subprocess.run([sys.executable, "-c", report, str(model / "best.pt"), str(store), "--out", str(out),
                           "--quiet", "--device", "cpu", "--overwrite"], capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    peak = int(done.stderr.rsplit("PEAK_KIB", 1)[1].split()[0]) / 2**20 if "PEAK_KIB" in done.stderr else float("nan")
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    from napari_ome_zarr import napari_get_reader

    layers = napari_get_reader(str(store))(str(store))
    table = pd.read_csv(out / "cells.csv")
    append_row(args.out, {"stage": "zarr", "row": f"{args.side} x {args.side} OME-Zarr field", "tag": args.tag,
                          "peak_rss_gib": round(peak, 3), "minutes": round(minutes, 2), "cells": len(table),
                          "napari_layers": sorted(kind for _, _, kind in layers),
                          "labels_in_store": sorted(p.name for p in (store / "labels").iterdir() if p.is_dir()),
                          "log": [line for line in done.stderr.strip().splitlines() if "PEAK" not in line][-3:]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("magnified", "zeroshot", "zarr", "sizemodel", "fit-size", "make-field"))
    parser.add_argument("--source", type=Path, default=Path("runs/p38/cellrcnn-source"))
    parser.add_argument("--out", type=Path, default=Path("runs/units"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--rows", default="none,auto,hand",
                        help="zeroshot: which rows, of none (no scale flag), auto (the size model), ladder (the ladder "
                             "of scales, the size model left out) and hand (default: %(default)s)")
    parser.add_argument("--side", type=int, default=8000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stage == "make-field":
        print(make_field(args.out, args.side), "crops")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()} {platform.processor()} torch {torch.__version__}, 1 thread", flush=True)
    {"magnified": run_magnified, "zeroshot": run_zeroshot, "zarr": run_zarr,
     "sizemodel": run_sizemodel, "fit-size": run_fit_size}[args.stage](args)


if __name__ == "__main__":
    main()
