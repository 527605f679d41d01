"""The coarse mesh's UV chart as a grid of surface samples: one texel, one point of the coarse surface.

The auxiliary views are unlit renders of the texture, so every texel of the chart is an observation
of one surface point: its colour, its position P_c and its smooth coarse normal n_c. The detail is a
displacement map D on the same grid; the detailed surface is ``S(uv) = P_c(uv) + D(uv) n_c(uv)``.

Texel convention (as the texture and ``pbidr.evaluation.uv_maps``): texel (row i, col j) has its
centre at ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``.

Per texel the chart holds the triangle and barycentrics (one Embree call on the flat UV layout),
P_c, n_c (barycentric blend of the area-weighted vertex normals, normalised), and the *dual tangent
basis* g_u, g_v: the surface gradient of a function f on the chart is ``f_u g_u + f_v g_v`` (world
units), from the triangle's Jacobian dP/d(u, v). That is what turns D's texel differences into the
detailed normal ``n = normalise(n_c - grad_s D)`` (first-order displacement mapping, the same
normal a bump map gives), smooth wherever n_c is, although P_c itself is piecewise flat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh


@dataclass
class TexelChart:
    """Per-texel samples of a mesh's UV chart, all (H, W, ...) in image layout.

    mask: texel centre inside a UV triangle. face (-1 outside), bary (H, W, 3).
    points, normals: P_c and unit n_c in the mesh's frame. grad_u, grad_v: dual tangent basis
    (world units per unit of u / v), zero outside. interior: the texel and its 4 neighbours are in
    the same UV island (central differences are valid there: no seam, no border in between).
    texel_size: median world distance between neighbouring texels (mean of the u and v steps).
    """

    size: tuple[int, int]
    mask: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    grad_u: np.ndarray
    grad_v: np.ndarray
    interior: np.ndarray
    texel_size: float


def texel_centres(size: tuple[int, int]) -> np.ndarray:
    """UV (H, W, 2) of every texel centre."""
    h, w = size
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([(cols + 0.5) / w, 1.0 - (rows + 0.5) / h], axis=-1)


def uv_islands(mesh: TexturedMesh) -> np.ndarray:
    """Island id (F,) of every face: faces sharing a UV edge (two UV corners) are in one island."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    fuv = np.asarray(mesh.face_uv, dtype=np.int64)
    n_faces = len(fuv)
    edges = np.sort(np.stack([fuv[:, [0, 1]], fuv[:, [1, 2]], fuv[:, [2, 0]]], axis=1).reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(n_faces), 3)
    key = edges[:, 0] * (len(mesh.uv) + 1) + edges[:, 1]
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    a, b = owner[order][:-1][same], owner[order][1:][same]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n_faces, n_faces))
    return connected_components(graph, directed=False)[1]


def _tangent_frames(verts, faces, uv, fuv):
    """Per face: P_u, P_v (F, 3) with dP = [P_u P_v] d(u, v), and the dual basis J (J^T J)^-1 as
    two (F, 3) arrays (zero for a triangle degenerate in UV or in space)."""
    tri, tuv = verts[faces], uv[fuv]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    d1, d2 = tuv[:, 1] - tuv[:, 0], tuv[:, 2] - tuv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    ok = np.abs(det) > 1e-18
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    p_u = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv[:, None]
    p_v = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv[:, None]
    guu, guv, gvv = (p_u * p_u).sum(1), (p_u * p_v).sum(1), (p_v * p_v).sum(1)
    gdet = guu * gvv - guv * guv
    gok = ok & (gdet > 1e-30)
    ginv = np.where(gok, 1.0 / np.where(gok, gdet, 1.0), 0.0)
    dual_u = (p_u * gvv[:, None] - p_v * guv[:, None]) * ginv[:, None]
    dual_v = (p_v * guu[:, None] - p_u * guv[:, None]) * ginv[:, None]
    return p_u, p_v, dual_u, dual_v


