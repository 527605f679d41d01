"""Texel colours from the views: every texel's surface point projected into every image that sees it.

A view sees the point when the camera ray through it first hits the coarse mesh at that point (the
Embree depth agrees within ``depth_tolerance`` of the point's distance) and the surface faces the
camera. The colour is the bilinear read of the image there, averaged over the views with weight
cos(angle between normal and view direction), so grazing views count little.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pbidr.detail.chart import TexelChart


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image (H, W, 3) at continuous pixel coordinates (x right, y down; pixel centres at integers)."""
    h, w = image.shape[:2]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def view_colours(chart: TexelChart, scan_dir: str | Path, depth_tolerance: float = 1e-3,
                 min_cos: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(colours (H, W, 3) in [0, 1], seen (H, W) bool) of the chart's texels from the scan's views.
    ``depth_tolerance`` is relative to the camera distance."""
    from pbidr.datasets.scan import load_scan
    from pbidr.geometry.cameras import to_normalised
    from pbidr.geometry.raycast import MeshRayCaster

    data = load_scan(Path(scan_dir), None, None)
    mesh = data.mesh
    verts_n = to_normalised(mesh.vertices, data.scale_mat)
    caster = MeshRayCaster(verts_n, mesh.faces)
    m = chart.mask.reshape(-1)
    pts = to_normalised(chart.points.reshape(-1, 3)[m], data.scale_mat)
    nrm = chart.normals.reshape(-1, 3)[m]
    acc = np.zeros((len(pts), 3))
    wsum = np.zeros(len(pts))
    for cam, image in zip(data.cameras, data.images):
        centre = -cam.R.T @ cam.t
        to_cam = centre[None, :] - pts
        dist = np.linalg.norm(to_cam, axis=1)
        view = to_cam / dist[:, None]
        cos = np.einsum("nd,nd->n", view, nrm)
        facing = cos > min_cos
        idx = np.flatnonzero(facing)
        if not len(idx):
            continue
        hits = caster.intersect(np.broadcast_to(centre, (len(idx), 3)).copy(), -view[idx])
        depth = np.linalg.norm(caster.points(hits) - centre[None, :], axis=1)
        visible = hits.hit & (np.abs(depth - dist[idx]) < depth_tolerance * dist[idx])
        idx = idx[visible]
        pix, _ = cam.project(pts[idx])
        colour = _bilinear(np.asarray(image, dtype=np.float64), pix[:, 0], pix[:, 1])
        acc[idx] += cos[idx, None] * colour
        wsum[idx] += cos[idx]
    out = np.zeros((chart.mask.size, 3))
    seen = np.zeros(chart.mask.size, dtype=bool)
    ok = wsum > 0
    full = np.flatnonzero(m)
    out[full[ok]] = acc[ok] / wsum[ok, None]
    seen[full[ok]] = True
    h, w = chart.size
    return out.reshape(h, w, 3), seen.reshape(h, w)
