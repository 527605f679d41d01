"""``pbidr photo``: one face photo -> a raw textured face mesh that ``pbidr preprocess`` accepts.

MediaPipe's face mesh (0.10.14, whose model ships inside the wheel, so it runs offline) gives 468
dense landmarks: x, y in the photo and a relative depth z on the same scale. We build the
triangle mesh over them, put it in the pipeline's frame (the face looks toward +z, +y up, about
millimetres: the eye centres are ``--interocular`` mm apart), densify it with Loop subdivision and
texture it with the photo itself.

Triangles. The wheel holds the canonical mesh only as edges (``FACEMESH_TESSELATION``), and those
edges leave out the triangles that close the eyes and the mouth. So the triangles are the edge
graph's 3-cliques, less the separating ones (a 3-cycle around a vertex is not a face), with every
hole but the face's outline closed by ear clipping along the shortest diagonals
(``pbidr.geometry.triangulation``). For MediaPipe's graph this gives 898 triangles, the count of
the canonical mesh (a disc with V = 468, B = 36: F = 2V - B - 2).

Texture. The mesh is the photo's view seen orthographically (MediaPipe's x, y are the image
positions, z is on their scale), so a vertex's texture coordinate is its own image position,
also after subdivision moved it. The texture is the photo cropped to the face plus a margin.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pbidr.version import __version__
from pbidr.errors import PbidrError
from pbidr.geometry.triangulation import triangles_from_edges, untangle
from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj
from pbidr.utils.atomic import write_json
from pbidr.utils.outputs import check_output, stage_output
from pbidr.utils.images import read_image, write_png

MEDIAPIPE_VERSION = "0.10.14"
# One pip call for both files, so that protobuf's cap and tensorboard are resolved together.
INSTALL_HINT = (f"pip install -r requirements.txt -r requirements-photo.txt && "
                f"pip install --no-deps mediapipe=={MEDIAPIPE_VERSION} (from the repository root; see docs/photo.md)")
N_LANDMARKS = 468
BASE_TRIANGLES = 898  # MediaPipe's canonical face mesh: a disc over the 468 landmarks with a 36-edge outline
MIN_IMAGE_SIDE = 64
DEFAULT_INTEROCULAR_MM = 63.0  # adult mean distance between the pupils
DEFAULT_SUBDIVIDE = 3  # 898 -> 57,472 triangles, about the built-in sample's density
MAX_FACES = 4_000_000  # --subdivide beyond this many triangles is refused (memory)
MAX_DETECTED = 4  # faces MediaPipe looks for; the largest is used
TEXTURE_MARGIN = 0.1  # crop margin around the landmarks, as a fraction of the face's size
SMALL_FACE_PX = 40.0  # eye centres closer than this in the photo: the texture will be blurry
LANDMARKS_SHEET_PX = 1024  # long side of landmarks.png

OUTPUT_FILES = ("mesh.obj", "mesh.mtl", "mesh.png", "landmarks.png", "photo.json")


# --------------------------------------------------------------------------------------------
# MediaPipe (optional extra)
# --------------------------------------------------------------------------------------------

def import_face_mesh():
    """MediaPipe's face-mesh module and its connection sets; a one-line error when not installed."""
    try:
        from mediapipe.python.solutions import face_mesh, face_mesh_connections
    except ImportError as err:
        raise PbidrError(f"photos need MediaPipe {MEDIAPIPE_VERSION}, which is not importable here ({err}); "
                         f"install it with: {INSTALL_HINT}") from err
    return face_mesh, face_mesh_connections


