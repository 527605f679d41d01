"""First-hit ray casting against a triangle mesh with Embree (embreex), vectorised per batch.

Used by the renderer (every pixel of a view) and by the trainer (the batch's rays, for the coarse
normal and the mesh-pull target), so both see the same hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbidr.errors import PbidrError


@dataclass
class Hits:
    """First hits of N rays. ``face`` (N,) int64, -1 for a miss; ``bary`` (N, 3) weights of the
    face's three vertices; ``depth`` (N,) distance along the (unit) ray, inf for a miss."""

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.face >= 0


class MeshRayCaster:
    """Embree scene of one triangle mesh. Coordinates are cast to float32 (Embree's precision), so
    build it in a frame of moderate scale (the normalised frame) for accurate depths."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        try:
            from embreex import rtcore_scene
            from embreex.mesh_construction import TriangleMesh
        except ImportError as exc:  # a core dependency: say how to get it
            raise PbidrError(f"embreex is not installed ({exc}); run: pip install embreex") from None
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self._scene = rtcore_scene.EmbreeScene()
        # Keep references: Embree reads these buffers for the scene's lifetime.
        self._v32 = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self._f32 = np.ascontiguousarray(self.faces, dtype=np.int32)
        self._mesh = TriangleMesh(self._scene, self._v32, self._f32)

    def intersect(self, origins: np.ndarray, directions: np.ndarray, chunk: int = 1 << 20) -> Hits:
        """First hits of rays (N, 3) origins, (N, 3) unit directions."""
        n = len(origins)
        face = np.full(n, -1, dtype=np.int64)
        bary = np.zeros((n, 3))
        depth = np.full(n, np.inf)
        for s in range(0, n, chunk):
            o = np.ascontiguousarray(origins[s : s + chunk], dtype=np.float32)
            d = np.ascontiguousarray(directions[s : s + chunk], dtype=np.float32)
            res = self._scene.run(o, d, output=1)
            prim = res["primID"]
            ok = prim >= 0
            face[s : s + chunk] = prim  # Embree reports a miss as -1
            u, v = res["u"], res["v"]
            b = bary[s : s + chunk]
            b[:, 1] = u
            b[:, 2] = v
            b[:, 0] = 1.0 - b[:, 1] - b[:, 2]
            b[~ok] = 0.0
            depth[s : s + chunk] = np.where(ok, res["tfar"], np.inf)
        return Hits(face=face, bary=bary, depth=depth)

    def points(self, hits: Hits) -> np.ndarray:
        """Hit points (N, 3) from barycentrics (exact on the mesh, unlike origin + depth * dir)."""
        tri = self.vertices[self.faces[np.maximum(hits.face, 0)]]
        return np.einsum("nk,nkc->nc", hits.bary, tri)

    def interpolate(self, hits: Hits, per_vertex: np.ndarray) -> np.ndarray:
        """Barycentric interpolation of a per-vertex attribute (V, C) at the hits: (N, C)."""
        vals = per_vertex[self.faces[np.maximum(hits.face, 0)]]
        return np.einsum("nk,nkc->nc", hits.bary, vals)
