"""The auxiliary-view renderer: unlit, one face per pixel, from Embree first hits.

Per pixel: Embree first hit -> triangle + barycentrics -> bilinear UV texture lookup (OBJ
convention, v = 0 is the image bottom) or interpolated vertex colour. No lighting, no
anti-aliasing, background white: what PyTorch3D's hard rasteriser with ambient-only light gives,
without its version pitfalls. The mask is the renderer's coverage.
"""

from __future__ import annotations

import numpy as np

from pbidr.errors import PbidrError
from pbidr.geometry.cameras import Camera, pixel_rays, to_normalised
from pbidr.geometry.raycast import Hits, MeshRayCaster
from pbidr.io.load import sample_texture_bilinear
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.render_pytorch3d import PyTorch3DRenderer
from pbidr.preprocess.render_result import RenderResult

RENDERERS = ("embree", "pytorch3d")


def surface_colors(mesh: TexturedMesh, hits: Hits) -> np.ndarray:
    """Unlit colour (N, 3) float in [0, 1] at hits (texture if present, else vertex colours)."""
    ok = hits.hit
    out = np.ones((len(hits.face), 3), dtype=np.float32)
    face = hits.face[ok]
    bary = hits.bary[ok]
    if mesh.has_texture:
        uv = np.einsum("nk,nkc->nc", bary, mesh.uv[mesh.face_uv[face]])
        out[ok] = sample_texture_bilinear(mesh.texture, uv)
    elif mesh.vertex_colors is not None:
        vc = mesh.vertex_colors.astype(np.float32) / 255.0
        out[ok] = np.einsum("nk,nkc->nc", bary, vc[mesh.faces[face]])
    else:
        raise PbidrError(f"{mesh.source}: the mesh has no texture and no vertex colours")
    return out


class EmbreeRenderer:
    """Renders ``mesh`` (world frame) through cameras given in the normalised frame of ``scale_mat``."""

    name = "embree"

    def __init__(self, mesh: TexturedMesh, scale_mat: np.ndarray):
        self.mesh = mesh
        # Embree works in float32: cast in the normalised frame, where the scene has unit scale.
        self.caster = MeshRayCaster(to_normalised(mesh.vertices, scale_mat), mesh.faces)

    def render(self, camera: Camera) -> RenderResult:
        origins, dirs = pixel_rays(camera, dtype=np.float32)
        hits = self.caster.intersect(origins, dirs)
        colors = surface_colors(self.mesh, hits)
        rgb = np.clip(np.rint(colors * 255.0), 0, 255).astype(np.uint8)
        shape = (camera.height, camera.width)
        return RenderResult(
            rgb=rgb.reshape(*shape, 3),
            mask=hits.hit.reshape(shape),
            face=hits.face.reshape(shape),
            depth=hits.depth.reshape(shape),
        )


def make_renderer(name: str, mesh: TexturedMesh, scale_mat: np.ndarray, device: str = "auto"):
    """The renderer called ``name`` (embree, or pytorch3d when it is installed)."""
    if name == "embree":
        return EmbreeRenderer(mesh, scale_mat)
    if name == "pytorch3d":
        return PyTorch3DRenderer(mesh, scale_mat, device=device)
    raise PbidrError(f"--renderer {name}: unknown renderer (choose from {', '.join(RENDERERS)})")