@contextlib.contextmanager
def _native_log_captured() -> Iterator[None]:
    """MediaPipe's C++ side (TFLite, absl) writes INFO/WARNING lines straight to file descriptor 2.
    Keep them off the terminal; show them only when MediaPipe itself fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 2)
    failure: BaseException | None = None
    try:
        with warnings.catch_warnings():
            # protobuf 4.25 deprecation notice raised inside MediaPipe, not ours to fix
            warnings.filterwarnings("ignore", category=UserWarning, module=r"google\.protobuf")
            yield
    except BaseException as err:
        failure = err
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if failure is not None and not isinstance(failure, PbidrError):
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
        log.close()


@dataclass
class FaceLandmarks:
    """MediaPipe's landmarks of one face in the photo's pixel units.

    points (468, 3): x (column) and y (row) in continuous pixel coordinates (pixel (i, j) covers
    [j, j + 1) x [i, i + 1)); z the relative depth on the same scale, smaller = nearer the camera.
    n_found: faces MediaPipe found (the largest one is kept). right_eye / left_eye: landmark
    indices of each eye's contour (the subject's right and left)."""

    points: np.ndarray
    n_found: int
    right_eye: np.ndarray
    left_eye: np.ndarray
    tesselation: np.ndarray  # (E, 2) MediaPipe's face-mesh edges


SEARCH_LEVELS = 4  # level n looks at squares of 1/n the photo's long side


def search_windows(height: int, width: int, level: int) -> list[tuple[int, int, int, int]]:
    """Windows (x0, y0, x1, y1) of search level ``level``: 1 is the whole photo; level n covers it
    with squares of side long/n overlapping by half, so a face small in the photo fills one of them."""
    if level == 1:
        return [(0, 0, width, height)]
    side = int(np.ceil(max(height, width) / level))

    def starts(length: int) -> np.ndarray:
        size = min(side, length)
        n = int(np.ceil((length - size) / (size / 2))) + 1
        return np.rint(np.linspace(0, length - size, n)).astype(int), size

    (xs, sw), (ys, sh) = starts(width), starts(height)
    return [(int(x), int(y), int(x) + sw, int(y) + sh) for y in ys for x in xs]


def detect_landmarks(image: np.ndarray, source: str | Path, max_faces: int = MAX_DETECTED) -> FaceLandmarks:
    """MediaPipe face mesh on an RGB uint8 image (H, W, 3); the largest face's 468 landmarks.

    MediaPipe's face detector sees the image at 128 x 128, so a face smaller than about a fifth of
    the photo goes unseen; when the whole photo shows none, overlapping windows of 1/2, 1/3 and
    1/4 the photo's size are searched in turn (the first level that finds a face wins)."""
    face_mesh, connections = import_face_mesh()
    h, w = image.shape[:2]
    found: list[tuple[np.ndarray, float]] = []  # landmarks in the photo's pixels, margin to the window edge
    with _native_log_captured():
        with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False,
                                min_detection_confidence=0.5) as detector:
            for level in range(1, SEARCH_LEVELS + 1):
                for x0, y0, x1, y1 in search_windows(h, w, level):
                    if min(x1 - x0, y1 - y0) < MIN_IMAGE_SIDE:
                        continue
                    result = detector.process(np.ascontiguousarray(image[y0:y1, x0:x1, :3]))
                    for face in result.multi_face_landmarks or []:
                        # MediaPipe normalises x by the width, y by the height and z by the width.
                        p = np.array([(q.x, q.y, q.z) for q in face.landmark], dtype=np.float64)
                        p *= (x1 - x0, y1 - y0, x1 - x0)
                        p[:, :2] += (x0, y0)
                        lo, hi = p[:, :2].min(0), p[:, :2].max(0)
                        margin = min((lo - (x0, y0)).min(), ((x1, y1) - hi).min()) / max(float((hi - lo).max()), 1.0)
                        found.append((p, margin if level > 1 else np.inf))
                if found:
                    break
    if not found:
        raise PbidrError(f"{source}: no face found (MediaPipe needs a face that is roughly frontal and not tiny in the "
                         f"photo; try a closer crop around the face)")
    faces = _distinct_faces(found)
    points = max(faces, key=lambda p: float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])))
    if points.shape != (N_LANDMARKS, 3):
        raise PbidrError(f"{source}: MediaPipe returned {len(points)} landmarks, expected {N_LANDMARKS} "
                         f"(use mediapipe=={MEDIAPIPE_VERSION})")
    return FaceLandmarks(
        points=points,
        n_found=len(faces),
        right_eye=np.unique(np.array(sorted(connections.FACEMESH_RIGHT_EYE))),
        left_eye=np.unique(np.array(sorted(connections.FACEMESH_LEFT_EYE))),
        tesselation=np.array(sorted(connections.FACEMESH_TESSELATION), dtype=np.int64),
    )


