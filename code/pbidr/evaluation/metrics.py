"""Image metrics for eval, and JSON that survives them (inf is not JSON)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pbidr.errors import PbidrError


def _unit(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return img.astype(np.float64)


def masked_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB of ``pred`` against ``gt`` (H, W, 3) over the pixels where ``mask`` (H, W) is true.

    Images are floats in [0, 1] (uint8 is divided by 255). MSE is the mean over masked pixels and
    channels; PSNR = 10 log10(1 / MSE). Identical images give ``math.inf`` (write it with
    :func:`json_safe`). An empty mask raises PbidrError: there is nothing to score.
    """
    pred, gt = _unit(pred), _unit(gt)
    mask = np.asarray(mask, dtype=bool)
    if pred.shape != gt.shape or pred.shape[:2] != mask.shape:
        raise PbidrError(f"PSNR: shapes differ (pred {pred.shape}, gt {gt.shape}, mask {mask.shape})")
    if not mask.any():
        raise PbidrError("PSNR: the mask is empty, there are no pixels to score")
    mse = float(np.mean((pred[mask] - gt[mask]) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def json_safe(x: Any) -> Any:
    """``x`` with every non-finite float replaced by the string "inf", "-inf" or "nan", through
    dicts, lists and tuples; numpy scalars and arrays become Python numbers and lists."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x
