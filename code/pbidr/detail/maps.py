"""Pictures of the texel fit's maps: D (diverging grey) beside the albedo, in the chart's layout."""

from __future__ import annotations

import numpy as np

from pbidr.utils.images import contact_sheet


def displacement_picture(d: np.ndarray, span: float | None = None) -> np.ndarray:
    """D (H, W) as uint8 RGB: mid grey is 0, white +span, black -span (default: the 99th percentile of |D|)."""
    d = np.asarray(d, dtype=np.float64)
    if span is None:
        span = float(np.percentile(np.abs(d), 99)) if d.size else 1.0
    g = np.clip(0.5 + 0.5 * d / max(span, 1e-12), 0.0, 1.0)
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def maps_sheet(field, size: int = 256) -> np.ndarray:
    """Contact sheet of a ``MapSDF``'s D and albedo maps, each ``size`` pixels tall."""
    import cv2
    import torch

    with torch.no_grad():
        d = field.displacement().detach().cpu().numpy()
        albedo = field.albedo.detach().cpu().numpy()
    span = float(np.percentile(np.abs(d), 99)) if d.size else 0.0
    cells = [displacement_picture(d, span), (np.clip(albedo, 0, 1) * 255 + 0.5).astype(np.uint8)]
    cells = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in cells]
    return contact_sheet([cells], [[f"displacement (+-{span:.3g})", "albedo"]])
