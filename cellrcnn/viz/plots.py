"""Figures for the notebooks: one call each, one colour per part everywhere."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .style import part_colour

__all__ = ["show_samples", "plot_part_fractions", "plot_history", "LivePlot", "plot_sweep", "show_predictions",
           "show_whole_cells", "plot_nc_ratio"]


#: Size of the losses-and-Dice figure (:func:`plot_history`), in inches.
HISTORY_FIGSIZE = (11, 3.8)


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _parts_rgba(parts: np.ndarray, part_names: tuple[str, ...], alpha: float = 0.45) -> np.ndarray:
    rgba = np.zeros((*parts.shape, 4))
    for k, name in enumerate(part_names[1:], start=1):
        rgba[parts == k] = (*part_colour(name, k, 1.0), alpha)
    return rgba


def _legend(fig, part_names, cell_label="whole-cell box"):
    from matplotlib.patches import Patch
    handles = [Patch(color=part_colour(n, k, 1.0), label=n) for k, n in enumerate(part_names) if k > 0]
    handles.append(Patch(facecolor="none", edgecolor=part_colour("cell", 0, 1.0), label=cell_label))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)


def _image_grid(count: int):
    """A figure of ``count`` image panels, three per row, without axes."""
    cols = min(count, 3)
    rows = int(np.ceil(count / cols))
    fig, axes = _plt().subplots(rows, cols, figsize=(4 * cols, 4 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def show_samples(dataset, part_names: tuple[str, ...] = ("background", "cytoplasm", "nucleus"), count: int = 6):
    """Images of a dataset with their parts overlaid and the whole-cell boxes the model learns."""
    from matplotlib.patches import Rectangle
    count = min(count, len(dataset))
    fig, axes = _image_grid(count)
    for i, ax in zip(range(count), axes.ravel()):
        image, target = dataset[i]
        masks = target["masks"].numpy()
        parts = masks.max(axis=0) if len(masks) else np.zeros(image.shape[1:], np.uint8)
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.imshow(_parts_rgba(parts, part_names))
        for x0, y0, x1, y1 in target["boxes"].tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                   edgecolor=part_colour("cell", 0, 1.0)))
        ax.set_title(f"{dataset.pairs[i].image.name}: {len(masks)} cell(s)", fontsize=10)
    _legend(fig, part_names)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_part_fractions(table: pd.DataFrame, part_names: tuple[str, ...]):
    """Histogram of each part's share of the image, from :func:`cellrcnn.check_folder`'s table."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in enumerate(part_names[1:], start=1):
        ax.hist(table[f"{name}_fraction"] * 100, bins=20, alpha=0.6, color=part_colour(name, k, 1.0), label=name)
    ax.set(xlabel="share of the image's pixels (%)", ylabel="images", title="Part areas per image")
    ax.legend()
    fig.tight_layout()
    return fig


def dice_columns(columns) -> list[str]:
    """Of ``columns`` (names), each part's Dice, then the whole cell's; not their mean, ``part_dice``."""
    parts = [c for c in columns if c.endswith("_dice") and c not in ("part_dice", "cell_dice")]
    return parts + (["cell_dice"] if "cell_dice" in columns else [])


def plot_history(history: pd.DataFrame, axes=None):
    """Losses and validation Dice by epoch (the same as a run's curves.png)."""
    plt = _plt()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=HISTORY_FIGSIZE)
    else:
        fig = axes[0].figure
        for ax in axes:
            ax.clear()
    left, right = axes
    left.plot(history["epoch"], history["train_loss"], "-o", ms=3, label="training loss")
    if "val_loss" in history:
        left.plot(history["epoch"], history["val_loss"], "--o", ms=3, label="validation loss")
    left.set(xlabel="epoch", ylabel="loss", title="Losses")
    left.legend()
    for k, column in enumerate(dice_columns(history.columns), start=1):
        name = column[: -len("_dice")]
        right.plot(history["epoch"], history[column], "-o", ms=3, color=part_colour(name, k, 1.0),
                   label="whole cell" if name == "cell" else name)
    right.set(xlabel="epoch", ylabel="Dice (1 = perfect)", ylim=(0, 1), title="Validation Dice")
    if right.get_legend_handles_labels()[0]:  # no validation yet: nothing to label
        right.legend()
    fig.tight_layout()
    return fig


