"""Per-vertex quantities baked into UV maps (displacement, normals), read back, and saved as 16 bit.

Texel convention (OBJ, as the texture): texel (row i, col j) has its centre at
``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``; v = 0 is the image bottom.

Rasterising is one vectorised Embree call: the UV layout becomes a flat mesh (x = u, y = v, z = 0)
and one ray per texel looks straight down on it, giving the triangle and barycentrics of every
texel at once.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from pbidr.errors import PbidrError
from pbidr.geometry.raycast import MeshRayCaster
from pbidr.io.mesh import TexturedMesh
from pbidr.utils.atomic import atomic_path


def texel_uv(size: tuple[int, int]) -> np.ndarray:
    """UV (H*W, 2) of every texel centre, row-major."""
    h, w = size
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([(cols.ravel() + 0.5) / w, 1.0 - (rows.ravel() + 0.5) / h], axis=1)


def locate_uv(mesh: TexturedMesh, uv: np.ndarray, snap: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which UV triangle of ``mesh`` holds each point ``uv`` (N, 2): face (N,) int64 (-1 outside the
    chart), barycentrics (N, 3) in the face's corner order, and hit (N,) bool. A point outside the
    chart by at most ``snap`` (UV units) gets the closest point of the chart: a vertex exactly on
    the chart's border can miss every triangle in float32 ray casting."""
    if mesh.uv is None or mesh.face_uv is None:
        raise PbidrError("UV map: the mesh has no texture coordinates")
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    flat = np.concatenate([np.asarray(mesh.uv, dtype=np.float64), np.zeros((len(mesh.uv), 1))], axis=1)
    caster = MeshRayCaster(flat, mesh.face_uv)
    origins = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
    directions = np.broadcast_to(np.array([0.0, 0.0, -1.0]), origins.shape)
    hits = caster.intersect(origins, directions)
    # Embree's barycentrics follow the UV triangle's corner order, which is the face's order.
    face, bary = hits.face.copy(), hits.bary.copy()
    miss = face < 0
    if snap > 0 and miss.any():
        from pbidr.geometry.coarse_distance import CoarseDistance

        near = CoarseDistance(flat, mesh.face_uv).closest(origins[miss] * [1.0, 1.0, 0.0])
        close = np.abs(near.distance) <= snap
        idx = np.flatnonzero(miss)[close]
        face[idx], bary[idx] = near.face[close], near.bary[close]
    return face, bary, face >= 0


