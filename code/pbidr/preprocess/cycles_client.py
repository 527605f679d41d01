"""Blender's side of pbidr.preprocess.cycles, run as ``python cycles_client.py IN.npz OUT.npz`` in a
process of its own: Blender (the ``bpy`` module) bundles its own OpenEXR, TBB, Embree and more,
which must not share a process with torch's. Only bpy and numpy here: pbidr is not imported, the
caller validates the inputs and turns the raw bakes into textures.

IN.npz: vertices (V, 3) mm, faces (F, 3), corner_uv (F, 3, 2), albedo (H, W, 3), optionally bump
(H', W') mm, and ``job`` (JSON: size, samples, seed, threads, the conditions to bake, each a lighting
and a skin as dicts of pbidr.preprocess.cycles' dataclasses). OUT.npz: ``bakes`` (N, H, W, 4) float32,
rows top-down, alpha 1 where a texel was baked; ``info`` (JSON: timings, Blender's version).

One Blender unit is one millimetre, and the scene is our world frame as it is (Blender's "up" plays
no part in a bake): the face looks toward +z, +y up.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

# Python puts this script's folder first on sys.path, where pbidr's cycles.py would shadow Blender's
# own "cycles" add-on (the render engine would then be missing).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

# Cycles' disk light of power P watts (normalised, 180 degree spread) and area A emits radiance
# P / (pi A) (measured: test_cycles.py gets the strengths back within 0.1%). A white Lambertian
# surface facing a disk of radius r at distance d receives E = pi L sin^2(a), sin^2(a) = r^2 / (r^2 +
# d^2), and bakes to E / pi = L sin^2(a); so our strength s needs P = s pi A / sin^2(a).
RADIANCE_PER_WATT = 1.0 / np.pi  # times 1 / area

# Skin's mean free paths (mm, R G B): Jensen et al. 2001, "skin1".
SKIN_RADIUS_MM = (3.67, 1.37, 0.68)
SKIN_IOR = 1.4


def main(in_npz: str, out_npz: str) -> None:
    import bpy

    data = np.load(in_npz)
    job = json.loads(str(data["job"]))
    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    configure_cycles(scene, job)
    obj = make_mesh_object(data["vertices"], data["faces"], data["corner_uv"])
    bump = data["bump"] if "bump" in data.files else None
    bsdf, target = make_material(obj, data["albedo"], bump, job["size"])
    add_frontal_camera(scene, data["vertices"])
    times = {"setup_s": time.perf_counter() - t0, "bake_s": []}
    bakes = []
    for condition in job["conditions"]:
        t0 = time.perf_counter()
        set_lighting(scene, condition["lighting"], data["vertices"])
        set_skin(bsdf, condition["skin"])
        bpy.ops.object.bake(type="COMBINED", margin=0, use_clear=True, target="IMAGE_TEXTURES",
                            pass_filter={"DIRECT", "INDIRECT", "DIFFUSE", "GLOSSY", "TRANSMISSION", "EMIT"})
        bakes.append(read_pixels(target))
        times["bake_s"].append(time.perf_counter() - t0)
    info = {"times": times, "version": bpy.app.version_string, "threads": scene.render.threads}
    tmp = out_npz + ".part.npz"  # renamed when complete: a killed Blender leaves no half-written result
    np.savez(tmp, bakes=np.stack(bakes), info=json.dumps(info))
    os.replace(tmp, out_npz)


def configure_cycles(scene, job: dict) -> None:
    """Cycles on the CPU, no denoiser (bakes have none), bounces enough for skin's interreflection."""
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = int(job["samples"])
    cycles.seed = int(job["seed"])
    cycles.use_denoising = False
    cycles.use_adaptive_sampling = False
    cycles.max_bounces = 4
    cycles.diffuse_bounces = 3
    cycles.glossy_bounces = 2
    cycles.transmission_bounces = 0
    cycles.volume_bounces = 0
    cycles.transparent_max_bounces = 0
    cycles.caustics_reflective = False
    cycles.caustics_refractive = False
    scene.render.threads_mode = "FIXED"
    scene.render.threads = int(job["threads"])
    bake = scene.render.bake
    # The glossy term as seen by an orthographic camera looking down -z: a frontal viewer (+z).
    bake.view_from = "ACTIVE_CAMERA"
    bake.margin = 0


