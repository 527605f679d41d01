"""Grey clay renders of a mesh (compare.png: coarse vs detailed), by Embree ray casting.

Smooth shading from interpolated area-weighted vertex normals, Lambert from a light near the
camera (a headlight from above left) plus ambient, white background. Geometry detail shows up
in the shading, not in a texture.
"""

from __future__ import annotations

import numpy as np

from pbidr.geometry.cameras import Camera, pixel_rays
from pbidr.geometry.raycast import MeshRayCaster
from pbidr.io.mesh import TexturedMesh
from pbidr.utils.images import contact_sheet

__all__ = ["render_shaded", "side_by_side", "contact_sheet"]

CLAY = np.array([0.78, 0.76, 0.72])
# Direction toward the light in camera coordinates (+x right, +y down, +z forward): behind the
# camera, a little up and to the left, so relief casts readable shading.
HEADLIGHT_CAMERA = np.array([-0.35, -0.45, -1.0])


def render_shaded(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    light_dir: np.ndarray | None = None,
    background: float = 1.0,
    ambient: float = 0.25,
    color: np.ndarray = CLAY,
) -> np.ndarray:
    """Clay render (H, W, 3) uint8 of a triangle mesh seen by ``camera``.

    ``vertices`` (V, 3) in the camera's frame (the normalised frame for rig cameras).
    ``light_dir`` (3,): direction toward the light in that frame; default a headlight slightly
    above left of the camera. Faces are lit from both sides (an open face mesh shows its back
    in grey, not black). ``background`` grey level in [0, 1].
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    origins, dirs = pixel_rays(camera)
    caster = MeshRayCaster(vertices, faces)
    hits = caster.intersect(origins, dirs)
    normals = TexturedMesh(vertices=vertices, faces=faces).vertex_normals()
    n = caster.interpolate(hits, normals)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    # Two-sided: turn normals toward the viewer.
    n *= np.where(np.einsum("nc,nc->n", n, dirs) > 0, -1.0, 1.0)[:, None]
    if light_dir is None:
        light = camera.R.T @ HEADLIGHT_CAMERA
    else:
        light = np.asarray(light_dir, dtype=np.float64).reshape(3)
    light = light / np.linalg.norm(light)
    lambert = np.clip(n @ light, 0.0, 1.0)
    shade = (ambient + (1.0 - ambient) * lambert)[:, None] * np.asarray(color, dtype=np.float64)[None, :]
    rgb = np.where(hits.hit[:, None], shade, float(background))
    img = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img.reshape(camera.height, camera.width, 3)


def side_by_side(images: list[np.ndarray], labels: list[str] | None = None, pad: int = 4) -> np.ndarray:
    """One row of images (resized to a common height) with a small label on each: uint8 RGB."""
    return contact_sheet([list(images)], [list(labels)] if labels is not None else None, pad=pad)
