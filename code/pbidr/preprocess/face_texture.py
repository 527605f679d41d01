"""The procedural face's texture, per texel: the true detailed surface's normals, the albedo under its
marks, and the analytic image model (albedo x grey shading + a grey glossy lobe) that ``renderer =
analytic`` writes; the Cycles renderer (:mod:`pbidr.preprocess.cycles_face`) bakes the same fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbidr.preprocess.conditions import FaceConditions, Lighting
from pbidr.preprocess.face_marks import apply_marks, mark_layers, mask_level
from pbidr.preprocess.face_model import (DEFAULT_TEXTURE_SIZE, _albedo, _grid_normals, coarse_surface,
                                         displacement_uv, face_plane, face_region, texel_uv)


@dataclass
class TexelFields:
    """Everything the texture is made of, per texel, in image layout (T, T[, 3])."""

    u: np.ndarray
    v: np.ndarray
    displacement: np.ndarray  # mm
    detailed_normal: np.ndarray  # unit, world frame
    shading: np.ndarray  # grey: ambient + diffuse * max(0, n.l) (+ fill)
    specular: np.ndarray | None  # grey, added to albedo x shading; None when matte
    albedo: np.ndarray  # float RGB in [0, 1]
    marks: np.ndarray  # bool, any mark
    mark_masks: dict[str, np.ndarray]  # bool per kind
    region: np.ndarray  # bool, the inner-face scoring region
    n_freckles: int

    def texture(self) -> np.ndarray:
        """The analytic texture (T, T, 3), float (may exceed 1 where a highlight is bright)."""
        lit = self.albedo * self.shading[..., None]
        return lit if self.specular is None else lit + self.specular[..., None]


def shade(normal: np.ndarray, lighting: Lighting) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey shading (..,) and glossy lobe (..,) or None of unit normals (.., 3) under ``lighting``: ambient +
    Lambert key (+ Lambert fill), and a Blinn-Phong lobe seen from the front (+z), lit by the key."""
    key = np.asarray(lighting.key_direction)
    ndotl = normal @ key
    shading = lighting.ambient + lighting.diffuse * np.maximum(ndotl, 0.0)
    if lighting.fill > 0:
        shading = shading + lighting.fill * np.maximum(normal @ np.asarray(lighting.fill_direction), 0.0)
    if lighting.specular <= 0:
        return shading, None
    half = key + np.array([0.0, 0.0, 1.0])
    half = half / np.linalg.norm(half)
    lobe = np.maximum(normal @ half, 0.0) ** lighting.exponent * (ndotl > 0)
    return shading, lighting.specular * lobe


def texel_fields(texture_size: int = DEFAULT_TEXTURE_SIZE, seed: int = 0,
                 conditions: FaceConditions | None = None) -> TexelFields:
    """Albedo, detailed normals and shading at every texel (the dense evaluation behind mesh.png).
    The texture is shaded on the *true* surface (the coarse surface without the misfit, plus the detail)."""
    cond = FaceConditions() if conditions is None else conditions
    u, v = texel_uv(texture_size)
    px, py = face_plane(u, v)
    coarse = coarse_surface(u, v)
    normal = _grid_normals(coarse)
    disp = displacement_uv(u, v, seed, cond.detail)
    detailed_normal = _grid_normals(coarse + disp[..., None] * normal)
    shading, specular = shade(detailed_normal, cond.lighting)
    layers = mark_layers(texture_size, seed, cond.marks)
    albedo = apply_marks(_albedo(px, py, seed), layers)
    masks = {kind: strength > mask_level(kind) for kind, strength in layers.items()}
    return TexelFields(
        u=u,
        v=v,
        displacement=disp,
        detailed_normal=detailed_normal,
        shading=shading,
        specular=specular,
        albedo=np.clip(albedo, 0.0, 1.0),
        marks=np.logical_or.reduce(list(masks.values())) if masks else np.zeros(u.shape, bool),
        mark_masks=masks,
        region=face_region(px, py),
        n_freckles=cond.marks.melanin,
    )
