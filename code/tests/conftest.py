"""Shared fixtures: small meshes made by the tests themselves."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj


def checker_texture(size: int = 64, blocks: int = 4) -> np.ndarray:
    """A texture of ``blocks`` x ``blocks`` flat colour blocks, each colour unique."""
    rng = np.random.default_rng(1)
    colors = rng.integers(0, 256, size=(blocks, blocks, 3), dtype=np.uint8)
    return np.repeat(np.repeat(colors, size // blocks, axis=0), size // blocks, axis=1)


def textured_sphere(subdivisions: int = 3, radius: float = 50.0) -> TexturedMesh:
    """An icosphere (mm) with spherical UVs through their own index and a checker texture."""
    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = ico.vertices
    uv = np.stack([0.5 + np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi), 0.5 + np.arcsin(v[:, 1] / radius) / np.pi], 1)
    return TexturedMesh(vertices=v, faces=ico.faces.astype(np.int64), uv=uv, face_uv=ico.faces.astype(np.int64),
                        texture=checker_texture())


@pytest.fixture
def sphere_raw(tmp_path):
    """A folder holding a textured sphere as mesh.obj + mesh.mtl + mesh.png."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_obj(raw / "mesh.obj", textured_sphere())
    return raw


def toy_conf(iters: int) -> str:
    """A conf (HOCON text) of PBIDR's ray model at toy sizes, for command-line tests that must run fast."""
    return (f"train {{ batch_size = 64, iters = {iters}, plot_freq = 0, plot_res = 16, checkpoint_freq = 0 }}\n"
            + TOY_MODEL)


TOY_MODEL = """model {
  feature_vector_size = 4
  sdf_network { dims = [16, 16], skip_in = [], multires = 0 }
  diffuse_network { dims = [8], multires = 0 }
  specular_network { dims = [8], multires_view = 0, multires_normal = 0 }
  albedo_network { dims = [8], multires = 0 }
  ray_tracer { n_steps = 8, n_secant_steps = 2 }
}
"""


README = __import__("pathlib").Path(__file__).resolve().parents[2] / "README.md"


def readme_api_example() -> str:
    """The first Python block under README's "## Python API" heading, as written there."""
    text = README.read_text()
    section = text[text.index("\n## Python API\n"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory):
    """README's API example run as it is written, in a folder of its own: a small recovered run
    (``out/``, from the sample ``face/``) that the API and viewer tests read. Returns (folder, the
    example's variables, what it printed, seconds)."""
    import contextlib
    import io
    import os
    import time

    folder = tmp_path_factory.mktemp("readme_example")
    code, printed, here = readme_api_example(), io.StringIO(), os.getcwd()
    names: dict = {"__name__": "readme_example"}
    t0 = time.perf_counter()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md (Python API)", "exec"), names)
    finally:
        os.chdir(here)
    return folder, names, printed.getvalue(), time.perf_counter() - t0
