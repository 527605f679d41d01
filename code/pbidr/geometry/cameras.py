"""Cameras: the one module that owns the pinhole convention, the view rig and IDR's cameras.npz.

Convention (OpenCV): a point X projects to x_pixel ~ K (R X + t); camera +x is image right, +y is
image down, +z is forward. The centre of pixel (row i, col j) is the image point (j, i), as IDR's
``uv`` grid assumes, so a centred camera has its principal point at ((W-1)/2, (H-1)/2).

Frames: the networks work in a *normalised* frame where the object's bounding sphere (times a
margin) is the unit sphere. ``scale_mat`` maps normalised to world coordinates. The rig is built
in the normalised frame; ``world_mat = K[R|t] @ inv(scale_mat)`` so that decomposing
``world_mat @ scale_mat`` gives the rig back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pbidr.errors import PbidrError

# The original renders the normalised unit sphere from distance 8; this field of view frames a
# sphere of radius 1.15 (the object plus a little air) edge to edge.
DEFAULT_DISTANCE = 8.0
DEFAULT_FOV_DEG = 2.0 * math.degrees(math.atan(1.15 / DEFAULT_DISTANCE))
DEFAULT_MARGIN = 1.1


@dataclass(frozen=True)
class Camera:
    """A pinhole camera. ``K`` (3, 3), ``R`` (3, 3) world-to-camera rotation, ``t`` (3,)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the frame of R, t: (3,)."""
        return -self.R.T @ self.t

    @property
    def P(self) -> np.ndarray:
        """Projection matrix K[R|t] as a 4x4 (last row 0 0 0 1)."""
        P = np.eye(4)
        P[:3, :4] = self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)
        return P

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) points to pixel coordinates (N, 2) as (col, row), and depth (N,)."""
        cam = points @ self.R.T + self.t
        pix = cam @ self.K.T
        depth = cam[:, 2]
        return pix[:, :2] / pix[:, 2:3], depth


