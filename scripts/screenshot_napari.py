#!/usr/bin/env python
"""Save a screenshot of napari with cellrcnn's Predict widget and the layers it adds (docs/napari.png).

    python scripts/screenshot_napari.py --model runs/demo/run/best.pt --image data/sample/images/sample_02.png \\
        --out docs/napari.png

It opens the image in a napari viewer, docks the Predict widget, predicts as a
user clicking "Predict" would, and saves the whole window. ``make demo`` writes
the model used by default. Needs ``pip install 'cellrcnn[napari]'``.

napari draws its canvas with OpenGL. On a machine without a display (CI, a
server: QT_QPA_PLATFORM=offscreen) there is none; the script then says so and
paints the canvas area itself from the layers' data, in napari's own layer
colours (``--no-gl`` forces this).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/run/best.pt"),
                        help="checkpoint, run folder or package to predict with (make demo writes the default)")
    parser.add_argument("--image", type=Path, default=Path("data/sample/images/sample_02.png"), help="image to open")
    parser.add_argument("--out", type=Path, default=Path("docs/napari.png"), help="PNG to write")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 760), metavar=("WIDTH", "HEIGHT"),
                        help="window size in pixels")
    parser.add_argument("--no-gl", action="store_true", help="paint the canvas from the layers (no OpenGL)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    for path, what in ((args.model, "model"), (args.image, "image")):
        if not path.exists():
            parser.error(f"{path}: {what} not found" + (" (run `make demo` first, or give --model)"
                                                        if what == "model" else ""))
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    return args


def has_opengl() -> bool:
    from napari._vispy.utils.gl import get_gl_extensions
    try:
        return bool(get_gl_extensions())
    except Exception:  # no context: PyOpenGL fails in several ways
        return False


def without_opengl() -> None:
    """Let napari build its layers without an OpenGL context (the two queries it makes; as napari's tests do)."""
    from napari._vispy.layers import base, image, labels

    image.get_gl_extensions = lambda: ""
    for module in (base, image, labels):
        module.get_max_texture_sizes = lambda: (8192, 2048)


def paint_canvas(viewer, shot: np.ndarray) -> np.ndarray:
    """The window screenshot with its canvas area painted from the visible layers, bottom to top."""
    canvas = viewer.window._qt_viewer.canvas.native
    corner = canvas.mapTo(viewer.window._qt_window, canvas.rect().topLeft())
    ratio = shot.shape[1] / viewer.window._qt_window.width()
    x0, y0 = int(corner.x() * ratio), int(corner.y() * ratio)
    w, h = int(canvas.width() * ratio), int(canvas.height() * ratio)
    base = viewer.layers[0].data
    rgb = np.zeros((*base.shape[:2], 3))
    for layer in viewer.layers:
        if not layer.visible:
            continue
        if layer._type_string == "image":
            data = np.asarray(layer.data, float)
            low, high = layer.contrast_limits
            rgb = np.clip((data[..., :3] if data.ndim == 3 else data[..., None]) - low, 0, None) / (high - low)
        else:
            labels = np.asarray(layer.data)
            if layer.contour:
                from skimage.segmentation import find_boundaries
                labels = np.where(find_boundaries(labels, mode="thick"), labels, 0)
            colours = layer.colormap.map(labels.ravel()).reshape(*labels.shape, 4)
            alpha = colours[..., 3:] * layer.opacity
            rgb = rgb * (1 - alpha) + colours[..., :3] * alpha
    # fit the image into the canvas area, as napari's "reset view" does
    from skimage.transform import resize

    scale = 0.95 * min(h / rgb.shape[0], w / rgb.shape[1])
    shown = resize(rgb, (int(rgb.shape[0] * scale), int(rgb.shape[1] * scale)), order=0)
    area = np.zeros((h, w, 3))
    area[:] = np.array([38, 41, 48]) / 255  # napari's dark canvas background
    top, left = (h - shown.shape[0]) // 2, (w - shown.shape[1]) // 2
    area[top:top + shown.shape[0], left:left + shown.shape[1]] = shown
    out = shot.copy()
    out[y0:y0 + h, x0:x0 + w, :3] = (np.clip(area, 0, 1) * 255).astype(np.uint8)
    out[y0:y0 + h, x0:x0 + w, 3] = 255
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imread, imsave

    from cellrcnn.utils.files import atomic_write

    viewer = napari.Viewer(show=False)
    gl = not args.no_gl and has_opengl()
    if not gl:
        print("no OpenGL here: the canvas area is painted from the layers' data", file=sys.stderr)
        without_opengl()
    viewer.window._qt_window.resize(*args.size)
    image = imread(args.image)
    viewer.add_image(image, name=args.image.stem, rgb=image.ndim == 3 and image.shape[-1] in (3, 4))
    _, widget = viewer.window.add_plugin_dock_widget("cellrcnn", "Predict cells")
    widget.model_path.value = args.model
    widget.run()
    while not widget.run_button.enabled:  # the thread worker; the event loop keeps the viewer alive meanwhile
        QApplication.processEvents()
        time.sleep(0.05)
    if widget.prediction is None:
        print(f"prediction failed: {widget.status.value}", file=sys.stderr)
        return 1
    viewer.reset_view()
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    if not gl:
        shot = paint_canvas(viewer, shot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: imsave(tmp, shot, check_contrast=False),
                 overwrite=args.overwrite)
    print(f"wrote {args.out} ({shot.shape[1]}x{shot.shape[0]}): {widget.status.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.exit(main())