def _distinct_faces(found: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
    """One detection per face: overlapping windows see a face more than once; keep the sighting
    farthest inside its window (the least likely to be cut by the window's edge)."""
    def box(p: np.ndarray) -> np.ndarray:
        return np.concatenate([p[:, :2].min(0), p[:, :2].max(0)])

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
        union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
        return float(inter / union) if union > 0 else 0.0

    kept: list[np.ndarray] = []
    for points, _ in sorted(found, key=lambda f: -f[1]):
        if all(iou(box(points), box(k)) < 0.3 for k in kept):
            kept.append(points)
    return kept


# --------------------------------------------------------------------------------------------
# Mesh in the pipeline's frame
# --------------------------------------------------------------------------------------------

@dataclass
class PhotoMesh:
    """The photo's face mesh. ``mesh``: subdivided, textured, world frame (mm, face toward +z, +y up);
    its first 468 vertices are the landmarks (moved by the smoothing). ``base_faces`` (898, 3)
    triangles over the landmarks, ``filled`` (898,) those that close the eyes and mouth;
    ``landmarks_world`` (468, 3); ``crop`` (x0, y0, x1, y1) the texture's box in the photo's pixels;
    ``mm_per_pixel`` the scale; ``pixel_center`` (3,) the photo point (x, y, z) at the world origin;
    ``untangle_px`` (468,) how far ``untangle`` moved each landmark in the photo's pixels and
    ``still_folded`` the triangles it could not unfold."""

    mesh: TexturedMesh
    base_faces: np.ndarray
    filled: np.ndarray
    landmarks_world: np.ndarray
    crop: tuple[int, int, int, int]
    mm_per_pixel: float
    pixel_center: np.ndarray
    still_folded: int = 0
    untangle_px: np.ndarray | None = None

    def to_pixels(self, world: np.ndarray) -> np.ndarray:
        """Photo positions (N, 2) as (x, y) of world points (N, 3): the orthographic view along -z."""
        return world[:, :2] * np.array([1.0, -1.0]) / self.mm_per_pixel + self.pixel_center[:2]


def build_photo_mesh(
    image: np.ndarray,
    landmarks: FaceLandmarks,
    subdivide: int = DEFAULT_SUBDIVIDE,
    interocular_mm: float = DEFAULT_INTEROCULAR_MM,
) -> PhotoMesh:
    """Triangulate, place in the world frame, Loop-subdivide and texture the photo's face."""
    import trimesh.remesh

    pts = landmarks.points
    eye_distance = float(np.linalg.norm(pts[landmarks.left_eye].mean(0) - pts[landmarks.right_eye].mean(0)))
    if not eye_distance > 0:
        raise PbidrError("MediaPipe's landmarks put both eyes at one point")
    mm_per_pixel = interocular_mm / eye_distance
    center = pts.mean(axis=0)
    # image x right, y down, z away from the camera -> x right, y up, z toward the camera: a rotation
    # by 180 degrees about x, so nothing is mirrored.
    world = (pts - center) * mm_per_pixel * np.array([1.0, -1.0, -1.0])
    planar = world[:, :2].copy()
    base_faces, filled = triangles_from_edges(landmarks.tesselation, planar, hint=f"; use mediapipe=={MEDIAPIPE_VERSION}")
    world[:, :2], still_folded = untangle(planar, base_faces)

    vertices, faces = world, base_faces
    if subdivide > 0:
        vertices, faces = trimesh.remesh.subdivide_loop(world, base_faces, iterations=subdivide)
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)

    # Every vertex lies inside the landmarks' box (untangling and Loop take convex combinations).
    h, w = image.shape[:2]
    lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
    pad = TEXTURE_MARGIN * (hi - lo)
    x0, y0 = (int(max(0.0, np.floor(v))) for v in lo - pad)
    x1, y1 = int(min(w, np.ceil(hi[0] + pad[0]))), int(min(h, np.ceil(hi[1] + pad[1])))
    pix = vertices[:, :2] * (1.0, -1.0) / mm_per_pixel + center[:2]
    uv = np.stack([(pix[:, 0] - x0) / (x1 - x0), 1.0 - (pix[:, 1] - y0) / (y1 - y0)], axis=1)
    mesh = TexturedMesh(
        vertices=vertices, faces=faces,
        uv=np.clip(uv, 0.0, 1.0),  # a face cut by the photo's edge reads the edge texels there
        face_uv=faces, texture=np.ascontiguousarray(image[y0:y1, x0:x1, :3]), material_name="photo",
    )
    return PhotoMesh(
        mesh=mesh, base_faces=base_faces, filled=filled, landmarks_world=world, crop=(x0, y0, x1, y1),
        mm_per_pixel=mm_per_pixel, pixel_center=center, still_folded=still_folded,
        untangle_px=np.linalg.norm(world[:, :2] - planar, axis=1) / mm_per_pixel,
    )


