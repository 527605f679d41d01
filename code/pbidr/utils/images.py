"""Image files and contact sheets (PNG), without torchvision."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pbidr.errors import PbidrError
from pbidr.utils.atomic import atomic_path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) or grey (H, W) uint8/uint16 image atomically."""
    path = Path(path)
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise PbidrError(f"{path}: could not write the image")
    return path


def read_image(path: str | Path, grey: bool = False) -> np.ndarray:
    """Read an image as RGB (H, W, 3) uint8 (or grey (H, W)); one-line error when unreadable."""
    path = Path(path)
    flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag) if path.is_file() else None
    if img is None:
        raise PbidrError(f"{path}: missing or not a readable image")
    return img if grey else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8, grey or RGB -> RGB uint8."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def label(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``image`` with ``text`` in its top-left corner (scaled to the image)."""
    img = to_uint8(image).copy()
    scale = max(0.35, img.shape[0] / 600.0)
    thick = max(1, int(round(scale * 1.5)))
    org = (int(6 * scale), int(22 * scale))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return img


def contact_sheet(
    rows: list[list[np.ndarray]], labels: list[list[str]] | None = None, cell: int | None = None, pad: int = 4
) -> np.ndarray:
    """Grid of images (RGB uint8 or float) resized to square-ish cells of height ``cell``; grey padding."""
    images = [to_uint8(im) for row in rows for im in row]
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    cell = cell or max(im.shape[0] for im in images)
    n_cols = max(len(r) for r in rows)
    widths = []
    cells = []
    for r, row in enumerate(rows):
        out_row = []
        for c, im in enumerate(row):
            im = to_uint8(im)
            w = max(1, int(round(im.shape[1] * cell / im.shape[0])))
            im = cv2.resize(im, (w, cell), interpolation=cv2.INTER_AREA if im.shape[0] > cell else cv2.INTER_LINEAR)
            if labels is not None and r < len(labels) and c < len(labels[r]) and labels[r][c]:
                im = label(im, labels[r][c])
            out_row.append(im)
            widths.append(w)
        cells.append(out_row)
    cw = max(widths)
    sheet = np.full((len(rows) * (cell + pad) + pad, n_cols * (cw + pad) + pad, 3), 64, np.uint8)
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            y, x = pad + r * (cell + pad), pad + c * (cw + pad)
            sheet[y : y + cell, x : x + im.shape[1]] = im
    return sheet
