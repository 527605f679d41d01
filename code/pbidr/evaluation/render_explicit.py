"""Decomposition renders from Embree hits on the explicit (detailed) mesh plus a shading callable.

Sphere tracing the SDF costs tens of network evaluations per pixel; the detailed mesh that eval
writes anyway is the SDF's zero level set to within its displacement error, so one Embree cast per
pixel finds the same surface, and the model is asked only for the colour at the hits. The shading
is a callable, so any model kind that can colour a surface point plugs in::

    shade(points (N, 3), normals (N, 3), view_dirs (N, 3), face (N,), bary (N, 3))
        -> {"rgb", "diffuse", "specular", "albedo"}: (N, 3) arrays in [0, 1]

``normals`` are the unit, barycentric-interpolated vertex normals of the rendered mesh;
``view_dirs`` the unit ray directions (camera -> point), as the model's ``dirs``; ``face`` and
``bary`` the hit triangle and its weights, for attributes on the mesh's topology (such as the coarse
normal, see :class:`PBIDRShading`). All in the cameras' (normalised) frame.

``--renderer sdf`` (pbidr.model.render.render_camera) keeps the sphere-traced renders of the
paper for reproduction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pbidr.errors import PbidrError
from pbidr.geometry.cameras import Camera, pixel_rays
from pbidr.geometry.raycast import MeshRayCaster
from pbidr.io.mesh import TexturedMesh
from pbidr.model.render import ViewRender

ShadeFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict]
SHADE_KEYS = ("rgb", "diffuse", "specular", "albedo")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def render_mesh_view(vertices: np.ndarray, faces: np.ndarray, camera: Camera, shade: ShadeFn,
                     chunk: int = 1 << 16, caster: MeshRayCaster | None = None,
                     vertex_normals: np.ndarray | None = None) -> ViewRender:
    """Render every pixel of ``camera`` on the mesh (``vertices`` (V, 3) in the camera's frame,
    ``faces`` (F, 3)), colouring the hits with ``shade``, ``chunk`` hits per call (memory knob).

    ``caster`` and ``vertex_normals`` (V, 3) may be passed in when several views share one mesh (the
    Embree scene and the normals are then built once). Images are white where the mesh is missed;
    ``normal`` is (n + 1) / 2 of the mesh normals, as the SDF renderer's. ``n_sdf_evals`` is what
    ``shade`` reports under the key ``n_sdf_evals`` (0 for shading that needs no SDF query)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if caster is None:
        caster = MeshRayCaster(vertices, faces)
    if vertex_normals is None:
        vertex_normals = TexturedMesh(vertices=vertices, faces=faces).vertex_normals()
    h, w = camera.height, camera.width
    origins, dirs = pixel_rays(camera, dtype=np.float32)
    hits = caster.intersect(origins, dirs)
    idx = np.flatnonzero(hits.hit)
    sub = type(hits)(face=hits.face[idx], bary=hits.bary[idx], depth=hits.depth[idx])
    points = caster.points(sub)
    normals = _unit(caster.interpolate(sub, vertex_normals))
    view_dirs = dirs[idx].astype(np.float64)

    images = {key: np.ones((h * w, 3)) for key in (*SHADE_KEYS, "normal")}
    images["normal"][idx] = (normals + 1.0) / 2.0
    n_sdf_evals = 0
    chunk = max(1, int(chunk))
    for s in range(0, len(idx), chunk):
        e = min(s + chunk, len(idx))
        out = shade(points[s:e], normals[s:e], view_dirs[s:e], sub.face[s:e], sub.bary[s:e])
        for key in SHADE_KEYS:
            if key not in out:
                raise PbidrError(f"render_mesh_view: the shading callable returned no {key!r} (keys {sorted(out)})")
            images[key][idx[s:e]] = np.asarray(out[key], dtype=np.float64).reshape(e - s, 3)
        n_sdf_evals += int(out.get("n_sdf_evals", 0))
    final = {k: np.clip(v, 0.0, 1.0).reshape(h, w, 3) for k, v in images.items()}
    return ViewRender(rgb=final["rgb"], diffuse=final["diffuse"], specular=final["specular"],
                      albedo=final["albedo"], normal=final["normal"], hit=hits.hit.reshape(h, w),
                      n_sdf_evals=n_sdf_evals)