def draw_landmarks(image: np.ndarray, photo_mesh: PhotoMesh, caption: str) -> np.ndarray:
    """The photo's face crop (long side ``LANDMARKS_SHEET_PX``) with the triangles over the landmarks
    (as meshed, after ``untangle``): green from MediaPipe's mesh, orange where the eyes and mouth
    were closed, dots on the landmarks."""
    x0, y0, x1, y1 = photo_mesh.crop
    crop = image[y0:y1, x0:x1, :3]
    f = LANDMARKS_SHEET_PX / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
    sheet = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    shift = 4  # sub-pixel line positions
    points = photo_mesh.to_pixels(photo_mesh.landmarks_world)
    pix = np.rint((points - (x0, y0)) * f * (1 << shift)).astype(np.int32)
    faces = photo_mesh.base_faces
    for mask, colour in ((~photo_mesh.filled, (60, 230, 60)), (photo_mesh.filled, (255, 150, 30))):
        cv2.polylines(sheet, list(pix[faces[mask]]), True, colour, 1, cv2.LINE_AA, shift)
    for p in pix:
        cv2.circle(sheet, (int(p[0]), int(p[1])), 2 << shift, (255, 255, 255), -1, cv2.LINE_AA, shift)
    scale = 0.6
    (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = th + base + 12
    sheet[:band] = (sheet[:band].astype(np.float32) * 0.35).astype(np.uint8)  # darkened strip under the caption
    cv2.putText(sheet, caption, (8, band - base - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

def read_photo(path: str | Path) -> np.ndarray:
    """The photo as RGB uint8 (EXIF orientation applied); one-line errors for unreadable or tiny images."""
    path = Path(path)
    if path.is_dir():
        raise PbidrError(f"{path}: is a folder, expected a photo (JPEG, PNG, ...)")
    image = read_image(path)
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise PbidrError(f"{path}: the image is only {w}x{h} pixels; a face photo of at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed (a few hundred pixels across the face "
                         f"is better)")
    return image


def _check_output(output: Path, image_path: Path, overwrite: bool) -> None:
    """RAW_DIR is replaced as a whole: refuse the photo's own folder, then apply the output policy."""
    if image_path.resolve().is_relative_to(output.resolve()):
        raise PbidrError(f"{output}: the photo {image_path} lies inside the output folder, which is replaced "
                         f"as a whole; choose another --output")
    check_output(output, "photo", overwrite)


def _check_photo_args(subdivide: int, interocular_mm: float) -> None:
    if subdivide < 0:
        raise PbidrError(f"--subdivide {subdivide}: expected 0 or more Loop steps")
    if BASE_TRIANGLES * 4**subdivide > MAX_FACES:
        raise PbidrError(f"--subdivide {subdivide}: would make {BASE_TRIANGLES * 4**subdivide:,} triangles "
                         f"(at most {MAX_FACES:,}); 3 gives 57,472")
    if not interocular_mm > 0:
        raise PbidrError(f"--interocular {interocular_mm}: expected a positive distance in mm")


def _landmark_notes(image: np.ndarray, image_path: Path, landmarks: FaceLandmarks) -> list[str]:
    """Warnings about the detected face: several faces, a small face, a face past the photo's edge."""
    notes = []
    if landmarks.n_found > 1:
        notes.append(f"{landmarks.n_found} faces found in {image_path}; using the largest")
    eye_px = float(np.linalg.norm(landmarks.points[landmarks.left_eye, :2].mean(0)
                                  - landmarks.points[landmarks.right_eye, :2].mean(0)))
    if eye_px < SMALL_FACE_PX:
        notes.append(f"the face is small in {image_path} (eyes {eye_px:.0f} px apart); its texture will be blurry")
    h, w = image.shape[:2]
    xy = landmarks.points[:, :2]
    if (xy < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] > h).any():
        notes.append(f"the face runs past the edge of {image_path}; the mesh there takes the edge's colours")
    return notes


def _photo_info(image_path: Path, image: np.ndarray, landmarks: FaceLandmarks, photo_mesh: PhotoMesh, subdivide: int,
                interocular_mm: float, notes: list[str]) -> dict:
    """photo.json's content (without the timings)."""
    mesh = photo_mesh.mesh
    extent = mesh.vertices.max(0) - mesh.vertices.min(0)
    return {
        "pbidr_version": __version__,
        "generator": "pbidr photo (MediaPipe face mesh)",
        "photo": str(image_path.resolve()),
        "photo_size": list(image.shape[:2]),
        "faces_found": landmarks.n_found,
        "landmarks": N_LANDMARKS,
        "base_triangles": int(len(photo_mesh.base_faces)),
        "closing_triangles": int(photo_mesh.filled.sum()),
        "subdivide": subdivide,
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "units": "mm",
        "front": [0.0, 0.0, 1.0],
        "up": [0.0, 1.0, 0.0],
        "interocular_mm": interocular_mm,
        "mm_per_pixel": photo_mesh.mm_per_pixel,
        "extent_mm": extent.tolist(),
        "texture_crop_xyxy": list(photo_mesh.crop),
        "uv_convention": "OBJ: v = 0 is the bottom row of mesh.png (the photo cropped to texture_crop_xyxy)",
        "pixel_center": photo_mesh.pixel_center.tolist(),
        "world_from_pixel": "X = (x - cx) * s, Y = -(y - cy) * s, Z = -(z - cz) * s with s = mm_per_pixel, "
                            "(cx, cy, cz) = pixel_center, z MediaPipe's relative depth in pixels",
        "landmarks_world_mm": photo_mesh.landmarks_world.round(4).tolist(),
        "landmarks_photo_px": landmarks.points.round(3).tolist(),
        "untangle": {"moved_landmarks": int((photo_mesh.untangle_px > 1e-6).sum()),
                     "max_px": float(photo_mesh.untangle_px.max()),
                     "still_folded_triangles": photo_mesh.still_folded,
                     "note": "landmarks moved in the image plane so that no triangle folds over "
                             "(landmarks_world_mm are after, landmarks_photo_px before)"},
        "mediapipe_version": _mediapipe_version(),
        "warnings": notes,
    }


def _mesh_and_notes(image: np.ndarray, image_path: Path, landmarks: FaceLandmarks, subdivide: int,
                    interocular_mm: float) -> tuple[PhotoMesh, list[str]]:
    """The photo's mesh and every warning about the face and its mesh (printed now; photo.json keeps them)."""
    notes = _landmark_notes(image, image_path, landmarks)
    photo_mesh = build_photo_mesh(image, landmarks, subdivide, interocular_mm)
    if photo_mesh.still_folded:
        notes.append(f"{photo_mesh.still_folded} triangles stay folded over in {image_path} (a strongly turned head?); "
                     f"the texture repeats there")
    for note in notes:
        print(f"pbidr photo: warning: {note}", file=sys.stderr)
    return photo_mesh, notes


def _landmarks_caption(photo_mesh: PhotoMesh, subdivide: int) -> str:
    return (f"{N_LANDMARKS} landmarks, {len(photo_mesh.base_faces)} triangles (orange: "
            f"{int(photo_mesh.filled.sum())} close eyes, mouth); Loop x{subdivide}: {len(photo_mesh.mesh.faces):,}")


def photo_to_raw(
    image_path: str | Path,
    output: str | Path,
    subdivide: int = DEFAULT_SUBDIVIDE,
    interocular_mm: float = DEFAULT_INTEROCULAR_MM,
    overwrite: bool = False,
) -> dict:
    """Write RAW_DIR = ``output`` (mesh.obj/.mtl/.png, landmarks.png, photo.json) from one photo.

    Everything is checked before anything is written; the folder appears atomically."""
    t0 = time.perf_counter()
    image_path, output = Path(image_path), Path(output).resolve()
    _check_photo_args(subdivide, interocular_mm)
    _check_output(output, image_path, overwrite)
    image = read_photo(image_path)
    t_read = time.perf_counter()
    landmarks = detect_landmarks(image, image_path)
    t_detect = time.perf_counter()
    photo_mesh, notes = _mesh_and_notes(image, image_path, landmarks, subdivide, interocular_mm)
    t_mesh = time.perf_counter()

    sheet = draw_landmarks(image, photo_mesh, _landmarks_caption(photo_mesh, subdivide))
    with stage_output(output, "photo", overwrite) as tmp:
        write_obj(tmp / "mesh.obj", photo_mesh.mesh)
        write_png(tmp / "landmarks.png", sheet)
        info = _photo_info(image_path, image, landmarks, photo_mesh, subdivide, interocular_mm, notes)
        t_write = time.perf_counter()
        info["timings"] = {"read_s": t_read - t0, "detect_s": t_detect - t_read, "mesh_s": t_mesh - t_detect,
                           "write_s": t_write - t_mesh, "total_s": t_write - t0}
        write_json(tmp / "photo.json", info)
    return info


def _mediapipe_version() -> str:
    import mediapipe

    return str(getattr(mediapipe, "__version__", "unknown"))
