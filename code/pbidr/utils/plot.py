"""Line charts as RGB images (OpenCV drawing, no plotting dependency): the benchmarks' curves."""

from __future__ import annotations

import math

import numpy as np

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]  # RGB


def line_chart(lines: dict[str, list[tuple[float, float]]], xlabel: str, refs: list[tuple[float, str]] = (),
               log_x: bool = False, size: tuple[int, int] = (900, 520), legend_width: int = 230) -> np.ndarray:
    """One polyline with markers per entry of ``lines`` (label -> [(x, y), ...]), horizontal reference
    lines ``refs`` [(y, label)], axis ticks, ``xlabel`` under the plot (it should name y too); x on a
    log10 axis when ``log_x`` (x must then be > 0). Returns an RGB uint8 image (H, W, 3)."""
    import cv2

    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    lines = {k: [(float(x), float(y)) for x, y in v if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)]
             for k, v in lines.items()}
    lines = {k: v for k, v in lines.items() if v}
    if not lines:
        return img
    fx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    xs = [fx(x) for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts] + [y for y, _ in refs]
    if log_x:
        x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    else:
        x0, x1 = min(0.0, min(xs)), max(xs) * 1.05 if max(xs) > 0 else 1.0
    if x1 <= x0:
        x1 = x0 + 1.0
    y0, y1 = min(ys) - 0.05, max(ys) + 0.05
    left, right, top, bottom = 70, legend_width, 20, 50

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                int(top + (y1 - y) / (y1 - y0) * (h - top - bottom)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, px(x0, y0), px(x1, y1), (0, 0, 0), 1)
    for ref, label in refs:
        cv2.line(img, px(x0, ref), px(x1, ref), (160, 160, 160), 1, cv2.LINE_AA)
        cv2.putText(img, label, (px(x0, ref)[0] + 4, px(x0, ref)[1] - 4), font, 0.4, (90, 90, 90), 1)
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        cv2.putText(img, f"{y:.2f}", (8, px(x0, y)[1] + 4), font, 0.4, (0, 0, 0), 1)
    if log_x:
        ticks = [(float(e), f"{10.0 ** e:g}") for e in range(int(x0), int(x1) + 1)]
    else:
        ticks = [(x, f"{x:.0f}" if x1 > 20 else f"{x:.1f}") for x in (x0 + (x1 - x0) * i / 5 for i in range(6))]
    for x, label in ticks:
        cv2.line(img, px(x, y0), (px(x, y0)[0], px(x, y0)[1] - 5), (0, 0, 0), 1)
        cv2.putText(img, label, (px(x, y0)[0] - 10, h - 30), font, 0.4, (0, 0, 0), 1)
    cv2.putText(img, xlabel, (left, h - 10), font, 0.45, (0, 0, 0), 1)
    for i, (label, pts) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = [px(fx(x), y) for x, y in pts]
        for a, b in zip(path, path[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in path:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        cv2.putText(img, label, (w - right + 10, top + 18 * (i + 1)), font, 0.45, colour, 1, cv2.LINE_AA)
    return img