def subdivided_coarse_normals(coarse_normals: np.ndarray, coarse_faces: np.ndarray,
                              detailed_faces: np.ndarray) -> np.ndarray:
    """Per-vertex coarse normals (V + E, 3) for a mesh on the midpoint subdivision of the coarse mesh
    (detailed_subdivided), from the coarse mesh's unit vertex normals (V, 3).

    The trainer's coarse normal is the coarse vertex normals interpolated linearly over a coarse
    triangle. The subdivision numbers the coarse vertices first, then one per edge; giving each
    midpoint the mean of its edge's two normals makes interpolation over a sub-triangle that same
    linear function, so (face, bary) on the detailed mesh give the trainer's coarse normal (after
    normalising)."""
    from pbidr.evaluation.displacement import _midpoint_split

    coarse_normals = np.asarray(coarse_normals, dtype=np.float64)
    edges, faces = _midpoint_split(coarse_faces, len(coarse_normals))
    if not np.array_equal(faces, np.asarray(detailed_faces)):
        raise PbidrError("--renderer mesh: the detailed mesh is not the midpoint subdivision of the coarse mesh, "
                         "so its coarse normals are unknown")
    return np.concatenate([coarse_normals, coarse_normals[edges].mean(axis=1)])


class PBIDRShading:
    """The shading callable of a :class:`~pbidr.model.pbidr_model.PBIDRModel`: the model's own
    rgb = diffuse(normal) x albedo(point, feature) + specular(normal, view) at mesh hits, with the
    rendered mesh's normal where the SDF renderer uses the SDF normal.

    The diffuse term's input follows ``model.diffuse_normal``: ``sdf`` takes the mesh normal;
    ``coarse`` takes ``coarse_vertex_normals`` (V, 3), per vertex of the *rendered* mesh's topology
    (the detailed mesh is the coarse mesh displaced, so its vertex i sits over the coarse mesh's
    vertex i), interpolated with the hit's barycentrics. The SDF feature (``feature_vector_size``
    > 0) is the network's forward at the hit, one query per point and no gradient."""

    def __init__(self, model, device: torch.device | str, coarse_vertex_normals: np.ndarray | None = None):
        self.model, self.device = model, torch.device(device)
        self.faces: np.ndarray | None = None
        self.coarse_vertex_normals = coarse_vertex_normals
        if model.diffuse_normal == "coarse" and coarse_vertex_normals is None:
            raise PbidrError("PBIDRShading: the model shades diffuse on the coarse normal "
                             "(model.diffuse_normal = coarse) but no coarse vertex normals were given")
        self.uses_feature = model.conf.feature_vector_size > 0

    def bind(self, faces: np.ndarray) -> "PBIDRShading":
        """The rendered mesh's faces (F, 3), to interpolate the coarse normals by (face, bary)."""
        self.faces = np.asarray(faces, dtype=np.int64)
        if self.coarse_vertex_normals is not None and int(self.faces.max()) >= len(self.coarse_vertex_normals):
            raise PbidrError(f"PBIDRShading: {len(self.coarse_vertex_normals)} coarse vertex normals do not "
                             "match the rendered mesh's topology")
        return self

    @torch.no_grad()
    def __call__(self, points, normals, view_dirs, face, bary) -> dict:
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        x, n, d = t(points), t(normals), t(view_dirs)
        model = self.model
        n_evals = 0
        if self.uses_feature:
            feature = model.sdf_network(x)[:, 1:]
            n_evals = len(x)
        else:
            feature = x.new_zeros(len(x), 0)
        if model.diffuse_normal == "coarse":
            if self.faces is None:
                raise PbidrError("PBIDRShading: call bind(faces) before shading coarse normals")
            coarse = np.einsum("nk,nkc->nc", bary, self.coarse_vertex_normals[self.faces[face]])
            diffuse_in = t(_unit(coarse))
        else:
            diffuse_in = n
        # The model's own shading, so the renders use the numbers training fitted (the normal stands in
        # for the SDF gradient; _shade normalises it, a no-op on unit normals).
        s = model._shade(x, feature, n, d, diffuse_in)
        out = {"rgb": (s.rgb + 1.0) / 2.0, "diffuse": s.diffuse, "specular": s.specular, "albedo": s.albedo}
        out = {k: v.float().cpu().numpy() for k, v in out.items()}
        out["n_sdf_evals"] = n_evals
        return out
