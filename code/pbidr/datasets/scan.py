"""A scan directory (image/, mask/, cameras.npz, mesh.obj) as training data: pixels -> rays.

Images may be loaded at a lower resolution than they were rendered (``img_res``): they are
area-downsampled and the intrinsics scaled so that every ray still passes through the centre of
its (new) pixel. Rays and the coarse mesh live in the normalised frame (unit sphere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.geometry.cameras import Camera, load_cameras_npz, pixel_rays, to_normalised
from pbidr.geometry.raycast import MeshRayCaster
from pbidr.io.load import load_mesh
from pbidr.io.mesh import TexturedMesh
from pbidr.utils.config import Config, SettingError, setting
from pbidr.utils.images import read_image


@dataclass
class DatasetConfig(Config):
    """The ``dataset`` block: which views of the scan, at which size (:func:`load_scan`'s arguments)."""

    img_res: list[int] = setting([], "[H, W] to resample the scan's images to; [] keeps their size",
                                 entries_positive=True)
    views: list[int] = setting([], "0-based views to train on; [] = all")

    def check(self) -> None:
        if len(self.img_res) not in (0, 2):
            raise SettingError("img_res", f"img_res = {self.img_res!r}: must be [] or [H, W]")


@dataclass
class ScanData:
    """images (V, H, W, 3) float32 in [0, 1]; masks (V, H, W) bool; cameras in the normalised frame;
    scale_mat (4, 4) normalised -> world; mesh = the coarse mesh (world frame)."""

    scan_dir: Path
    images: np.ndarray
    masks: np.ndarray
    cameras: list[Camera]
    scale_mat: np.ndarray
    mesh: TexturedMesh

    @property
    def n_views(self) -> int:
        return len(self.cameras)

    @property
    def hw(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]


def resize_camera(cam: Camera, width: int, height: int) -> Camera:
    """The same camera for an image resampled to width x height (pixel centres at integers)."""
    sx, sy = width / cam.width, height / cam.height
    K = cam.K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return Camera(K=K, R=cam.R, t=cam.t, width=width, height=height)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the PNG header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as exc:  # PIL raises several types for a damaged file
        raise PbidrError(f"{path}: unreadable image ({exc.__class__.__name__})") from None
    return h, w


def check_scan_files(scan_dir: Path) -> tuple[list[Path], list[Path], tuple[int, int]]:
    """Images and masks of a scan: NNN.png numbered from 001 without gaps, one mask per image, all one
    size, as many as meta.json says. Returns (image paths, mask paths, (H, W)); a one-line error
    naming the first problem otherwise."""
    image_dir, mask_dir = scan_dir / "image", scan_dir / "mask"
    image_paths = sorted(image_dir.glob("*.png"))
    mask_paths = sorted(mask_dir.glob("*.png"))
    if not image_paths:
        raise PbidrError(f"{image_dir}: no images (*.png)")
    images, masks = {p.name for p in image_paths}, {p.name for p in mask_paths}
    for name in sorted(masks - images):
        raise PbidrError(f"{image_dir / name}: missing (its mask {mask_dir / name} exists); re-run preprocess")
    for name in sorted(images - masks):
        raise PbidrError(f"{mask_dir / name}: missing (the image {image_dir / name} has no mask); re-run preprocess")
    for k, p in enumerate(image_paths):
        if p.name != f"{k + 1:03d}.png":
            raise PbidrError(f"{p}: unexpected name; views are numbered 001.png, 002.png, ... without gaps "
                             f"(expected {k + 1:03d}.png here)")
    meta = _read_meta(scan_dir)
    n_meta = meta.get("n_views") if meta else None
    if isinstance(n_meta, int) and n_meta != len(image_paths):
        raise PbidrError(f"{image_dir}: holds {len(image_paths)} images but {scan_dir / 'meta.json'} says "
                         f"{n_meta} views (extra or missing images); re-run preprocess")
    hw0 = _image_size(image_paths[0])
    for img_path, mask_path in zip(image_paths, mask_paths):
        hw, mhw = _image_size(img_path), _image_size(mask_path)
        if hw != hw0:
            raise PbidrError(f"{img_path}: size {hw[1]}x{hw[0]} differs from view 1 ({hw0[1]}x{hw0[0]})")
        if mhw != hw:
            raise PbidrError(f"{mask_path}: mask size {mhw[1]}x{mhw[0]} differs from its image "
                             f"{img_path.name} ({hw[1]}x{hw[0]})")
    return image_paths, mask_paths, hw0


def _read_meta(scan_dir: Path) -> dict | None:
    """meta.json of a scan written by `pbidr preprocess` (None for an IDR scan without one)."""
    path = scan_dir / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PbidrError(f"{path}: unreadable ({exc.__class__.__name__}); re-run preprocess") from None
    if not isinstance(meta, dict):
        raise PbidrError(f"{path}: not a scan description (expected a JSON object)")
    return meta


def _check_mesh_against_meta(scan_dir: Path, mesh_path: Path, mesh: TexturedMesh) -> None:
    """The coarse mesh must still be the one the views were rendered from."""
    meta = _read_meta(scan_dir)
    info = meta.get("mesh") if meta else None
    if not isinstance(info, dict):
        return
    for key, have in (("vertices", len(mesh.vertices)), ("faces", len(mesh.faces))):
        want = info.get(key)
        if isinstance(want, int) and want != have:
            raise PbidrError(f"{mesh_path}: has {have} {key} but meta.json records {want}: the mesh changed after "
                             "the views were rendered; re-run preprocess")
    want_hash = info.get("sha256")
    if isinstance(want_hash, str):
        from pbidr.utils.atomic import file_sha256

        if file_sha256(mesh_path) != want_hash:
            raise PbidrError(f"{mesh_path}: differs from the mesh the views were rendered from (SHA-256 in "
                             "meta.json); re-run preprocess")


def load_scan(scan_dir: str | Path, img_res: tuple[int, int] | None = None, views: list[int] | None = None) -> ScanData:
    """Load a scan directory; ``img_res`` (H, W) resamples the images, ``views`` (0-based) selects some."""
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise PbidrError(f"{scan_dir}: scan directory not found (run `pbidr preprocess` or script/data_process.sh)")
    image_paths, mask_paths, (h0, w0) = check_scan_files(scan_dir)
    cameras, scale_mat = load_cameras_npz(scan_dir / "cameras.npz", len(image_paths), w0, h0)
    mesh_path = scan_dir / "mesh.obj"
    if not mesh_path.is_file():
        raise PbidrError(f"{mesh_path}: the scan's coarse mesh is missing (re-run preprocess)")
    mesh = load_mesh(mesh_path)
    _check_mesh_against_meta(scan_dir, mesh_path, mesh)
    idx = list(range(len(image_paths))) if views is None else list(views)
    for i in idx:
        if not 0 <= i < len(image_paths):
            raise PbidrError(f"{scan_dir}: view {i + 1} does not exist (the scan has {len(image_paths)} views)")
    h, w = (h0, w0) if img_res is None else (int(img_res[0]), int(img_res[1]))
    images = np.empty((len(idx), h, w, 3), np.float32)
    masks = np.empty((len(idx), h, w), bool)
    cams = []
    for k, i in enumerate(idx):
        img = read_image(image_paths[i])
        mask = read_image(mask_paths[i], grey=True)
        if img.shape[:2] != (h0, w0) or mask.shape != (h0, w0):
            raise PbidrError(f"{image_paths[i]}: size {img.shape[1]}x{img.shape[0]} differs from view 1 "
                             f"({w0}x{h0}) or from its mask")
        if (h, w) != (h0, w0):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
        images[k] = img.astype(np.float32) / 255.0
        masks[k] = mask >= 128
        cams.append(resize_camera(cameras[i], w, h))
    return ScanData(scan_dir=scan_dir, images=images, masks=masks, cameras=cams, scale_mat=scale_mat, mesh=mesh)


class CoarseMesh:
    """The coarse mesh in the normalised frame, for per-ray correspondences (Embree)."""

    def __init__(self, mesh: TexturedMesh, scale_mat: np.ndarray):
        self.vertices = to_normalised(mesh.vertices, scale_mat)
        self.faces = mesh.faces
        self.vertex_normals = mesh.vertex_normals()  # a uniform scale keeps normals
        self.caster = MeshRayCaster(self.vertices, mesh.faces)

    def correspond(self, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
        """First hits of rays (N, 3): ``mesh_hit`` (N,) bool, ``mesh_points`` (N, 3) and unit
        barycentric-interpolated vertex normals ``mesh_normals`` (N, 3)."""
        hits = self.caster.intersect(origins, dirs)
        normals = self.caster.interpolate(hits, self.vertex_normals)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        return {"mesh_hit": hits.hit, "mesh_points": self.caster.points(hits).astype(np.float32),
                "mesh_normals": normals.astype(np.float32)}


class RaySampler:
    """Random pixels of all views -> rays, ground truth and the coarse-mesh correspondence.

    Rays are precomputed per view (float32); the coarse mesh is cast per batch with Embree, so
    memory does not grow with the image count or resolution.
    """

    def __init__(self, data: ScanData):
        self.data = data
        h, w = data.hw
        self.n_pixels = data.n_views * h * w
        self.dirs = np.stack([pixel_rays(cam, dtype=np.float32)[1] for cam in data.cameras])  # (V, HW, 3)
        self.centers = np.stack([cam.center for cam in data.cameras]).astype(np.float32)  # (V, 3)
        self.rgb = data.images.reshape(data.n_views, h * w, 3)
        self.mask = data.masks.reshape(data.n_views, h * w)
        self.coarse = CoarseMesh(data.mesh, data.scale_mat)
        self._mask_pixels: np.ndarray | None = None  # flat indices of mask pixels, made on first use

    def rays(self, view: np.ndarray, pixel: np.ndarray) -> dict[str, np.ndarray]:
        """Rays (N,) of (view index, flat pixel index) pairs, with targets and mesh correspondence."""
        origins = self.centers[view]
        dirs = self.dirs[view, pixel]
        return {
            "origins": origins, "dirs": dirs, "rgb": self.rgb[view, pixel], "object_mask": self.mask[view, pixel],
            **self.coarse.correspond(origins, dirs), "view": view, "pixel": pixel,
        }

    def sample(self, n_rays: int, rng: np.random.Generator, mask_fraction: float = 0.0) -> dict[str, np.ndarray]:
        """``n_rays`` random pixels over all views: uniformly (IDR), or ``mask_fraction`` of them
        drawn uniformly from the object mask's pixels and the rest from all pixels."""
        n_mask = int(round(float(mask_fraction) * n_rays))
        flat = rng.integers(0, self.n_pixels, size=n_rays - n_mask)
        if n_mask > 0:
            if self._mask_pixels is None:
                self._mask_pixels = np.flatnonzero(self.mask)
            if len(self._mask_pixels) == 0:
                raise PbidrError(f"{self.data.scan_dir}: every mask is empty; no ray can be drawn inside the object")
            inside = self._mask_pixels[rng.integers(0, len(self._mask_pixels), size=n_mask)]
            flat = np.concatenate([inside, flat])
        per_view = self.dirs.shape[1]
        return self.rays(flat // per_view, flat % per_view)

    def view_rays(self, view: int) -> dict[str, np.ndarray]:
        """Every pixel of one view, row-major."""
        n = self.dirs.shape[1]
        return self.rays(np.full(n, view), np.arange(n))
