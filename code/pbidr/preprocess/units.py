"""The length unit of a scan: declared with ``pbidr preprocess --units``, or checked against a face's size.

The world frame is the input mesh's frame and units (DESIGN.md), so every eval number is in those
units; meta.json records which they are so that eval can print millimetres.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
# A head or face scan, chin to crown or forehead, is about 100-300 mm tall.
FACE_HEIGHT_MM = (100.0, 300.0)


def face_height(vertices: np.ndarray, up: tuple[float, float, float]) -> float:
    """Extent of the mesh along the (normalised) up direction, in the mesh's units."""
    u = np.asarray(up, dtype=np.float64)
    u = u / np.linalg.norm(u)
    h = np.asarray(vertices, dtype=np.float64) @ u
    return float(h.max() - h.min()) if len(h) else 0.0


def likely_unit(height: float) -> str | None:
    """The unit in which a face of ``height`` units is 100-300 mm tall (None: none of mm, cm, m)."""
    lo, hi = FACE_HEIGHT_MM
    for unit, mm in MM_PER_UNIT.items():
        if lo <= height * mm <= hi:
            return unit
    return None


def units_warning(height: float) -> str | None:
    """One line when a face ``height`` units tall does not look like millimetres (the default)."""
    lo, hi = FACE_HEIGHT_MM
    if lo <= height <= hi:
        return None
    unit = likely_unit(height)
    guess = (f"it looks like {'metres' if unit == 'm' else 'centimetres'}: pass --units {unit}" if unit
             else "pass --units mm|cm|m if this is right, or rescale the mesh")
    return (f"the face is {height:.4g} units tall, not the {lo:.0f}-{hi:.0f} of a face in millimetres; {guess} "
            "(eval prints displacements in mm from it)")


def scan_units(scan_dir: str | Path) -> tuple[str, float]:
    """(unit, millimetres per unit) recorded in a scan's meta.json; millimetres when it records none."""
    try:
        meta = json.loads((Path(scan_dir) / "meta.json").read_text())
        unit = meta.get("units", {}).get("unit", "mm")
    except (OSError, ValueError, AttributeError):
        unit = "mm"
    return (unit, MM_PER_UNIT[unit]) if unit in MM_PER_UNIT else ("mm", 1.0)
