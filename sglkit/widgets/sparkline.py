"""A small line chart of recent values as inline SVG in a stock ``widgets.HTML`` (dashboard -> Sparkline).

No plotting dependency: :func:`sparkline_svg` turns a list of numbers into an SVG string and
:class:`Sparkline` keeps a bounded history and redraws itself on every :meth:`Sparkline.push`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import ipywidgets as widgets

__all__ = ["Sparkline", "sparkline_svg"]


def sparkline_svg(values: Sequence[float], width: int = 210, height: int = 44, color: str = "#1f77b4") -> str:
    """Values (oldest first) -> an inline SVG: the line, a faint area under it, and a dot on the last value.

    The y axis runs from 0 to the largest value (so a flat zero line sits at the bottom); fewer than two
    values draw a baseline only.
    """
    pad = 3
    inner_w, inner_h = width - 2 * pad, height - 2 * pad
    baseline = height - pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="sglkit-sparkline">',
        f'<line x1="{pad}" y1="{baseline}" x2="{width - pad}" y2="{baseline}" stroke="#ccc" stroke-width="1"/>',
    ]
    points = [max(0.0, float(v)) for v in values]
    if len(points) >= 2:
        top = max(points) or 1.0
        step = inner_w / (len(points) - 1)
        xy = [(pad + i * step, baseline - inner_h * v / top) for i, v in enumerate(points)]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        area = f"{pad},{baseline} {line} {xy[-1][0]:.1f},{baseline}"
        parts += [
            f'<polygon points="{area}" fill="{color}" fill-opacity="0.15" stroke="none"/>',
            f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>',
            f'<circle cx="{xy[-1][0]:.1f}" cy="{xy[-1][1]:.1f}" r="2.5" fill="{color}"/>',
        ]
    parts.append("</svg>")
    return "".join(parts)


class Sparkline(widgets.HTML):
    """An HTML widget that charts the last ``size`` values pushed into it."""

    def __init__(
        self, size: int = 60, width: int = 210, height: int = 44, color: str = "#1f77b4", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.history: deque[float] = deque(maxlen=size)
        self._shape = (width, height, color)
        self.redraw()

    def push(self, value: float) -> None:
        """Append one value (the oldest drops out past ``size``) and redraw."""
        self.history.append(float(value))
        self.redraw()

    def clear(self) -> None:
        """Forget the history."""
        self.history.clear()
        self.redraw()

    def redraw(self) -> None:
        """Render the current history into ``value``."""
        width, height, color = self._shape
        self.value = sparkline_svg(list(self.history), width, height, color)
