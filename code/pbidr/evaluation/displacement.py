"""The detailed mesh as a displaced coarse mesh: same topology, UVs and texture, new positions.

Each vertex moves along its normal onto the SDF's zero level set (to first order):
``v' = v - sdf(v) * n(v)``. Its signed displacement ``-sdf(v)`` is what the displacement map stores.
``subdivide_midpoint`` first adds vertices where the coarse mesh is too sparse for the detail.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh


def displace_along_normals(
    mesh: TexturedMesh,
    sdf_world: Callable[[np.ndarray], np.ndarray],
    normals: np.ndarray | None = None,
) -> tuple[TexturedMesh, np.ndarray]:
    """Move every vertex by ``-sdf_world(v) * n(v)``.

    ``sdf_world`` maps (N, 3) world points to (N,) signed distances in world units (the caller
    wraps the network and the scale). ``normals`` (V, 3) unit normals; default the mesh's
    area-weighted vertex normals. Returns the displaced mesh (same faces, UVs, texture, colours)
    and the signed displacement (V,) along the normal, in world units.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if normals is None:
        normals = mesh.vertex_normals()
    normals = np.asarray(normals, dtype=np.float64)
    if normals.shape != vertices.shape:
        raise PbidrError(f"displacement: normals {normals.shape} do not match vertices {vertices.shape}")
    sdf = np.asarray(sdf_world(vertices), dtype=np.float64).reshape(-1)
    if sdf.shape[0] != len(vertices):
        raise PbidrError(f"displacement: sdf returned {sdf.shape[0]} values for {len(vertices)} vertices")
    if not np.all(np.isfinite(sdf)):
        raise PbidrError(f"displacement: sdf is not finite at {int((~np.isfinite(sdf)).sum())} vertices")
    displacement = -sdf
    return mesh.with_vertices(vertices + displacement[:, None] * normals), displacement


def _midpoint_split(faces: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges (E, 2) of ``faces`` and the 1->4 split faces (4F, 3) whose midpoints are numbered
    ``n_points + edge``. Children of face f are rows 4f .. 4f+3: three corner triangles, then the
    middle one; all keep the parent's winding."""
    f = np.asarray(faces, dtype=np.int64)
    half = np.stack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=1).reshape(-1, 2)  # (3F, 2)
    half = np.sort(half, axis=1)
    n = int(max(n_points, half.max() + 1 if len(half) else 0))
    key = half[:, 0] * n + half[:, 1]
    order = np.argsort(key, kind="stable")
    first = np.concatenate([[True], key[order][1:] != key[order][:-1]])
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    edges = half[order[first]]
    mid = n_points + inverse.reshape(-1, 3)  # midpoints of edges (01, 12, 20) per face
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    m01, m12, m20 = mid[:, 0], mid[:, 1], mid[:, 2]
    children = np.stack(
        [
            np.stack([a, m01, m20], 1),
            np.stack([m01, b, m12], 1),
            np.stack([m20, m12, c], 1),
            np.stack([m01, m12, m20], 1),
        ],
        axis=1,
    ).reshape(-1, 3)
    return edges, children


def subdivide_midpoint(mesh: TexturedMesh) -> TexturedMesh:
    """One 1 -> 4 midpoint subdivision (positions unchanged, no smoothing).

    Positions gain one vertex per edge (V + E, shared by both faces of the edge, so no cracks);
    UVs are split the same way through their own index (T + E_uv), so a UV seam stays a seam.
    Vertex colours of new vertices are the mean of the edge's two ends. Face f's children are
    faces 4f .. 4f+3.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    edges, faces = _midpoint_split(mesh.faces, len(vertices))
    new_vertices = np.concatenate([vertices, vertices[edges].mean(axis=1)])
    uv = face_uv = None
    if mesh.uv is not None and mesh.face_uv is not None:
        uv_edges, face_uv = _midpoint_split(mesh.face_uv, len(mesh.uv))
        uv = np.concatenate([mesh.uv, mesh.uv[uv_edges].mean(axis=1)])
    colors = None
    if mesh.vertex_colors is not None:
        vc = np.asarray(mesh.vertex_colors)
        mid = vc[edges].astype(np.float64).mean(axis=1)
        mid = np.clip(np.round(mid), 0, 255).astype(vc.dtype) if vc.dtype == np.uint8 else mid.astype(vc.dtype)
        colors = np.concatenate([vc, mid])
    return TexturedMesh(
        vertices=new_vertices,
        faces=faces,
        uv=uv,
        face_uv=face_uv,
        texture=mesh.texture,
        vertex_colors=colors,
        source=mesh.source,
        texture_path=mesh.texture_path,
        material_name=mesh.material_name,
    )


def subdivide_to_spacing(mesh: TexturedMesh, spacing: float, max_levels: int = 3,
                         normals: np.ndarray | None = None) -> tuple[TexturedMesh, np.ndarray, int]:
    """Midpoint subdivisions of ``mesh`` until its median edge is at most ``spacing`` (at most
    ``max_levels``; at least one). Returns the dense mesh, its vertex normals and the level count.

    The normals are the coarse mesh's smooth ones carried along: a new vertex gets the normalised
    mean of its edge's two ends (the interpolated normal there), not the flat facet's, so a
    displacement along them does not print the coarse facets into the dense mesh.
    """
    if normals is None:
        normals = mesh.vertex_normals()
    normals = np.asarray(normals, dtype=np.float64)
    levels = 0
    while levels < max(1, max_levels):
        e = mesh.vertices[mesh.faces[:, [0, 1, 2]]] - mesh.vertices[mesh.faces[:, [1, 2, 0]]]
        if levels >= 1 and np.median(np.linalg.norm(e, axis=-1)) <= spacing:
            break
        edges, _ = _midpoint_split(mesh.faces, len(mesh.vertices))
        mid = normals[edges].sum(axis=1)
        normals = np.concatenate([normals, mid / np.maximum(np.linalg.norm(mid, axis=1, keepdims=True), 1e-12)])
        mesh = subdivide_midpoint(mesh)
        levels += 1
    return mesh, normals, levels
