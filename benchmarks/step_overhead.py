#!/usr/bin/env python
"""Overhead of cellrcnn's part-aware Mask R-CNN over stock torchvision Mask R-CNN.

Both models share backbone, weights, image size and cells; stock torchvision gets
the cells as binary masks, cellrcnn as part labels (background, cytoplasm,
nucleus). Training steps (forward, backward, SGD step, same random sampling via
the same seed) and inference forwards alternate between the two models, and the
script prints median times and their ratios. Peak memory is measured per step:
on CUDA with the allocator's peak, on a CPU as the rise of the process's peak
resident memory (VmHWM, reset through /proc/self/clear_refs) in a fresh child
process per measurement, with large blocks returned to the OS on free.

A third measurement compares the target projection alone
(``project_parts_on_boxes`` against torchvision's ``project_masks_on_boxes``) on
a large image with many cells, and a fourth the paste of predicted masks into a
large image with many cells (``paste_parts_in_image``, exact geometry, against
torchvision's ``paste_masks_in_image``).

The cellrcnn model is built with the defaults (exact mask geometry, chance
predictor initialisation, group norm for ``weights="none"``); stock torchvision
shares its backbone, RPN and heads, so the ratios measure the RoI heads, the
targets and the paste.

    python benchmarks/step_overhead.py                  # resnet50_fpn, 256 px, 2 images
    python benchmarks/step_overhead.py --size 512 --repeats 20
Goals: training step <= 1.05x, inference <= 1.10x, peak memory <= 1.10x, paste <= 1.10x.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

import cellrcnn


def make_models(args):
    config = cellrcnn.ModelConfig(backbone=args.backbone, weights="none", min_size=args.size, max_size=args.size)
    torch.manual_seed(0)
    ours = cellrcnn.build_model(config)
    # Stock: the same modules with torchvision's own RoIHeads and transform and a 2-class binary predictor.
    stock = MaskRCNN(ours.backbone, num_classes=None, min_size=args.size, max_size=args.size,
                     image_mean=list(config.image_mean), image_std=list(config.image_std),
                     rpn_anchor_generator=ours.rpn.anchor_generator, rpn_head=ours.rpn.head,
                     box_head=ours.roi_heads.box_head, box_predictor=ours.roi_heads.box_predictor,
                     mask_head=ours.roi_heads.mask_head, mask_predictor=MaskRCNNPredictor(256, 256, 2),
                     rpn_score_thresh=ours.rpn.score_thresh)
    stock = copy.deepcopy(stock)  # own parameters, so the SGD steps of one model leave the other alone
    models = {"cellrcnn": ours.to(args.device), "torchvision": stock.to(args.device)}
    sync_weights(models)
    return models


def sync_weights(models):
    """Give stock every weight of ours that fits, so both find the same cells and sample the same RoIs."""
    ours, stock = models["cellrcnn"], models["torchvision"]
    own = stock.state_dict()
    stock.load_state_dict({k: v for k, v in ours.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)


def make_batch(args):
    images, targets = {"cellrcnn": [], "torchvision": []}, {"cellrcnn": [], "torchvision": []}
    for seed in range(args.batch):
        sample = cellrcnn.synthetic_sample(seed, size=(args.size, args.size), max_cells=args.cells)
        image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float().div(255).to(args.device)
        target = {k: torch.from_numpy(v).to(args.device) for k, v in cellrcnn.whole_cell_targets(sample["parts"]).items()}
        for name in images:
            images[name].append(image)
        targets["cellrcnn"].append(target)
        targets["torchvision"].append(dict(target, masks=(target["masks"] > 0).to(torch.uint8)))
    return images, targets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, images, targets, seed):
    torch.manual_seed(seed)
    model.train()
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


@torch.no_grad()
def infer(model, images):
    model.eval()
    return model(images)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def peak_rss_rise(fn) -> float:
    """MiB by which fn raises the process's peak resident memory (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    fn()
    return (_status("VmHWM") - before) / 1024


