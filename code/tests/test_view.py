"""``pbidr view`` without a browser: what each input resolves to (run, eval, recover's folder, batch, mesh
file), the one-line errors, the display meshes (seams, decimation, colour scale, frame), and the page's
scene on a real viser server driven through its controls (the browser test is test_view_page.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pbidr.commands.main import main
from pbidr.io.mesh import TexturedMesh
from pbidr.io.obj import write_obj
from pbidr.view import display
from pbidr.view.sources import MeshSource, resolve_source

from conftest import textured_sphere


def _keys(source):
    return [[m.key for m in s.meshes] for s in source.subjects]


def test_a_run_its_eval_and_recovers_folder_show_four_meshes(readme_run):
    folder = readme_run[0]
    out = folder / "out"
    for path, kind in ((out, "run"), (out / "run", "run"), (out / "run" / "eval", "eval")):
        source = resolve_source(path)
        assert source.kind == kind and _keys(source) == [["coarse", "detailed", "dense", "truth"]]
    subject = resolve_source(out).subjects[0]
    paths = {m.key: m.path for m in subject.meshes}
    assert paths["coarse"] == out / "scan" / "mesh.obj"
    assert paths["truth"].resolve() == (folder / "face" / "gt_detailed.obj").resolve()
    assert subject.metrics.step == 30 and subject.front == (0.0, 0.0, 1.0) and subject.up == (0.0, 1.0, 0.0)
    for path in (folder / "face" / "mesh.obj", folder / "face"):  # a mesh file, or a folder holding mesh.obj
        source = resolve_source(path)
        assert source.kind == "mesh" and _keys(source) == [["mesh"]] and source.subjects[0].metrics is None


def _fails(capsys, argv, *words):
    assert main(["view", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pbidr view: error: "), err
    for w in words:
        assert w in err, (w, err)


def test_bad_paths_are_one_line_errors(readme_run, tmp_path, capsys):
    out = readme_run[0] / "out"
    _fails(capsys, ["-i", str(tmp_path / "nope")], "nope", "no such file or folder")
    _fails(capsys, ["-i", str(out / "run" / "eval" / "metrics.json")], "metrics.json", "not a mesh file")
    _fails(capsys, ["-i", str(tmp_path)], str(tmp_path), "not a run")
    run = tmp_path / "run"  # a run without its eval
    shutil.copytree(out / "run", run, ignore=shutil.ignore_patterns("eval"))
    _fails(capsys, ["-i", str(run)], "no finished eval", f"pbidr eval -i {run}")
    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\nf 1 2 3\n")
    _fails(capsys, ["-i", str(broken), "--port", "0"], "broken.obj")  # the loader's error, before serving
    (tmp_path / "b" / "subjects" / "x").mkdir(parents=True)
    _fails(capsys, ["-i", str(tmp_path / "b")], "no subject of the batch has a finished eval")
    _fails(capsys, ["-i", str(out), "--max-faces", "0"], "--max-faces")


@pytest.fixture(scope="module")
def batch_out(readme_run, tmp_path_factory):
    """A `pbidr batch` output: the README's small face, done, and a subject whose mesh is broken."""
    root = tmp_path_factory.mktemp("view_batch")
    inputs = root / "inputs"
    shutil.copytree(readme_run[0] / "face", inputs / "face")
    (inputs / "broken").mkdir()
    (inputs / "broken" / "mesh.obj").write_text("garbage\n")
    code = main(["batch", "-i", str(inputs), "-o", str(root / "out"), "--iters", "3", "--res", "32", "--yaw", "1",
                 "--set", "model.displacement_map.resolution=64", "--mc-resolution", "24", "--eval-views", "1",
                 "--device", "cpu", "--quiet"])
    assert code == 1  # the broken subject failed, the other did not
    # a second finished subject, as when the outputs of two batches are put together
    shutil.copytree(root / "out" / "subjects" / "face", root / "out" / "subjects" / "face2")
    return root / "out"


