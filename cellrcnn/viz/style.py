"""One colour per cell part, used the same everywhere: overlays, plots, exported PNGs."""

from __future__ import annotations

__all__ = ["PART_COLOURS", "part_colour"]

#: RGB colours (0-255) by part name; parts not listed fall back to a fixed cycle.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (128, 128, 128),
    "cytoplasm": (0, 190, 255),   # cyan-blue
    "nucleus": (255, 60, 160),    # magenta
    "cell": (255, 215, 0),        # gold: whole-cell outlines
}
_CYCLE = [(120, 220, 60), (255, 140, 0), (150, 90, 255), (0, 200, 140)]


def part_colour(name: str, index: int = 0, scale: float = 255.0) -> tuple[float, float, float]:
    """The colour of part ``name`` (``scale=1`` for matplotlib)."""
    rgb = PART_COLOURS.get(name, _CYCLE[index % len(_CYCLE)])
    return tuple(c * scale / 255.0 for c in rgb)