def dual_tangent_basis(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                       face_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face (F, 3) each: g_u, g_v with d(u, v) = (g_u . dP, g_v . dP) for a step dP in the
    triangle's plane, and grad_s f = f_u g_u + f_v g_v."""
    _, _, du, dv = _tangent_frames(np.asarray(vertices, np.float64), np.asarray(faces, np.int64),
                                   np.asarray(uv, np.float64), np.asarray(face_uv, np.int64))
    return du, dv


def build_chart(mesh: TexturedMesh, size: tuple[int, int]) -> TexelChart:
    """Rasterise ``mesh``'s UV layout at ``size`` (H, W) into a :class:`TexelChart`."""
    from pbidr.geometry.raycast import MeshRayCaster

    if mesh.uv is None or mesh.face_uv is None:
        raise PbidrError("texel chart: the mesh has no texture coordinates (give it a chart: pbidr.detail.atlas)")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise PbidrError(f"texel chart: size {size} is too small (at least 8 x 8)")
    uv = np.asarray(mesh.uv, dtype=np.float64)
    fuv = np.asarray(mesh.face_uv, dtype=np.int64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    verts = np.asarray(mesh.vertices, dtype=np.float64)

    flat = np.concatenate([uv, np.zeros((len(uv), 1))], axis=1)
    caster = MeshRayCaster(flat, fuv)
    centres = texel_centres((h, w)).reshape(-1, 2)
    origins = np.concatenate([centres, np.ones((len(centres), 1))], axis=1)
    hits = caster.intersect(origins, np.broadcast_to(np.array([0.0, 0.0, -1.0]), origins.shape))
    mask = hits.hit
    face = np.where(mask, hits.face, -1)
    bary = np.where(mask[:, None], hits.bary, 0.0)
    f = np.maximum(face, 0)

    vn = mesh.vertex_normals()
    points = np.einsum("nk,nkc->nc", bary, verts[faces[f]])
    normals = np.einsum("nk,nkc->nc", bary, vn[faces[f]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)

    p_u, p_v, dual_u, dual_v = _tangent_frames(verts, faces, uv, fuv)
    grad_u = np.where(mask[:, None], dual_u[f], 0.0)
    grad_v = np.where(mask[:, None], dual_v[f], 0.0)

    island = np.where(mask, uv_islands(mesh)[f], -1).reshape(h, w)
    interior = island >= 0
    for axis in (0, 1):
        for shift in (1, -1):
            nb = np.roll(island, shift, axis=axis)
            edge = np.zeros_like(interior)
            if axis == 0:
                edge[0 if shift == 1 else -1, :] = True
            else:
                edge[:, 0 if shift == 1 else -1] = True
            interior &= (nb == island) & ~edge

    # Texel spacing in world units: |P_u| / W and |P_v| / H, median over covered texels.
    step_u = np.linalg.norm(p_u[f[mask]], axis=1) / w
    step_v = np.linalg.norm(p_v[f[mask]], axis=1) / h
    texel_size = float(np.median(0.5 * (step_u + step_v))) if mask.any() else 0.0
    if not mask.any():
        raise PbidrError(f"texel chart: no texel of the {h}x{w} grid lies in a UV triangle (UVs outside [0, 1]?)")

    return TexelChart(
        size=(h, w), mask=mask.reshape(h, w), face=face.reshape(h, w), bary=bary.reshape(h, w, 3),
        points=points.reshape(h, w, 3), normals=normals.reshape(h, w, 3), grad_u=grad_u.reshape(h, w, 3),
        grad_v=grad_v.reshape(h, w, 3), interior=interior, texel_size=texel_size,
    )


def texture_colours(mesh: TexturedMesh, size: tuple[int, int]) -> np.ndarray:
    """The texture resampled to the chart's grid, (H, W, 3) float in [0, 1]: what the unlit views show
    at each texel's surface point (the views are renders of this texture, bilinear in UV)."""
    import cv2

    if mesh.texture is None:
        raise PbidrError("texel colours: the mesh has no texture (use the views: source = views)")
    tex = np.asarray(mesh.texture)
    h, w = size
    if tex.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if tex.shape[0] > h else cv2.INTER_LINEAR
        tex = cv2.resize(tex, (w, h), interpolation=interp)
    return tex[..., :3].astype(np.float64) / 255.0
