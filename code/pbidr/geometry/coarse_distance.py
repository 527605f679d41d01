"""Signed distance to the coarse mesh: the base of the residual SDF f(x) = d_coarse(x) + r(p(x)).

Closest points come from libigl's AABB tree (``igl.AABB``: built once, ~2 us per query on one core
for the 82k-face sample; measured in BENCHMARKS.md against a tree-less query). Per query point x:

* ``closest`` c: the closest point on the mesh, with its triangle and barycentric coordinates;
* ``normal`` n: the barycentric interpolation of the area-weighted vertex normals at c, normalised
  (smooth across edges, unlike the facet normal);
* ``sdf`` d: the exact distance |x - c|, signed by the side of n that x is on.

Differentiation: c and n are constants (no gradient flows through the tree query); the value of d
is exact, and its gradient is the smooth normal n (a straight-through estimate that equals the true
gradient on the normal line of c). So the SDF's normal is smooth at the coarse mesh, and
``p(x) = c + (I - n n^T)(x - c)`` (the projection of x onto the tangent plane at c, equal to c on
the normal line) carries the tangential derivatives of the residual.

Beyond an open border (a face mask has one), d keeps the true distance magnitude, so the zero level
set is the mesh itself and does not continue as a skirt; the sign flips across the border's tangent
plane there without a zero crossing (marching cubes filters such cells, see
``pbidr.evaluation.marching_cubes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh


def _import_igl():
    try:
        import igl  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise PbidrError(
            "the coarse-residual SDF needs libigl (pip install libigl); it is in requirements.txt"
        ) from exc
    return igl


@dataclass
class ClosestPoints:
    """Per query point (N,): closest point (N, 3), smooth unit normal there (N, 3), exact signed
    distance (N,), triangle index (N,) and barycentric coordinates (N, 3). NumPy, float64."""

    point: np.ndarray
    normal: np.ndarray
    distance: np.ndarray
    face: np.ndarray
    bary: np.ndarray


class CoarseDistance:
    """Closest-point queries against a triangle mesh (any frame; the model uses the normalised one).

    ``normals`` (V, 3) default to ``TexturedMesh.vertex_normals`` (area-weighted), the same as the
    per-ray coarse normals of training, so both agree at the mesh.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None):
        igl = _import_igl()
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise PbidrError(f"coarse distance needs a triangle mesh, got faces of shape {self.faces.shape}")
        if normals is None:
            normals = TexturedMesh(vertices=self.vertices, faces=self.faces).vertex_normals()
        self.normals = np.asarray(normals, np.float64)
        self._tree = igl.AABB()
        self._tree.init(self.vertices, self.faces)
        self.n_queries = 0

    def closest(self, points: np.ndarray) -> ClosestPoints:
        """Closest points of (N, 3) query points."""
        p = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        self.n_queries += len(p)
        if len(p) == 0:
            z = np.zeros((0, 3))
            return ClosestPoints(z, z, np.zeros(0), np.zeros(0, np.int64), z)
        _, face, c = self._tree.squared_distance(self.vertices, self.faces, p)
        tri = self.vertices[self.faces[face]]  # (N, 3, 3)
        bary = closest_point_barycentric(c, tri[:, 0], tri[:, 1], tri[:, 2])
        n = np.einsum("nk,nkd->nd", bary, self.normals[self.faces[face]])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        off = p - c
        dist = np.linalg.norm(off, axis=1)
        sign = np.where(np.einsum("nd,nd->n", off, n) < 0.0, -1.0, 1.0)
        return ClosestPoints(point=c, normal=n, distance=sign * dist, face=face, bary=bary)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 3) -> (sdf (N,), normal (N, 3), closest (N, 3)) on x's device and dtype.

        ``sdf`` is differentiable in x with gradient ``normal`` (constants c, n; see the module
        docstring); ``normal`` and ``closest`` are detached.
        """
        q = self.closest(x.detach().cpu().numpy())
        as_t = lambda a: torch.as_tensor(a, dtype=x.dtype).to(x.device, non_blocking=True)  # noqa: E731
        d, n, c = as_t(q.distance), as_t(q.normal), as_t(q.point)
        x_const = x.detach()
        sdf = d + ((x - x_const) * n).sum(-1)  # value d, gradient n
        return sdf, n, c


def closest_point_barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of the point of triangle (a, b, c) closest to p; all (N, 3).

    Ericson, Real-Time Collision Detection 5.1.5, vectorised: the Voronoi region of p decides
    between a vertex, an edge and the interior.
    """
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        total = va + vb + vc
        bw = np.where(total != 0, vb / total, 0.0)  # interior (degenerate triangles fall to a vertex or edge)
        cw = np.where(total != 0, vc / total, 0.0)
        bary = np.stack([1.0 - bw - cw, bw, cw], axis=1)
        # Ericson tests vertex A, B, edge AB, vertex C, edge AC, edge BC, interior, first match
        # wins; assigning in reverse order lets the earlier tests override.
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        _assign(bary, (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 0.0, 1.0 - t, t)
        t = d2 / (d2 - d6)
        _assign(bary, (vb <= 0) & (d2 >= 0) & (d6 <= 0), 1.0 - t, 0.0, t)
        _assign(bary, (d6 >= 0) & (d5 <= d6), 0.0, 0.0, 1.0)
        t = d1 / (d1 - d3)
        _assign(bary, (vc <= 0) & (d1 >= 0) & (d3 <= 0), 1.0 - t, t, 0.0)
        _assign(bary, (d3 >= 0) & (d4 <= d3), 0.0, 1.0, 0.0)
        _assign(bary, (d1 <= 0) & (d2 <= 0), 1.0, 0.0, 0.0)
    bad = ~np.isfinite(bary).all(axis=1)
    bary[bad] = (1.0, 0.0, 0.0)
    return bary


def _assign(bary: np.ndarray, where: np.ndarray, wa, wb, wc) -> None:
    for k, w in enumerate((wa, wb, wc)):
        bary[where, k] = w[where] if isinstance(w, np.ndarray) else w