def make_mesh_object(vertices: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray):
    """A smooth-shaded triangle mesh with one UV map, built with foreach_set (from_pydata's Python
    lists take seconds for a few hundred thousand triangles)."""
    import bpy

    mesh = bpy.data.meshes.new("face")
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", np.asarray(vertices, dtype=np.float32).reshape(-1))
    mesh.loops.add(3 * len(faces))
    mesh.loops.foreach_set("vertex_index", np.asarray(faces, dtype=np.int32).reshape(-1))
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * len(faces), 3, dtype=np.int32))
    mesh.update()
    mesh.validate()
    layer = mesh.uv_layers.new(name="UVMap")
    layer.data.foreach_set("uv", np.asarray(corner_uv, dtype=np.float32).reshape(-1))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), dtype=bool))
    mesh.update()
    obj = bpy.data.objects.new("face", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def float_image(name: str, pixels: np.ndarray):
    """A float, Non-Color Blender image of ``pixels`` (H, W, C), rows top-down as ours."""
    import bpy

    h, w = pixels.shape[:2]
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[..., :3] = pixels.reshape(h, w, -1)[..., :3] if pixels.ndim == 3 else pixels[..., None]
    image = bpy.data.images.new(name, w, h, alpha=True, float_buffer=True)
    image.colorspace_settings.name = "Non-Color"  # data in the albedo's linear units, no transform
    image.pixels.foreach_set(rgba[::-1].reshape(-1))  # Blender's rows run bottom-up (v = 0 first)
    return image


def make_material(obj, albedo: np.ndarray, bump: np.ndarray | None, size):
    """Principled BSDF on the albedo image, its normal bumped by ``bump`` (mm); and the bake target,
    a float image cleared to alpha 0 so that unbaked texels can be told apart."""
    import bpy

    mat = bpy.data.materials.new("skin")
    tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = float_image("albedo", albedo)
    tex.interpolation = "Linear"
    tex.extension = "EXTEND"  # the chart does not tile
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if bump is not None:
        height = tree.nodes.new("ShaderNodeTexImage")
        height.image = float_image("bump", np.repeat(bump[..., None], 3, axis=2))
        height.interpolation = "Linear"
        height.extension = "EXTEND"
        node = tree.nodes.new("ShaderNodeBump")
        node.inputs["Distance"].default_value = 1.0  # heights are in mm, one Blender unit
        node.inputs["Strength"].default_value = 1.0
        tree.links.new(height.outputs["Color"], node.inputs["Height"])
        tree.links.new(node.outputs["Normal"], bsdf.inputs["Normal"])
    h, w = (int(x) for x in size)
    target = bpy.data.images.new("bake", w, h, alpha=True, float_buffer=True)
    target.colorspace_settings.name = "Non-Color"
    target.generated_color = (0.0, 0.0, 0.0, 0.0)
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = target
    tree.nodes.active = node  # the bake writes into the active image node
    obj.data.materials.append(mat)
    return bsdf, target


def set_skin(bsdf, skin: dict) -> None:
    """A dielectric skin: ``specular`` scales the Fresnel reflectance of IOR 1.4 (1: F0 = 2.8%)."""
    bsdf.inputs["Roughness"].default_value = float(skin["roughness"])
    bsdf.inputs["IOR"].default_value = SKIN_IOR
    bsdf.inputs["Specular IOR Level"].default_value = 0.5 * float(skin["specular"])
    bsdf.inputs["Subsurface Weight"].default_value = float(skin["subsurface"])
    bsdf.inputs["Subsurface Radius"].default_value = SKIN_RADIUS_MM
    bsdf.inputs["Subsurface Scale"].default_value = 1.0  # the radii are in mm already


def add_frontal_camera(scene, vertices: np.ndarray) -> None:
    """An orthographic camera in front of the mesh looking down -z: every texel's view direction is
    +z (Cycles nudges it toward the normal where the surface turns away, see cycles.py)."""
    import bpy

    cam = bpy.data.objects.new("frontal", bpy.data.cameras.new("frontal"))
    cam.data.type = "ORTHO"
    lo, hi = vertices.min(0), vertices.max(0)
    cam.data.ortho_scale = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    cam.data.clip_end = float(10.0 * (hi - lo).max() + 1000.0)
    cam.location = (float(0.5 * (lo[0] + hi[0])), float(0.5 * (lo[1] + hi[1])), float(hi[2] + 100.0))
    scene.collection.objects.link(cam)
    scene.camera = cam


def set_lighting(scene, lighting: dict, vertices: np.ndarray) -> None:
    """Replace the lights and the world: the key and fill disks aimed at the mesh's bounding-box
    centre, and a sky of radiance sky_strength * (1 + sky_gradient * y) (direction's y)."""
    import bpy

    for obj in [o for o in scene.objects if o.type == "LIGHT"]:
        bpy.data.objects.remove(obj, do_unlink=True)
    centre = 0.5 * (vertices.min(0) + vertices.max(0))
    for name in ("key", "fill"):
        strength = float(lighting[f"{name}_strength"])
        if strength > 0.0:
            add_disk_light(scene, name, centre, np.asarray(lighting[f"{name}_direction"], dtype=np.float64),
                           strength, float(lighting[f"{name}_size_mm"]), float(lighting[f"{name}_distance_mm"]))
    set_sky(scene, float(lighting["sky_strength"]), float(lighting["sky_gradient"]))


def add_disk_light(scene, name: str, centre: np.ndarray, direction: np.ndarray, strength: float,
                   size_mm: float, distance_mm: float) -> None:
    """A disk of diameter ``size_mm`` at ``distance_mm`` from ``centre`` along ``direction``, facing it,
    with the power that makes a white Lambertian surface at ``centre`` facing it bake to ``strength``."""
    import bpy
    from mathutils import Vector

    light = bpy.data.lights.new(name, "AREA")
    light.shape = "DISK"
    light.size = size_mm
    radius = 0.5 * size_mm
    area = np.pi * radius * radius
    sin2 = radius * radius / (radius * radius + distance_mm * distance_mm)
    light.energy = strength * area / (RADIANCE_PER_WATT * sin2)
    obj = bpy.data.objects.new(name, light)
    obj.location = tuple(float(c) for c in centre + distance_mm * direction)
    obj.rotation_mode = "QUATERNION"
    obj.rotation_quaternion = Vector(direction.tolist()).to_track_quat("Z", "Y")  # emits along local -z
    scene.collection.objects.link(obj)


def set_sky(scene, strength: float, gradient: float) -> None:
    """World light: radiance ``strength * (1 + gradient * d_y)`` in direction d (uniform at 0)."""
    import bpy

    world = bpy.data.worlds.new("sky")
    scene.world = world
    tree = world.node_tree
    background = next(n for n in tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    if gradient == 0.0:
        background.inputs["Strength"].default_value = strength
        return
    coords = tree.nodes.new("ShaderNodeTexCoord")
    split = tree.nodes.new("ShaderNodeSeparateXYZ")
    ramp = tree.nodes.new("ShaderNodeMath")
    ramp.operation = "MULTIPLY_ADD"  # y * (strength * gradient) + strength
    ramp.inputs[1].default_value = strength * gradient
    ramp.inputs[2].default_value = strength
    tree.links.new(coords.outputs["Generated"], split.inputs["Vector"])
    tree.links.new(split.outputs["Y"], ramp.inputs[0])
    tree.links.new(ramp.outputs["Value"], background.inputs["Strength"])


def read_pixels(image) -> np.ndarray:
    """RGBA (H, W, 4) float32 of a Blender image, rows top-down as ours."""
    w, h = image.size
    pixels = np.zeros(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(h, w, 4)[::-1].copy()


if __name__ == "__main__":
    main(*sys.argv[1:3])