class LivePlot:
    """A trainer hook that redraws the losses and Dice after every epoch in a notebook:
    ``cellrcnn.fit(config, data, run, hooks=[LivePlot()])``."""

    def __init__(self) -> None:
        self.fig = None

    def after_epoch(self, trainer) -> None:
        from IPython.display import clear_output, display
        plt = _plt()
        if self.fig is None:
            self.fig, self.axes = plt.subplots(1, 2, figsize=HISTORY_FIGSIZE)
        plot_history(pd.DataFrame(trainer.history), self.axes)
        clear_output(wait=True)
        display(self.fig)
        plt.close(self.fig)


def plot_sweep(results: pd.DataFrame):
    """Each part's and the whole cell's best validation Dice against the loss weight (from ``cellrcnn.sweep``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    part = results["part"].iloc[0]
    for k, column in enumerate(dice_columns(results.columns), start=1):
        name = column[: -len("_dice")]
        ax.plot(results["weight"], results[column], "-o", color=part_colour(name, k, 1.0),
                label="whole cell" if name == "cell" else name)
    ax.set(xlabel=f"{part} weight in the loss", ylabel="best validation Dice", ylim=(0, 1),
           title=f"What the {part} weight does")
    ax.set_xticks(results["weight"])
    ax.legend()
    fig.tight_layout()
    return fig


def show_predictions(predictions: list, part_names: tuple[str, ...] = ("background", "cytoplasm", "nucleus"),
                     count: int = 6):
    """Predicted parts over the images, with cell outlines."""
    from skimage.segmentation import find_boundaries
    count = min(count, len(predictions))
    fig, axes = _image_grid(count)
    for p, ax in zip(predictions[:count], axes.ravel()):
        ax.imshow(p.image)
        ax.imshow(_parts_rgba(p.parts, part_names))
        outline = np.zeros((*p.cells.shape, 4))
        outline[find_boundaries(p.cells, mode="inner")] = (*part_colour("cell", 0, 1.0), 1.0)
        ax.imshow(outline)
        ax.set_title(f"{p.name}: {int(p.cells.max())} cell(s)", fontsize=10)
    _legend(fig, part_names, cell_label="cell outline")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def show_whole_cells(predictions: list, part_names: tuple[str, ...] = ("background", "cytoplasm", "nucleus"),
                     count: int = 3):
    """Each cell's whole outline over the image, one colour per cell, with its nucleus dashed: where cells
    overlap, both outlines show (:meth:`Prediction.cell_masks`), as in the ROI set, GeoJSON and COCO files."""
    from skimage.measure import find_contours
    count = min(count, len(predictions))
    fig, axes = _image_grid(count)
    colours = _plt().get_cmap("tab10")
    nucleus = part_names.index("nucleus") if "nucleus" in part_names else None
    for p, ax in zip(predictions[:count], axes.ravel()):
        if p.image is not None:
            ax.imshow(np.clip(p.image, 0, 1))
        overlap = np.zeros(p.cells.shape, dtype=np.int32)
        cells = p.cell_masks()
        for k, cell in enumerate(cells):
            overlap[cell.box] += cell.mask
            for kind, mask, style in (("cell", cell.mask, "-"), ("nucleus", cell.parts == nucleus, "--")):
                for contour in find_contours(np.pad(mask, 1).astype(np.uint8), 0.5):
                    ax.plot(contour[:, 1] - 1 + cell.x0, contour[:, 0] - 1 + cell.y0, style, color=colours(k % 10),
                            linewidth=1.2 if kind == "cell" else 0.9)
        shared = int((overlap > 1).sum())
        ax.set_title(f"{p.name}: {len(cells)} cell(s), {shared} px in two or more", fontsize=10)
    fig.tight_layout()
    return fig


def plot_nc_ratio(table: pd.DataFrame):
    """Histogram of the nucleus-to-cytoplasm area ratio, one colour per cell class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, group in table.dropna(subset=["nc_ratio"]).groupby("class"):
        ax.hist(group["nc_ratio"], bins=15, alpha=0.6, label=f"{name} ({len(group)} cells)")
    ax.set(xlabel="nucleus area / cytoplasm area", ylabel="cells", title="Nucleus-to-cytoplasm ratio by class")
    ax.legend()
    fig.tight_layout()
    return fig