def _status(key) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_cuda_peak(fn, device) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def projection_case(size=2048, cells=40, proposals=128, parts=3):
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, parts, (cells, size // 64, size // 64), generator=g).to(torch.uint8)
    masks = masks.repeat_interleave(64, 1).repeat_interleave(64, 2)
    lo = torch.rand(proposals, 2, generator=g) * size * 0.8
    boxes = torch.cat([lo, lo + 20 + torch.rand(proposals, 2, generator=g) * size * 0.2], 1)
    idxs = torch.randint(0, cells, (proposals,), generator=g)
    return masks, boxes, idxs


def paste_case(size=2048, cells=400, M=28):
    """Many predicted cells of 30-90 px on a large field, as a whole-slide crop gives."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(cells, 3, M, M, generator=g).softmax(dim=1)
    lo = torch.rand(cells, 2, generator=g) * (size - 100)
    boxes = torch.cat([lo, lo + 30 + torch.rand(cells, 2, generator=g) * 60], 1)
    return probs, boxes, (size, size)


def paste_times(repeats: int) -> dict[str, float]:
    """Median ms to paste the cells of :func:`paste_case`: ours (both geometries) and torchvision's binary paste."""
    probs, boxes, size = paste_case()
    fns = {"cellrcnn": lambda: cellrcnn.paste_parts_in_image(probs, boxes, size),
           "cellrcnn (torchvision geometry)": lambda: cellrcnn.paste_parts_in_image(probs, boxes, size, aligned=False),
           "torchvision": lambda: paste_masks_in_image(1 - probs[:, :1], boxes, size)}
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t, _ = timed(fn, torch.device("cpu"))
            if r:
                times[name].append(t * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def child(args) -> None:
    """One memory measurement in a fresh process; prints MiB as JSON."""
    which, mode = args.child.split(":")
    if mode == "projection":
        masks, boxes, idxs = projection_case()
        binary = (masks > 0).to(torch.uint8)
        fn = {"cellrcnn": lambda: cellrcnn.project_parts_on_boxes(masks, boxes, idxs, 3, 28),
              "torchvision": lambda: project_masks_on_boxes(binary, boxes, idxs, 28)}[which]
        fn()
        print(json.dumps({"mib": peak_rss_rise(fn)}))
        return
    model = make_models(args)[which]
    images, targets = make_batch(args)
    # lr 0: weights stay as built, identical for both models, so both sample the same RoIs.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    fn = {"train": lambda: train_step(model, optimizer, images[which], targets[which], 0),
          "infer": lambda: infer(model, images[which])}[mode]
    fn()
    fn()  # momentum buffers and allocator caches exist from here on
    print(json.dumps({"mib": peak_rss_rise(fn)}))


def cpu_peaks(args, mode):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    peaks = {"cellrcnn": [], "torchvision": []}
    for _ in range(args.memory_repeats):
        for name in peaks:
            cmd = [sys.executable, __file__, "--child", f"{name}:{mode}", "--backbone", args.backbone,
                   "--size", str(args.size), "--batch", str(args.batch), "--cells", str(args.cells), "--device", "cpu"]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            peaks[name].append(json.loads(out.strip().splitlines()[-1])["mib"])
    return {k: statistics.median(v) for k, v in peaks.items()}


def report(title, ours, stock, unit, goal):
    ratio = ours / stock
    verdict = "meets" if ratio <= goal else "MISSES"
    print(f"{title:<22} cellrcnn {ours:9.1f} {unit}   torchvision {stock:9.1f} {unit}   "
          f"ratio {ratio:5.3f}  (goal <= {goal:.2f}: {verdict})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50_fpn", choices=cellrcnn.BACKBONES)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default: %(default)s)")
    parser.add_argument("--cells", type=int, default=3, help="at most this many cells per image")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (default: %(default)s)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="CPU memory runs per model")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else ("cpu" if args.device == "auto" else args.device))
    if args.child:
        child(args)
        return

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.type == "cuda" else ""))
    print(f"setting: {args.backbone}, {args.batch} images of {args.size} px, up to {args.cells} cells each, "
          f"{args.repeats} interleaved repeats")
    models = make_models(args)
    images, targets = make_batch(args)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    times = {"train": {k: [] for k in models}, "infer": {k: [] for k in models}}
    detections = {}
    for r in range(args.repeats + 2):  # the first two rounds warm up
        sync_weights(models)
        for name, model in models.items():
            t_infer, out = timed(lambda: infer(model, images[name]), args.device)
            t_train, _ = timed(lambda: train_step(model, optimizers[name], images[name], targets[name], r), args.device)
            if r >= 2:
                times["train"][name].append(t_train)
                times["infer"][name].append(t_infer)
            detections[name] = sum(len(o["boxes"]) for o in out)
    med = {mode: {k: statistics.median(v) * 1000 for k, v in d.items()} for mode, d in times.items()}
    print(f"detections in the last inference: cellrcnn {detections['cellrcnn']}, torchvision {detections['torchvision']}")
    report("training step", med["train"]["cellrcnn"], med["train"]["torchvision"], "ms", 1.05)
    report("inference forward", med["infer"]["cellrcnn"], med["infer"]["torchvision"], "ms", 1.10)
    for mode, goal in (("train", 1.10), ("infer", 1.10)):
        if args.device.type == "cuda":
            peaks = {}
            sync_weights(models)
            for name, model in models.items():
                fn = {"train": lambda: train_step(model, optimizers[name], images[name], targets[name], 0),
                      "infer": lambda: infer(model, images[name])}[mode]
                peaks[name] = measure_cuda_peak(fn, args.device)
        else:
            peaks = cpu_peaks(args, mode)
        report(f"peak memory ({mode})", peaks["cellrcnn"], peaks["torchvision"], "MiB", goal)
    if args.device.type == "cpu":
        peaks = cpu_peaks(args, "projection")
        report("projection memory", peaks["cellrcnn"], peaks["torchvision"], "MiB", 1.10)
    paste = paste_times(args.repeats)
    print(f"paste of 400 cells into 2048 x 2048 (CPU): torchvision geometry "
          f"{paste['cellrcnn (torchvision geometry)']:.1f} ms")
    report("paste, 400 cells", paste["cellrcnn"], paste["torchvision"], "ms", 1.10)


if __name__ == "__main__":
    main()
