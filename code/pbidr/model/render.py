"""Rendering a trained model from a camera: rgb and its decomposition as images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pbidr.datasets.scan import CoarseMesh
from pbidr.geometry.cameras import Camera, pixel_rays
from pbidr.model.pbidr_model import PBIDRModel, RayBatch


@dataclass
class ViewRender:
    """Images (H, W, 3) float in [0, 1] (white where the SDF surface is not hit), hit (H, W) bool,
    n_sdf_evals of the render."""

    rgb: np.ndarray
    diffuse: np.ndarray
    specular: np.ndarray
    albedo: np.ndarray
    normal: np.ndarray
    hit: np.ndarray
    n_sdf_evals: int

    def images(self) -> dict[str, np.ndarray]:
        return {"rgb": self.rgb, "diffuse": self.diffuse, "specular": self.specular, "albedo": self.albedo,
                "normal": self.normal}


def batch_to_device(rays: dict[str, np.ndarray], device: torch.device, with_mask: bool = True) -> RayBatch:
    """The sampler's numpy rays as a RayBatch of tensors on ``device``."""
    t = lambda key, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(rays[key])).to(device, dtype)  # noqa: E731
    return RayBatch(
        origins=t("origins"), dirs=t("dirs"),
        object_mask=t("object_mask", torch.bool) if with_mask else None,
        mesh_hit=t("mesh_hit", torch.bool), mesh_points=t("mesh_points"), mesh_normals=t("mesh_normals"),
    )


def render_camera(model: PBIDRModel, coarse: CoarseMesh, camera: Camera, device: torch.device,
                  chunk: int = 4096) -> ViewRender:
    """Render every pixel of ``camera`` (normalised frame)."""
    origins, dirs = pixel_rays(camera, dtype=np.float32)
    rays = {"origins": origins, "dirs": dirs, **coarse.correspond(origins, dirs)}
    was_training = model.training
    model.eval()
    try:
        out = model.render_eval(batch_to_device(rays, device, with_mask=False), chunk=chunk)
    finally:
        model.train(was_training)
    h, w = camera.height, camera.width
    hit = out.hit.cpu().numpy().reshape(h, w)

    def img(x: torch.Tensor, to01=lambda a: a) -> np.ndarray:
        a = to01(x.detach().float().cpu().numpy().reshape(h, w, 3))
        a = np.clip(a, 0.0, 1.0)
        a[~hit] = 1.0
        return a

    return ViewRender(
        rgb=img(out.rgb, lambda a: (a + 1.0) / 2.0), diffuse=img(out.diffuse), specular=img(out.specular),
        albedo=img(out.albedo), normal=img(out.normals, lambda a: (a + 1.0) / 2.0), hit=hit,
        n_sdf_evals=int(out.n_sdf_evals),
    )