def test_a_batch_lists_its_finished_subjects(batch_out):
    source = resolve_source(batch_out)
    assert source.kind == "batch" and [s.name for s in source.subjects] == ["face", "face2"]
    assert _keys(source) == [["coarse", "detailed", "dense", "truth"]] * 2
    assert source.subjects[1].meshes[1].path == batch_out / "subjects" / "face2" / "run" / "eval" / "detailed.obj"
    assert source.notes == ["1 subject(s) without a finished eval, not listed: broken"]


# ------------------------------------------------------------------------------------------------
# Display meshes


def _bumpy_sphere(subdivisions: int) -> tuple[TexturedMesh, np.ndarray]:
    mesh = textured_sphere(subdivisions=subdivisions)
    return mesh, np.sin(mesh.vertices[:, 0] / 8.0)  # a smooth displacement field, mm


def test_seams_are_split_and_attributes_follow(tmp_path):
    # a square of two triangles whose shared edge is a UV seam: each side has its own UVs there
    mesh = TexturedMesh(vertices=np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]], dtype=float),
                        faces=np.array([[0, 1, 2], [0, 2, 3]]),
                        uv=np.array([[0, 0], [0.4, 0], [0.4, 0.4], [0.6, 0], [0.6, 0.4], [1, 0.4]]),
                        face_uv=np.array([[0, 1, 2], [3, 4, 5]]), texture=np.full((8, 8, 3), 200, np.uint8))
    write_obj(tmp_path / "s.obj", mesh)
    np.save(tmp_path / "d.npy", np.array([1.0, 2.0, 3.0, 4.0]))
    shown = display.load_display_mesh(MeshSource("detailed", tmp_path / "s.obj", tmp_path / "d.npy", 10.0))
    assert len(shown.vertices) == 6 and len(shown.faces) == 2 and not shown.decimated
    for f in range(2):  # every corner: its vertex's position and displacement (x10 mm), its face's UV
        for k in range(3):
            v = shown.faces[f, k]
            np.testing.assert_allclose(shown.vertices[v], mesh.vertices[mesh.faces[f, k]])
            np.testing.assert_allclose(shown.uv[v], mesh.uv[mesh.face_uv[f, k]], atol=1e-6)
            assert shown.displacement_mm[v] == 10.0 * (mesh.faces[f, k] + 1)


def test_decimation_keeps_the_surface_and_its_attributes(tmp_path):
    mesh, d = _bumpy_sphere(5)  # 20,480 triangles
    write_obj(tmp_path / "s.obj", mesh)
    np.save(tmp_path / "d.npy", d)
    shown = display.load_display_mesh(MeshSource("dense", tmp_path / "s.obj", tmp_path / "d.npy"), max_faces=4000)
    assert shown.decimated and len(shown.faces) <= 4000 and shown.file_faces == 20480
    assert shown.note() == "detailed (dense): 20,480 triangles, shown decimated to " f"{len(shown.faces):,}"
    radius = np.linalg.norm(shown.vertices, axis=1)
    assert np.abs(radius - 50.0).max() < 1.0  # still the sphere (radius 50 mm)
    # the merged displacement is the field's at the merged vertex, to the field's change over a vertex's reach
    np.testing.assert_allclose(shown.displacement_mm, np.sin(shown.vertices[:, 0] / 8.0), atol=0.3)
    assert np.abs(shown.displacement_mm - np.sin(shown.vertices[:, 0] / 8.0)).mean() < 0.05
    np.testing.assert_allclose(np.linalg.norm(shown.normals, axis=1), 1.0, atol=1e-6)
    assert float(np.mean(np.sum(shown.normals * shown.vertices / radius[:, None], axis=1))) > 0.99


