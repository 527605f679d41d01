"""Optional PyTorch3D backend for the auxiliary views (hard rasteriser, 1 face per pixel, unlit).

PyTorch3D is not a dependency: it does not install against the CPU build of torch, and versions
newer than the original's 0.4 differ in camera conventions. It is imported only when asked for.
"""

from __future__ import annotations

import numpy as np

from pbidr.errors import PbidrError
from pbidr.geometry.cameras import Camera, to_normalised
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.render_result import RenderResult


def _import_pytorch3d():
    try:
        import pytorch3d  # noqa: F401
        from pytorch3d import renderer, structures, utils
    except ImportError as exc:
        raise PbidrError(
            f"--renderer pytorch3d: PyTorch3D is not installed ({exc}); it needs a CUDA build of torch, "
            "see INSTALL.md, or use the default --renderer embree"
        ) from None
    return renderer, structures, utils


class PyTorch3DRenderer:
    name = "pytorch3d"

    def __init__(self, mesh: TexturedMesh, scale_mat: np.ndarray, device: str = "auto"):
        import torch

        from pbidr.utils.device import pick_device

        self._p3r, self._p3s, self._p3u = _import_pytorch3d()
        self.device = pick_device(device)
        self.mesh = mesh
        dev = self.device
        verts = torch.tensor(to_normalised(mesh.vertices, scale_mat), dtype=torch.float32, device=dev)
        faces = torch.tensor(mesh.faces, dtype=torch.int64, device=dev)
        if mesh.has_texture:
            textures = self._p3r.TexturesUV(
                maps=torch.tensor(mesh.texture, dtype=torch.float32, device=dev)[None] / 255.0,
                faces_uvs=torch.tensor(mesh.face_uv, dtype=torch.int64, device=dev)[None],
                verts_uvs=torch.tensor(mesh.uv, dtype=torch.float32, device=dev)[None],
                align_corners=False,  # texel centres at (j + 0.5) / W, as the Embree renderer
            )
        elif mesh.vertex_colors is not None:
            vc = torch.tensor(mesh.vertex_colors, dtype=torch.float32, device=dev)[None] / 255.0
            textures = self._p3r.TexturesVertex(verts_features=vc)
        else:
            raise PbidrError(f"{mesh.source}: the mesh has no texture and no vertex colours")
        self.meshes = self._p3s.Meshes(verts=[verts], faces=[faces], textures=textures)

    def render(self, camera: Camera) -> RenderResult:
        import torch

        dev = self.device
        size = torch.tensor([[camera.height, camera.width]], device=dev)
        # PyTorch3D's OpenCV conversion puts pixel centres at half-integers; ours (IDR's uv grid) are at
        # integers, so the principal point moves by half a pixel (measured: a 0.5 px shift otherwise).
        K = camera.K.copy()
        K[:2, 2] += 0.5
        cams = self._p3u.cameras_from_opencv_projection(
            R=torch.tensor(camera.R, dtype=torch.float32, device=dev)[None],
            tvec=torch.tensor(camera.t, dtype=torch.float32, device=dev)[None],
            camera_matrix=torch.tensor(K, dtype=torch.float32, device=dev)[None],
            image_size=size,
        )
        settings = self._p3r.RasterizationSettings(
            image_size=(camera.height, camera.width), blur_radius=0.0, faces_per_pixel=1, bin_size=None
        )
        fragments = self._p3r.MeshRasterizer(cameras=cams, raster_settings=settings)(self.meshes)
        colors = self.meshes.sample_textures(fragments)[0, :, :, 0, :3]
        face = fragments.pix_to_face[0, :, :, 0]
        mask = face >= 0
        colors = torch.where(mask[..., None], colors, torch.ones_like(colors))
        rgb = (colors.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        # zbuf is camera-space z, not ray distance as in the Embree renderer; only coverage and colour are compared.
        depth = torch.where(mask, fragments.zbuf[0, :, :, 0], torch.full_like(fragments.zbuf[0, :, :, 0], np.inf))
        return RenderResult(rgb=rgb, mask=mask.cpu().numpy(), face=face.cpu().numpy().astype(np.int64),
                            depth=depth.cpu().numpy())
