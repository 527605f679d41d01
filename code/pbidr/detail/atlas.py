"""A UV chart for a mesh that has none (vertex colours only), from xatlas (a maintained binding of
the xatlas library: charts, packing, no overlaps).

Positions and faces are kept as they are (face f stays face f, with the same vertex indices): only
``uv`` and ``face_uv`` are added, so displacing per position never opens a crack along the new seams.
"""

from __future__ import annotations

import numpy as np

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh


def _import_xatlas():
    try:
        import xatlas
    except ImportError:
        raise PbidrError("a mesh without texture coordinates needs a UV chart from xatlas: pip install xatlas "
                         "(it is in requirements.txt)") from None
    return xatlas


def with_chart(mesh: TexturedMesh, resolution: int = 1024) -> TexturedMesh:
    """``mesh`` with a UV chart (uv (T, 2), face_uv (F, 3)); a mesh that has one is returned unchanged."""
    if mesh.uv is not None and mesh.face_uv is not None:
        return mesh
    xatlas = _import_xatlas()
    verts = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(verts, faces)
    pack = xatlas.PackOptions()
    pack.resolution = int(resolution)
    pack.padding = 2  # texels between charts, so bilinear reads never mix two charts
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    if len(indices) != len(faces) or not np.array_equal(vmapping[indices], faces.astype(vmapping.dtype)):
        raise PbidrError("xatlas changed the mesh's faces; the chart cannot be attached to the input topology")
    out = mesh.with_vertices(mesh.vertices)
    out.uv = np.asarray(uvs, dtype=np.float64)
    out.face_uv = np.asarray(indices, dtype=np.int64)
    return out


def vertex_colours_on_chart(mesh: TexturedMesh, chart) -> np.ndarray:
    """Vertex colours interpolated at every texel (H, W, 3) in [0, 1]: what the unlit views of a
    vertex-coloured mesh show there."""
    if mesh.vertex_colors is None:
        raise PbidrError("the mesh has neither a texture nor vertex colours")
    vc = np.asarray(mesh.vertex_colors, dtype=np.float64)[:, :3] / 255.0
    f = np.maximum(chart.face, 0)
    out = np.einsum("hwk,hwkc->hwc", chart.bary, vc[np.asarray(mesh.faces)[f]])
    return np.where(chart.mask[..., None], out, 0.0)


def textured_from_vertex_colours(mesh: TexturedMesh, resolution: int = 1024) -> TexturedMesh:
    """A vertex-coloured mesh without UVs as a textured one: an xatlas chart, and its vertex colours
    baked into a ``resolution``-square texture (texels outside every chart copy the nearest inside,
    so bilinear reads at chart borders do not fetch black)."""
    from scipy import ndimage

    from pbidr.detail.chart import build_chart

    charted = with_chart(mesh, resolution)
    chart = build_chart(charted, (resolution, resolution))
    colours = vertex_colours_on_chart(charted, chart)
    if not chart.mask.all():
        _, (ii, jj) = ndimage.distance_transform_edt(~chart.mask, return_indices=True)
        colours = colours[ii, jj]
    charted.texture = np.clip(np.round(colours * 255.0), 0, 255).astype(np.uint8)
    charted.vertex_colors = None
    return charted