def test_colour_scale_frame_and_light():
    span = 0.5
    c = display.diverging_colours(np.array([-1.0, -0.5, 0.0, 0.5, 2.0]), span)
    assert tuple(c[2]) == (247, 247, 247)  # white at 0
    assert tuple(c[0]) == tuple(c[1]) == (33, 102, 172) and tuple(c[3]) == tuple(c[4]) == (178, 24, 43)
    html = display.colour_bar_html(span)
    assert "-0.5" in html and "+0.5" in html and "mm" in html
    # the frame turns the face's front to +z and up to +y, centres it and scales it to radius 1
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0], [0.0, 20.0, 0.0]])
    frame = display.display_frame(pts, front=(1.0, 0.0, 0.0), up=(0.0, 0.0, 1.0))
    np.testing.assert_allclose(frame.turn([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [[0, 0, 1], [0, 1, 0]], atol=1e-12)
    assert np.linalg.norm(frame.apply(pts), axis=1).max() <= 1.0 + 1e-9
    from pbidr.view.page import light_direction

    np.testing.assert_allclose(light_direction(0, 0), [0, 0, 1], atol=1e-12)  # from the front
    np.testing.assert_allclose(light_direction(90, 0), [1, 0, 0], atol=1e-12)  # from the viewer's right
    np.testing.assert_allclose(light_direction(30, 90), [0, 1, 0], atol=1e-12)  # from above


def test_the_commands_face_budget_is_displays():
    from pbidr.commands.view import DEFAULT_MAX_FACES

    assert DEFAULT_MAX_FACES == display.MAX_FACES


# ------------------------------------------------------------------------------------------------
# The page on a real server (no browser: its controls set from Python run the same callbacks)


@pytest.fixture
def page_for():
    pytest.importorskip("viser", reason="the viewer extra is not installed (pip install -e .[view])")
    from pbidr.view.page import ViewerPage, start_server, stop_server

    servers = []

    def make(path, **kw):
        server = start_server("127.0.0.1", 0)
        servers.append(server)
        lines: list[str] = []
        return ViewerPage(server, resolve_source(path), log=lines.append, **kw), lines

    yield make
    for server in servers:
        stop_server(server)


def test_the_page_toggles_layouts_and_surfaces(page_for, readme_run):
    page, lines = page_for(readme_run[0] / "out")
    page.show_subject(0)
    shown = page.visible()
    assert [k for k, *_ in shown] == ["coarse", "dense", "detailed", "truth"]
    assert {s for _, s, _ in shown} == {"textured"} and len({x for *_, x in shown}) == 4  # side by side
    assert lines[-1].startswith("pbidr view: showing out (coarse, detailed (coarse topology), detailed (dense)")
    page.mesh_boxes["truth"].value = False
    assert [k for k, *_ in page.visible()] == ["coarse", "dense", "detailed"]
    page.layout.value = "overlaid"
    assert {x for *_, x in page.visible()} == {0.0}
    page.surface.value = "displacement"
    assert {s for _, s, _ in page.visible()} == {"displacement"} and page.colour_bar.visible
    assert "mm" in page.colour_bar.content and "recovered fraction" in page.metrics.content
    before = tuple(page.light.position)
    page.azimuth.value = -60
    after = np.asarray(page.light.position)
    assert after[0] < 0 < before[0] and np.linalg.norm(after) == pytest.approx(10.0)


def test_the_page_says_when_it_decimates(page_for, readme_run):
    page, lines = page_for(readme_run[0] / "out", max_faces=3000)
    page.show_subject(0)
    assert "detailed (dense):" in page.notes.content and "shown decimated to" in page.notes.content
    assert page.notes.visible and any("shown decimated to" in line for line in lines)


def test_the_page_of_a_batch_and_of_a_mesh_file(page_for, batch_out, readme_run):
    page, lines = page_for(batch_out)
    assert page.picker is not None and page.picker.options == ("face", "face2")
    page.show_subject(0)
    assert len(page.visible()) == 4 and "broken" in page.notes.content
    page.picker.value = "face2"  # the picker loads the other subject in place of the first
    assert page.shown.index == 1 and len(page.visible()) == 4 and lines[-1].startswith("pbidr view: showing face2")
    page, _ = page_for(readme_run[0] / "face" / "mesh.obj")
    page.show_subject(0)
    assert page.visible() == [("mesh", "textured", 0.0)] and page.mesh_boxes == {}
    assert page.surface.options == ("textured", "clay") and "no run metrics" in page.metrics.content
