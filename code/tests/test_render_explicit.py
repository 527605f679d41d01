"""The explicit renderer (Embree on a mesh + a shading callable) against an exact sphere: hit mask and
normals from the analytic ray-sphere intersection, and the callable's colours where it hits."""

import numpy as np
import pytest
import trimesh

from pbidr.errors import PbidrError
from pbidr.evaluation.render_explicit import render_mesh_view
from pbidr.geometry.cameras import Rig, pixel_rays

RADIUS = 0.6  # normalised frame: inside the rig's unit sphere, a disc ~half the image wide
LIGHT = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


def _sphere():
    ico = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    return np.asarray(ico.vertices), np.asarray(ico.faces, dtype=np.int64)


def _analytic(camera):
    """Per pixel: does the ray hit the exact sphere, its hit point's outward normal, and the ray's
    distance from the centre (to leave out the silhouette, where a polyhedron and a sphere differ)."""
    origins, dirs = pixel_rays(camera)
    b = np.einsum("nc,nc->n", origins, dirs)
    closest = np.linalg.norm(origins - b[:, None] * dirs, axis=1)
    hit = closest < RADIUS
    t = -b - np.sqrt(np.maximum(RADIUS**2 - closest**2, 0.0))
    normals = (origins + t[:, None] * dirs) / RADIUS
    return hit, normals, closest, dirs


class KnownShading:
    """A shading with a closed form: Lambert of a fixed light on a constant albedo, no specular; it
    records what it is given."""

    albedo = np.array([0.8, 0.5, 0.2])

    def __init__(self):
        self.points, self.view_dirs, self.calls = [], [], 0

    def __call__(self, points, normals, view_dirs, face, bary):
        self.calls += 1
        self.points.append(points)
        self.view_dirs.append(view_dirs)
        assert face.shape == (len(points),) and bary.shape == (len(points), 3)
        diffuse = np.repeat(np.clip(normals @ LIGHT, 0.0, 1.0)[:, None], 3, axis=1)
        albedo = np.broadcast_to(self.albedo, points.shape)
        return {"rgb": diffuse * albedo, "diffuse": diffuse, "specular": np.zeros_like(points), "albedo": albedo}


@pytest.mark.parametrize("yaw_index", [0, 2])
def test_sphere_hits_and_normals_match_the_analytic_sphere(yaw_index):
    camera = Rig(yaw=3, yaw_angle=40.0, res=96).cameras()[yaw_index]
    vertices, faces = _sphere()
    shade = KnownShading()
    view = render_mesh_view(vertices, faces, camera, shade, chunk=500)
    hit, normals, closest, dirs = _analytic(camera)
    h, w = camera.height, camera.width
    assert view.hit.shape == (h, w) and view.rgb.shape == (h, w, 3)
    got = view.hit.reshape(-1)
    # A subdivision-5 icosphere lies within 0.1% of the radius of its sphere: away from that rim, the
    # mask is exact.
    rim = np.abs(closest - RADIUS) < 0.01 * RADIUS
    assert np.array_equal(got[~rim], hit[~rim])
    assert 0.2 < got.mean() < 0.5  # the disc is really in the picture

    inner = got & hit & (closest < 0.95 * RADIUS)
    n_img = view.normal.reshape(-1, 3)[inner] * 2.0 - 1.0
    cos = np.einsum("nc,nc->n", n_img / np.linalg.norm(n_img, axis=1, keepdims=True), normals[inner])
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0

    # The callable was called in chunks of at most 500 hits, with points on the sphere and the rays'
    # directions; its colours land on the hit pixels and the misses stay white.
    assert shade.calls == int(np.ceil(got.sum() / 500))
    pts, vd = np.concatenate(shade.points), np.concatenate(shade.view_dirs)
    assert len(pts) == got.sum() and np.all(np.abs(np.linalg.norm(pts, axis=1) - RADIUS) < 2e-3 * RADIUS)
    assert np.allclose(vd, dirs[got], atol=1e-6)
    lambert = np.clip(normals[inner] @ LIGHT, 0.0, 1.0)
    assert np.allclose(view.diffuse.reshape(-1, 3)[inner][:, 0], lambert, atol=0.02)
    assert np.allclose(view.rgb.reshape(-1, 3)[inner], lambert[:, None] * KnownShading.albedo, atol=0.02)
    assert np.allclose(view.albedo.reshape(-1, 3)[inner], KnownShading.albedo)
    for img in view.images().values():
        assert np.all(img.reshape(-1, 3)[~got] == 1.0)
    assert view.n_sdf_evals == 0