def rasterize_uv(
    mesh: TexturedMesh, values: np.ndarray, size: tuple[int, int], dilate: int = 4, per_corner: bool = False,
    hits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bake per-vertex ``values`` (V, C) or (V,) into a UV map of ``size`` (H, W).

    A texel inside a UV triangle gets the barycentric blend of the triangle's vertex values (values
    indexed through ``mesh.faces``, UV corners through ``mesh.face_uv``); with ``per_corner`` the
    values are per face corner, (F, 3, C) or (F, 3) (quantities split at seams, such as tangents).
    Uncovered texels within ``dilate`` pixels of a covered one copy the nearest covered value
    (padding against seam bleeding under bilinear reads); the rest are 0. Returns map (H, W, C)
    float32 and coverage (H, W) bool (covered by a triangle, before dilation). Where UV triangles
    overlap, one of them wins. ``hits``: ``locate_uv(mesh, texel_uv(size))`` when the caller has it
    (one ray cast for several maps of one mesh).
    """
    if mesh.uv is None or mesh.face_uv is None:
        raise PbidrError("UV map: the mesh has no texture coordinates")
    values = np.asarray(values, dtype=np.float64)
    if per_corner:
        if values.ndim == 2:
            values = values[..., None]
        if values.shape[:2] != (len(mesh.faces), 3):
            raise PbidrError(f"UV map: per-corner values {values.shape} for {len(mesh.faces)} faces")
    else:
        if values.ndim == 1:
            values = values[:, None]
        if len(values) != len(mesh.vertices):
            raise PbidrError(f"UV map: {len(values)} values for {len(mesh.vertices)} vertices")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise PbidrError(f"UV map: size {size} must be positive")
    face, bary, hit = hits if hits is not None else locate_uv(mesh, texel_uv((h, w)))
    if len(face) != h * w:
        raise PbidrError(f"UV map: {len(face)} texel hits for a {h} x {w} map")
    face = np.maximum(face, 0)
    corner_values = values[face] if per_corner else values[mesh.faces[face]]
    out = np.einsum("nk,nkc->nc", bary, corner_values)
    out[~hit] = 0.0
    out = out.reshape(h, w, -1)
    coverage = hit.reshape(h, w)
    if dilate > 0:
        out = dilate_uv_map(out, coverage, dilate)
    return out.astype(np.float32), coverage


def dilate_uv_map(uv_map: np.ndarray, coverage: np.ndarray, dilate: int = 4) -> np.ndarray:
    """``uv_map`` (H, W, C) with each uncovered texel within ``dilate`` pixels of a covered one set to
    the nearest covered value (a copy; texels farther away are left as they are)."""
    out = np.array(uv_map, copy=True)
    if dilate > 0 and coverage.any() and not coverage.all():
        dist, (ii, jj) = ndimage.distance_transform_edt(~coverage, return_indices=True)
        pad = (~coverage) & (dist <= dilate)
        out[pad] = out[ii[pad], jj[pad]]
    return out


def sample_uv_map(uv_map: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear read of ``uv_map`` (H, W) or (H, W, C) at ``uv`` (N, 2), clamped at the borders.
    Returns (N,) or (N, C) float64, in the texel convention of :func:`rasterize_uv`."""
    m = np.asarray(uv_map)
    h, w = m.shape[:2]
    uv = np.asarray(uv, dtype=np.float64)
    x = np.clip(uv[:, 0] * w - 0.5, 0.0, w - 1.0)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    if m.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    m = m.astype(np.float64, copy=False)
    top = m[y0, x0] * (1 - fx) + m[y0, x1] * fx
    bottom = m[y1, x0] * (1 - fx) + m[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def write_png16(path: str | Path, image: np.ndarray, lo: float | None = None, hi: float | None = None) -> dict:
    """Write a float map (H, W) or (H, W, 3 RGB) as a 16-bit PNG, ``lo`` -> 0 and ``hi`` -> 65535
    (default: the finite min and max; values outside are clipped, non-finite ones written as 0).

    Returns ``{"lo", "hi", "scale", "offset"}``: decode with ``value = offset + png * scale``,
    i.e. ``lo + png / 65535 * (hi - lo)``. Store it beside the PNG (metrics.json).
    """
    path = Path(path)
    img = np.asarray(image, dtype=np.float64)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
        raise PbidrError(f"{path}: a 16-bit PNG needs an (H, W) or (H, W, 3) map, got {img.shape}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    finite = np.isfinite(img)
    if lo is None:
        lo = float(img[finite].min()) if finite.any() else 0.0
    if hi is None:
        hi = float(img[finite].max()) if finite.any() else 1.0
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        hi = lo + 1.0  # a constant map: any positive span decodes it exactly
    q = np.where(finite, np.round((np.clip(img, lo, hi) - lo) / (hi - lo) * 65535.0), 0.0).astype(np.uint16)
    if q.ndim == 3:
        q = cv2.cvtColor(q, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), q):
            raise PbidrError(f"{path}: could not write the 16-bit PNG")
    return {"lo": lo, "hi": hi, "scale": (hi - lo) / 65535.0, "offset": lo}


def read_png16(path: str | Path, lo: float, hi: float) -> np.ndarray:
    """Decode a map written by :func:`write_png16`: (H, W) or (H, W, 3 RGB) float64."""
    path = Path(path)
    q = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if q is None:
        raise PbidrError(f"{path}: missing or not a readable PNG")
    if q.ndim == 3:
        q = cv2.cvtColor(q, cv2.COLOR_BGR2RGB)
    return lo + q.astype(np.float64) / 65535.0 * (hi - lo)
