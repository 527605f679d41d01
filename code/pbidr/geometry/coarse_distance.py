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
        bary = _barycentric(c, tri)
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


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of points p (N, 3) lying on triangles tri (N, 3, 3)
    (closest points: inside or on the border), clipped and renormalised for degenerate triangles."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00 = np.einsum("nd,nd->n", v0, v0)
    d01 = np.einsum("nd,nd->n", v0, v1)
    d11 = np.einsum("nd,nd->n", v1, v1)
    d20 = np.einsum("nd,nd->n", v2, v0)
    d21 = np.einsum("nd,nd->n", v2, v1)
    den = d00 * d11 - d01 * d01
    ok = den > 1e-30
    den = np.where(ok, den, 1.0)
    w1 = np.where(ok, (d11 * d20 - d01 * d21) / den, 1.0 / 3.0)
    w2 = np.where(ok, (d00 * d21 - d01 * d20) / den, 1.0 / 3.0)
    bary = np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)
    return bary / np.maximum(bary.sum(1, keepdims=True), 1e-12)