def test_chunking_does_not_change_the_render():
    camera = Rig(yaw=1, res=48).cameras()[0]
    vertices, faces = _sphere()
    a = render_mesh_view(vertices, faces, camera, KnownShading(), chunk=37)
    b = render_mesh_view(vertices, faces, camera, KnownShading(), chunk=1 << 20)
    for key, img in a.images().items():
        assert np.array_equal(img, b.images()[key]), key


def test_a_shading_without_a_part_is_a_one_line_error():
    camera = Rig(yaw=1, res=16).cameras()[0]
    vertices, faces = _sphere()

    def no_albedo(points, normals, view_dirs, face, bary):
        return {"rgb": normals, "diffuse": normals, "specular": normals}

    with pytest.raises(PbidrError, match="'albedo'") as info:
        render_mesh_view(vertices, faces, camera, no_albedo)
    assert "\n" not in str(info.value)


class _RecordingModel:
    """What PBIDRShading reads of a PBIDRModel, with a ``_shade`` that records its diffuse input."""

    def __init__(self, diffuse_normal: str):
        import torch

        from pbidr.model.pbidr_model import _Shading

        self.diffuse_normal, self.diffuse_inputs = diffuse_normal, []
        self.conf = type("Conf", (), {"feature_vector_size": 0})()
        self._Shading, self._torch = _Shading, torch

    def _shade(self, points, features, sdf_grads, dirs, mesh_normals):
        self.diffuse_inputs.append(mesh_normals.numpy())
        half = self._torch.full_like(points, 0.5)
        return self._Shading(rgb=half * 0.0, diffuse=half, specular=half * 0.0, albedo=half, normals=sdf_grads)


def test_pbidr_shading_uses_the_trainers_coarse_normal_on_the_subdivided_mesh():
    """On the midpoint subdivision of a coarse mesh, (face, bary) must give the coarse normal the
    trainer sees: the coarse vertex normals interpolated over the coarse triangle the ray hits."""
    from pbidr.datasets.scan import CoarseMesh
    from pbidr.evaluation.displacement import subdivide_midpoint
    from pbidr.evaluation.render_explicit import PBIDRShading, subdivided_coarse_normals
    from pbidr.io.mesh import TexturedMesh

    ico = trimesh.creation.icosphere(subdivisions=2, radius=RADIUS)  # coarse: visibly faceted
    coarse = TexturedMesh(vertices=np.asarray(ico.vertices), faces=np.asarray(ico.faces, dtype=np.int64))
    detailed = subdivide_midpoint(coarse)  # same surface, the detailed mesh's topology
    camera = Rig(yaw=1, res=64).cameras()[0]
    normals = subdivided_coarse_normals(coarse.vertex_normals(), coarse.faces, detailed.faces)
    model = _RecordingModel("coarse")
    view = render_mesh_view(detailed.vertices, detailed.faces, camera,
                            PBIDRShading(model, "cpu", normals).bind(detailed.faces), chunk=300)
    got = np.concatenate(model.diffuse_inputs)
    origins, dirs = pixel_rays(camera)
    hit = view.hit.reshape(-1)
    want = CoarseMesh(coarse, np.eye(4)).correspond(origins[hit], dirs[hit])  # the trainer's correspondence
    assert want["mesh_hit"].all() and len(got) == hit.sum()
    assert np.abs(got - want["mesh_normals"]).max() < 1e-4
    # A subdivided-mesh normal is not the same thing (it is what the mesh renderer's "normal" shows).
    assert np.abs(view.normal.reshape(-1, 3)[hit] * 2 - 1 - want["mesh_normals"]).max() > 1e-2

    with pytest.raises(PbidrError, match="midpoint subdivision"):
        subdivided_coarse_normals(coarse.vertex_normals(), coarse.faces, coarse.faces)
    with pytest.raises(PbidrError, match="coarse vertex normals"):
        PBIDRShading(_RecordingModel("coarse"), "cpu", None)
