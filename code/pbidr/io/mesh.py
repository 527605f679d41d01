"""The textured triangle mesh every stage passes around.

Topology is kept exactly as in the file: ``vertices``/``faces`` are the OBJ's positions and
triangles (polygons fan-triangulated), and texture coordinates have their own index
(``uv``/``face_uv``), so UV seams never split vertices. A detailed mesh written back out has the
same vertices, faces and UVs as its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TexturedMesh:
    """vertices (V, 3) float64 in the file's units; faces (F, 3) int64;
    uv (T, 2) float64 in OBJ convention (v = 0 is the image bottom) and face_uv (F, 3) int64, or None;
    texture (H, W, 3) uint8 RGB or None; vertex_colors (V, 3) uint8 or None.
    ``source`` is the file it came from, ``texture_path`` the texture image's file (if any).
    ``n_polygons``: the file's polygons before fan triangulation (OBJ ``f`` statements; None when
    the reader does not count them); ``load_warnings``: what the reader noticed about the file
    without failing, for the user to see."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray | None = None
    face_uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None
    source: Path | None = None
    texture_path: Path | None = None
    material_name: str = "material0"
    n_polygons: int | None = None
    load_warnings: list[str] = field(default_factory=list)

    @property
    def has_texture(self) -> bool:
        return self.texture is not None and self.uv is not None and self.face_uv is not None

    def face_normals(self) -> np.ndarray:
        """Unit face normals (F, 3), right-hand rule on the face's vertex order."""
        tri = self.vertices[self.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)

    def vertex_normals(self) -> np.ndarray:
        """Unit vertex normals (V, 3): area-weighted mean of the adjacent faces' normals."""
        tri = self.vertices[self.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
        acc = np.zeros_like(self.vertices)
        for k in range(3):
            np.add.at(acc, self.faces[:, k], n)
        return acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-30)

    def with_vertices(self, vertices: np.ndarray) -> "TexturedMesh":
        """The same mesh (topology, UVs, texture) with new vertex positions."""
        return TexturedMesh(
            vertices=np.asarray(vertices, dtype=np.float64),
            faces=self.faces,
            uv=self.uv,
            face_uv=self.face_uv,
            texture=self.texture,
            vertex_colors=self.vertex_colors,
            source=self.source,
            texture_path=self.texture_path,
            material_name=self.material_name,
        )
