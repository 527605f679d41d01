"""The page of ``pbidr view``: a viser server (optional extra, ``pip install -e .[view]``) showing a
:class:`~pbidr.view.sources.ViewSource` under one raking light the user moves.

Why viser: it is on PyPI with its web client built into the wheel (one HTML file, served by the same
Python process: offline, nothing to build, no Node.js), it is what nerfstudio's viewer is made of,
and its scene (glTF meshes, lights) and panel (checkboxes, dropdowns, sliders, Markdown, HTML) are
driven from Python, so the page needs no JavaScript of ours.

The scene is in the display frame of :mod:`pbidr.view.display` (the face toward +z, +y up, radius 1).
Each mesh is sent once per surface (textured, clay, displacement) when first shown; the toggles only
change which nodes are visible and where, so a toggle costs no upload.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pbidr.errors import PbidrError
from pbidr.view.display import (MAX_FACES, SURFACES, DisplayFrame, DisplayMesh, colour_bar_html, display_frame,
                                displacement_span, glb_bytes, load_display_mesh)
from pbidr.view.sources import MESH_LABELS, ViewSource, metrics_markdown

VISER_HINT = "pbidr view needs the optional viewer packages: pip install -e .[view] (viser, fast-simplification)"
LAYOUTS = ("side by side", "overlaid")
SLOT_GAP = 0.15  # display units between side-by-side meshes
# A raking light: low over the face, from the viewer's upper right. Three.js units (physical lights).
LIGHT_AZIMUTH, LIGHT_ELEVATION = 60.0, 20.0
LIGHT_INTENSITY, AMBIENT_INTENSITY = 1.5, 0.35
CAMERA_FOV_DEG = 40.0


def import_viser():
    """viser, once the viewer extra is known to be installed (fast_simplification too: a large mesh
    must not fail only after the page is served)."""
    try:
        import fast_simplification  # noqa: F401
        import viser
    except ImportError:
        raise PbidrError(VISER_HINT) from None
    return viser


def light_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector toward the light in the display frame: azimuth around the face's up axis from its
    front (positive toward the viewer's right, +x), elevation above the face's horizontal plane."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


@dataclass
class ShownSubject:
    """The subject on the page: its meshes ready for display, their frame and colour scale."""

    index: int
    meshes: list[DisplayMesh]
    frame: DisplayFrame
    span_mm: float
    pitch: float  # display units between the centres of side-by-side meshes
    height: float  # display units from the lowest to the highest point of the meshes


class ViewerPage:
    """The scene and the panel of one viser server; every control's callback runs under one lock."""

    def __init__(self, server: Any, source: ViewSource, max_faces: int = MAX_FACES,
                 log: Callable[[str], None] = print):
        self.server, self.source, self.max_faces, self.log = server, source, max_faces, log
        self._lock = threading.RLock()
        self._nodes: dict[tuple[str, str], Any] = {}  # (mesh key, surface) -> the viser node
        self._labels: dict[str, Any] = {}  # mesh key -> its name under it (side by side)
        self.shown: ShownSubject | None = None
        self._setup_scene()
        self._build_panel()

    # ---------------------------------------------------------------------------------- scene
    def _setup_scene(self) -> None:
        scene = self.server.scene
        scene.set_up_direction("+y")
        scene.configure_default_lights(enabled=False)
        scene.configure_environment_map(hdri=None, environment_intensity=0.0)
        self.light = scene.add_light_directional("/light/raking", intensity=LIGHT_INTENSITY, cast_shadow=False)
        scene.add_light_ambient("/light/ambient", intensity=AMBIENT_INTENSITY)
        self.server.gui.configure_theme(show_logo=False, show_share_button=False)

    def _frame_camera(self, shown: ShownSubject) -> None:
        """The row of meshes in view from the front, left of the panel (which covers about the right
        quarter of a window of 16:9)."""
        half_width = shown.pitch * len(shown.meshes) / 2 / 0.85
        tan_half = math.tan(math.radians(CAMERA_FOV_DEG) / 2)
        distance = max(half_width / (tan_half * 16 / 9), 0.6 * shown.height / tan_half) * 1.05
        shift = 0.22 * distance * tan_half * 16 / 9
        cam = self.server.initial_camera
        cam.fov = math.radians(CAMERA_FOV_DEG)
        cam.look_at = (shift, 0.0, 0.0)
        cam.up = (0.0, 1.0, 0.0)
        cam.position = (shift, 0.0, distance)
        for client in self.server.get_clients().values():
            client.camera.position, client.camera.look_at = cam.position, cam.look_at

    # ---------------------------------------------------------------------------------- panel
    def _build_panel(self) -> None:
        gui, source = self.server.gui, self.source
        keys = [k for k in MESH_LABELS if any(m.key == k for s in source.subjects for m in s.meshes)]
        gui.add_markdown(f"**pbidr view** ({source.kind})  \n`{source.path}`")
        self.picker = None
        if source.kind == "batch":
            self.picker = gui.add_dropdown("Subject", [s.name for s in source.subjects])
            self.picker.on_update(lambda _: self.show_subject(self._picked()))
        self.mesh_boxes = {k: gui.add_checkbox(MESH_LABELS[k], True) for k in keys} if len(keys) > 1 else {}
        self.layout = gui.add_dropdown("Layout", LAYOUTS, visible=len(keys) > 1)
        has_displacement = any(m.displacement is not None for s in source.subjects for m in s.meshes)
        self.surface = gui.add_dropdown("Surface", SURFACES if has_displacement else SURFACES[:2])
        self.azimuth = gui.add_slider("Light azimuth", -180, 180, 1, int(LIGHT_AZIMUTH))
        self.elevation = gui.add_slider("Light elevation", -30, 90, 1, int(LIGHT_ELEVATION))
        self.colour_bar = gui.add_html("", visible=False)
        self.metrics = gui.add_markdown("loading ...")
        self.notes = gui.add_markdown("", visible=False)
        for control in (*self.mesh_boxes.values(), self.layout, self.surface):
            control.on_update(lambda _: self.refresh())
        for control in (self.azimuth, self.elevation):
            control.on_update(lambda _: self.move_light())
        self.move_light()

    def _picked(self) -> int:
        return [s.name for s in self.source.subjects].index(self.picker.value)

    # ---------------------------------------------------------------------------------- actions
    def move_light(self) -> None:
        """The raking light to the sliders' azimuth and elevation (a directional light shines from its
        node's position toward the origin)."""
        with self._lock:
            self.light.position = tuple(10.0 * light_direction(self.azimuth.value, self.elevation.value))

    def show_subject(self, index: int) -> ShownSubject:
        """Load subject ``index``'s meshes (decimated over the face budget) and show them."""
        with self._lock:
            t0 = time.perf_counter()
            subject = self.source.subjects[index]
            self.metrics.content = f"loading {subject.name} ..."
            meshes = [load_display_mesh(m, self.max_faces) for m in subject.meshes]
            for node in [*self._nodes.values(), *self._labels.values()]:
                node.remove()
            self._nodes.clear()
            self._labels.clear()
            self.shown = _arrange(index, meshes, display_frame(meshes[0].vertices, subject.front, subject.up))
            for key, box in self.mesh_boxes.items():
                box.disabled = not any(m.key == key for m in meshes)
            notes = [*self.source.notes, *subject.notes, *(m.note() for m in meshes if m.note())]
            self.notes.content, self.notes.visible = "  \n".join(f"note: {n}" for n in notes), bool(notes)
            self.metrics.content = metrics_markdown(subject.metrics)
            self._frame_camera(self.shown)
            self.refresh()
            for n in notes:
                self.log(f"pbidr view: note: {n}")
            self.log(f"pbidr view: showing {subject.name} ({', '.join(m.label for m in meshes)}) in "
                     f"{time.perf_counter() - t0:.1f} s")
            return self.shown

    def refresh(self) -> None:
        """Which nodes are visible and where, from the mesh toggles, the layout and the surface; a mesh
        is sent for a surface the first time it is shown with it."""
        with self._lock:
            if self.shown is None:
                return
            surface, side_by_side = self.surface.value, self.layout.value == LAYOUTS[0]
            self.colour_bar.content = colour_bar_html(self.shown.span_mm)
            self.colour_bar.visible = surface == "displacement"
            meshes = self.shown.meshes
            shown = {m.key: m.key not in self.mesh_boxes or bool(self.mesh_boxes[m.key].value) for m in meshes}
            for mesh in meshes:  # every upload first, so that the meshes change together
                if shown[mesh.key] and (mesh.key, surface) not in self._nodes:
                    self._add_node(mesh, surface)
            for slot, mesh in enumerate(meshes):
                visible = shown[mesh.key]
                x = (slot - (len(meshes) - 1) / 2) * self.shown.pitch if side_by_side else 0.0
                for (key, node_surface), node in self._nodes.items():
                    if key == mesh.key:
                        node.position = (x, 0.0, 0.0)
                        node.visible = visible and node_surface == surface
                label = self._labels.get(mesh.key)
                if label is not None:
                    label.position = (x, -0.5 * self.shown.height - 0.05, 0.0)
                    label.visible = visible and side_by_side

    def visible(self) -> list[tuple[str, str, float]]:
        """What the scene shows: (mesh key, surface, x in the display frame) of every visible mesh."""
        with self._lock:
            return sorted((key, surface, float(node.position[0])) for (key, surface), node in self._nodes.items()
                          if node.visible)

    def _add_node(self, mesh: DisplayMesh, surface: str) -> None:
        data = glb_bytes(mesh, self.shown.frame, surface, self.shown.span_mm)
        base = f"/subject{self.shown.index}/{mesh.key}"
        self._nodes[(mesh.key, surface)] = self.server.scene.add_glb(f"{base}/{surface}", glb_data=data,
                                                                     cast_shadow=False, receive_shadow=False,
                                                                     visible=False)
        if len(self.shown.meshes) > 1 and mesh.key not in self._labels:
            self._labels[mesh.key] = self.server.scene.add_label(f"{base}/label", mesh.label, anchor="top-center",
                                                                 visible=False)


def _arrange(index: int, meshes: list[DisplayMesh], frame: DisplayFrame) -> ShownSubject:
    """The subject's meshes in the display frame: the pitch of the side-by-side row, from the widest."""
    extents = [frame.apply(m.vertices) for m in meshes]
    width = max(float(np.ptp(p[:, 0])) for p in extents)
    height = max(float(p[:, 1].max()) for p in extents) - min(float(p[:, 1].min()) for p in extents)
    return ShownSubject(index, meshes, frame, displacement_span(meshes), pitch=width + SLOT_GAP, height=height)


# ------------------------------------------------------------------------------------------------


def start_server(host: str, port: int):
    """A viser server on ``host:port`` (the next free port when it is taken; 0: any free one), with
    viser's own start-up banner kept off the console (pbidr prints the URL itself)."""
    viser = import_viser()
    with contextlib.redirect_stdout(io.StringIO()):
        return viser.ViserServer(host=host, port=port, verbose=False)


def stop_server(server) -> None:
    """Stop the server, its "server stopped" line kept off the console too."""
    with contextlib.redirect_stdout(io.StringIO()):
        server.stop()
