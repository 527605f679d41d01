"""The texel fit's image model as a shading callable for the explicit renderer
(``pbidr.evaluation.render_explicit``): colour = albedo map (at the hit's UV) x the fitted diffuse light of
the rendered mesh's normal + the fitted grey glossy lobe of that normal (zero when the texture held none).
The parts are PBIDR's: albedo, diffuse shading, specular. The lobe is the one the texture holds (its
half-vector fixed, as baked into the texture), not a function of the render's own view."""

from __future__ import annotations

import numpy as np
import torch

from pbidr.detail.fit import Light


class MapShading:
    """``shade(points, normals, view_dirs, face, bary)`` for a mesh with UVs (``uv`` (T, 2),
    ``face_uv`` (F, 3)) shaded by a ``MapSDF``'s albedo map and light."""

    def __init__(self, field, uv: np.ndarray, face_uv: np.ndarray):
        self.field = field
        self.uv = np.asarray(uv, dtype=np.float64)
        self.face_uv = np.asarray(face_uv, dtype=np.int64)
        self.light: Light = field.light()
        self.albedo = field.albedo.detach().cpu()

    def __call__(self, points, normals, view_dirs, face, bary) -> dict:
        uv = np.einsum("nk,nkc->nc", bary, self.uv[self.face_uv[face]])
        with torch.no_grad():
            albedo = self.field.sample_map(self.albedo, torch.as_tensor(uv, dtype=torch.float32)).numpy()
            shade = self.light.shading(torch.as_tensor(normals, dtype=torch.float64)).clamp_min(0.0).numpy()
            lobe = self.light.specular(torch.as_tensor(normals, dtype=torch.float64)).numpy()
        diffuse = np.repeat(shade[:, None], 3, axis=1)
        specular = np.repeat(lobe[:, None], 3, axis=1)
        return {"rgb": np.clip(albedo * diffuse + specular, 0.0, 1.0), "diffuse": np.clip(diffuse, 0.0, 1.0),
                "specular": np.clip(specular, 0.0, 1.0), "albedo": np.clip(albedo, 0.0, 1.0)}
