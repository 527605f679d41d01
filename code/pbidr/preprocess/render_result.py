"""What a preprocess renderer returns for one view (the Embree renderer and the PyTorch3D backend alike)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RenderResult:
    """One view. rgb (H, W, 3) uint8 (white background); mask (H, W) bool coverage;
    face (H, W) int64 first-hit triangle or -1; depth (H, W) ray distance (inf on background)."""

    rgb: np.ndarray
    mask: np.ndarray
    face: np.ndarray
    depth: np.ndarray