def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    """K for a centred camera with square pixels and focal length ``focal`` in pixels."""
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` across ``size`` pixels."""
    return size / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at ``eye`` looking at ``target`` with ``up`` up in the image."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)  # camera +x; then +y = forward x right points down in the image
    if np.linalg.norm(right) < 1e-9:
        raise PbidrError("camera up direction is parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    t = -R @ eye
    return R, t


def rotation_about(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotation matrix (3, 3) of ``angle_deg`` about ``axis`` (right hand)."""
    rvec = np.asarray(axis, dtype=np.float64)
    rvec = rvec / np.linalg.norm(rvec) * math.radians(angle_deg)
    return cv2.Rodrigues(rvec)[0]


@dataclass(frozen=True)
class Rig:
    """The original's view rig: yaw views about the up axis and pitch views about the side axis."""

    yaw: int = 17
    yaw_angle: float = 45.0
    pitch: int = 0
    pitch_angle: float = 30.0
    res: int = 1024
    distance: float = DEFAULT_DISTANCE
    fov: float = DEFAULT_FOV_DEG
    front: tuple[float, float, float] = (0.0, 0.0, 1.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def validate(self) -> None:
        if self.yaw < 0 or self.pitch < 0 or self.yaw + self.pitch == 0:
            raise PbidrError(f"view rig: need at least one view (--yaw {self.yaw} --pitch {self.pitch})")
        if self.res < 8:
            raise PbidrError(f"view rig: --res {self.res} is too small (at least 8)")
        if not (self.distance > 1.0):
            raise PbidrError(f"view rig: --distance {self.distance} must exceed 1 (the unit sphere)")
        if not (0.0 < self.fov < 170.0):
            raise PbidrError(f"view rig: --fov {self.fov} must be in (0, 170) degrees")
        f, u = np.asarray(self.front, float), np.asarray(self.up, float)
        if np.linalg.norm(f) == 0 or np.linalg.norm(u) == 0 or np.linalg.norm(np.cross(f, u)) < 1e-6:
            raise PbidrError(f"view rig: --front {self.front} and --up {self.up} must be non-zero and not parallel")

    def angles(self) -> list[tuple[float, float]]:
        """(yaw, pitch) in degrees of every view, yaw sweep first, then pitch sweep without duplicates."""
        views = [(float(a), 0.0) for a in _sweep(self.yaw, self.yaw_angle)]
        for p in _sweep(self.pitch, self.pitch_angle):
            if (0.0, float(p)) not in views:
                views.append((0.0, float(p)))
        return views

    def cameras(self) -> list[Camera]:
        """The rig's cameras in the normalised frame, all looking at the origin."""
        self.validate()
        front = np.asarray(self.front, float)
        front /= np.linalg.norm(front)
        up = np.asarray(self.up, float)
        up = up - front * (up @ front)
        up /= np.linalg.norm(up)
        side = np.cross(up, front)
        K = intrinsics(focal_from_fov(self.fov, self.res), self.res, self.res)
        cams = []
        for yaw, pitch in self.angles():
            rot = rotation_about(up, yaw) @ rotation_about(side, -pitch)
            eye = rot @ front * self.distance
            R, t = look_at(eye, np.zeros(3), rot @ up)
            cams.append(Camera(K=K, R=R, t=t, width=self.res, height=self.res))
        return cams


def _sweep(n: int, angle: float) -> np.ndarray:
    if n <= 0:
        return np.zeros(0)
    if n == 1:
        return np.zeros(1)
    return np.linspace(-angle, angle, n)


# ---------------------------------------------------------------------------------------------
# Normalisation


def bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (3,) and radius of a bounding sphere: the bounding-box centre and the farthest vertex."""
    center = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    return center, radius


def scale_matrix(center: np.ndarray, radius: float, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """4x4 ``scale_mat`` mapping the normalised unit sphere onto the object's sphere times ``margin``."""
    s = radius * margin
    M = np.eye(4)
    M[:3, :3] *= s
    M[:3, 3] = center
    return M


def to_normalised(points: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    return (points - scale_mat[:3, 3]) / scale_mat[0, 0]


def to_world(points: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    return points * scale_mat[0, 0] + scale_mat[:3, 3]


# ---------------------------------------------------------------------------------------------
# Rays


def pixel_grid(width: int, height: int) -> np.ndarray:
    """Image points (H*W, 2) as (col, row) of every pixel centre, row-major."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)


def pixel_rays(
    camera: Camera, pixels: np.ndarray | None = None, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixel centres: origins (N, 3) and unit directions (N, 3) in the camera's frame.

    ``pixels`` are (N, 2) image points (col, row); by default every pixel, row-major. The renderer
    and the trainer both call this, so they agree on every ray. ``dtype=np.float32`` halves the
    memory traffic for whole images (the renderer's case).
    """
    K_inv = np.linalg.inv(camera.K)
    # direction = R^T K^-1 (col, row, 1): the image-to-world map of the three pixel coordinates.
    A = (camera.R.T @ K_inv).astype(dtype)
    if pixels is None:
        cols = np.arange(camera.width, dtype=dtype)
        rows = np.arange(camera.height, dtype=dtype)
        dirs = rows[:, None, None] * A[:, 1] + cols[None, :, None] * A[:, 0] + A[:, 2]
        dirs = dirs.reshape(-1, 3)
    else:
        pixels = np.asarray(pixels, dtype=dtype)
        dirs = pixels[:, :1] * A[:, 0] + pixels[:, 1:2] * A[:, 1] + A[:, 2]
    dirs /= np.sqrt(np.einsum("ij,ij->i", dirs, dirs))[:, None]
    origins = np.broadcast_to(camera.center.astype(dtype), dirs.shape).copy()
    return origins, dirs


# ---------------------------------------------------------------------------------------------
# cameras.npz (IDR format)


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 3x4 (or 4x4) projection matrix into K (fx normalised to K[2,2]=1), R and t."""
    K, R, c_h = cv2.decomposeProjectionMatrix(np.asarray(P, dtype=np.float64)[:3, :4])[:3]
    K = K / K[2, 2]
    c = (c_h[:3] / c_h[3]).ravel()
    t = -R @ c
    return K, R, t


def camera_from_world_mat(world_mat: np.ndarray, scale_mat: np.ndarray, width: int, height: int) -> Camera:
    """The camera in the normalised frame, from a cameras.npz pair."""
    K, R, t = decompose_projection(world_mat @ scale_mat)
    return Camera(K=K, R=R, t=t, width=width, height=height)


def cameras_npz_arrays(cameras: list[Camera], scale_mat: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of an IDR cameras.npz for normalised-frame ``cameras`` and one ``scale_mat``."""
    out: dict[str, np.ndarray] = {}
    inv_scale = np.linalg.inv(scale_mat)
    for i, cam in enumerate(cameras):
        out[f"world_mat_{i}"] = cam.P @ inv_scale
        out[f"scale_mat_{i}"] = scale_mat.copy()
    return out


def load_cameras_npz(path: str | Path, n_views: int, width: int, height: int) -> tuple[list[Camera], np.ndarray]:
    """Read IDR cameras.npz: the normalised-frame cameras of ``n_views`` views and view 0's scale_mat."""
    path = Path(path)
    try:
        data = np.load(path)
    except Exception as exc:  # numpy raises several types for a bad file
        raise PbidrError(f"{path}: cannot read cameras ({exc.__class__.__name__}: {exc})") from None
    cams = []
    scale0 = None
    for i in range(n_views):
        for key in (f"world_mat_{i}", f"scale_mat_{i}"):
            if key not in data:
                raise PbidrError(f"{path}: missing {key} (expected {n_views} views to match the images)")
        world_mat, scale_mat = data[f"world_mat_{i}"], data[f"scale_mat_{i}"]
        if not (np.all(np.isfinite(world_mat)) and np.all(np.isfinite(scale_mat))):
            raise PbidrError(f"{path}: world_mat_{i} or scale_mat_{i} is not finite")
        scale0 = scale_mat if scale0 is None else scale0
        cams.append(camera_from_world_mat(world_mat, scale_mat, width, height))
    extra = sum(1 for k in data.files if k.startswith("world_mat_") and not k.startswith("world_mat_inv"))
    if extra != n_views:
        raise PbidrError(f"{path}: holds {extra} cameras but there are {n_views} images")
    return cams, scale0
