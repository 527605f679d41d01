"""Blender's side of test_blender.py, run as ``python blender_client.py IN.npz OUT_DIR RESULT.npz`` in
its own process: Blender (the ``bpy`` module) bundles its own OpenEXR, TBB and Embree, which must
not share a process with the suite's. Only bpy and numpy here; the test makes the files and checks
the numbers.

IN.npz holds the coarse and dense detailed meshes (vertices, faces, per-corner UVs), the Displace
strength in mesh units and the map size. Steps, each as a user would do them in Blender:
1. import OUT_DIR/detailed.glb and describe its material (which nodes feed the BSDF), and bake the
   shading normals Blender gives it (object space), with and without its normal map;
2. put a Displace modifier on the coarse mesh with displacement_uv.png and the documented settings,
   and read back the displaced vertices;
3. bake a tangent-space normal map from the detailed mesh onto the coarse one (Cycles,
   selected-to-active), and read Blender's own MikkTSpace tangents of the coarse mesh;
4. load displacement.exr as Blender reads it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(in_npz: str, out_dir: str, result_npz: str) -> None:
    import bpy

    data = np.load(in_npz)
    out = Path(out_dir)
    times: dict[str, float] = {}
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    # 1. The GLB as an artist opens it.
    t0 = time.perf_counter()
    bpy.ops.import_scene.gltf(filepath=str(out / "detailed.glb"))
    imported = [o for o in scene.objects if o.type == "MESH"]
    glb = {"n_mesh_objects": len(imported)}
    glb_loops = {"glb_loop_position": np.zeros((0, 3)), "glb_loop_uv": np.zeros((0, 2))}
    if imported:
        obj = imported[0]
        mesh = obj.data
        co = np.zeros(len(mesh.vertices) * 3)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3) @ np.array(obj.matrix_world)[:3, :3].T + np.array(obj.matrix_world)[:3, 3]
        loop_vertex = np.zeros(len(mesh.loops), dtype=np.int64)
        mesh.loops.foreach_get("vertex_index", loop_vertex)
        loop_uv = np.zeros(len(mesh.loops) * 2)
        mesh.uv_layers[0].data.foreach_get("uv", loop_uv)
        glb_loops = {"glb_loop_position": co[loop_vertex], "glb_loop_uv": loop_uv.reshape(-1, 2)}
        glb.update({"n_vertices": len(mesh.vertices), "n_faces": len(mesh.polygons),
                    "bbox_min": co.min(0).tolist(), "bbox_max": co.max(0).tolist(),
                    "uv_layers": [uv.name for uv in mesh.uv_layers]})
        mat = obj.active_material
        glb["material"] = mat.name if mat else None
        if mat is not None and mat.node_tree is not None:
            nodes = mat.node_tree.nodes
            bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
            glb["bsdf"] = bsdf is not None
            if bsdf is not None:
                base = [link.from_node for link in bsdf.inputs["Base Color"].links]
                glb["base_color_from"] = [n.type for n in base]
                glb["base_color_image"] = [n.image.name for n in base if n.type == "TEX_IMAGE" and n.image]
                glb["base_color_size"] = [list(n.image.size) for n in base if n.type == "TEX_IMAGE" and n.image]
                nmap = [link.from_node for link in bsdf.inputs["Normal"].links]
                glb["normal_from"] = [n.type for n in nmap]
                for n in nmap:
                    if n.type == "NORMAL_MAP":
                        glb["normal_map_space"] = n.space
                        glb["normal_map_uv"] = n.uv_map
                        src = [link.from_node for link in n.inputs["Color"].links]
                        glb["normal_map_color_from"] = [s.type for s in src]
                        glb["normal_map_colorspace"] = [s.image.colorspace_settings.name for s in src
                                                        if s.type == "TEX_IMAGE" and s.image]
    times["import_glb_s"] = time.perf_counter() - t0

    # 1b. How Blender shades the GLB: an object-space normal bake of it with its own material (normal
    #     map included), then with the Normal Map node unplugged.
    t0 = time.perf_counter()
    h, w = (int(x) for x in data["size"])
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    glb_shading = {}
    if imported and imported[0].active_material is not None:
        obj = imported[0]
        tree = obj.active_material.node_tree
        image = bpy.data.images.new("glb_shading", w, h, float_buffer=True)
        image.colorspace_settings.name = "Non-Color"
        node = tree.nodes.new("ShaderNodeTexImage")
        node.image = image
        tree.nodes.active = node
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
        for mode in ("with_normal_map", "without_normal_map"):
            if mode == "without_normal_map":
                for link in list(bsdf.inputs["Normal"].links):
                    tree.links.remove(link)
            bpy.ops.object.bake(type="NORMAL", normal_space="OBJECT", margin=0, use_clear=True)
            glb_shading[mode] = read_pixels(image)
    times["bake_glb_s"] = time.perf_counter() - t0
    for o in list(scene.objects):
        bpy.data.objects.remove(o, do_unlink=True)

    # 2. Displace modifier on the coarse mesh: the 16-bit PNG (mid-level 0.5), then the EXR (mid-level 0).
    t0 = time.perf_counter()
    coarse = make_object("coarse", data["coarse_vertices"], data["coarse_faces"], data["coarse_corner_uv"])
    displaced = {}
    displace_info = {}
    for name, mid_level, strength in (("displacement_uv.png", 0.5, data["strength"]),
                                      ("displacement.exr", 0.0, data["exr_strength"])):
        image = bpy.data.images.load(str(out / name))
        image.colorspace_settings.name = "Non-Color"  # the values are data, not colours
        texture = bpy.data.textures.new(name, type="IMAGE")
        texture.image = image
        texture.extension = "EXTEND"  # the chart does not tile
        texture.use_interpolation = True
        mod = coarse.modifiers.new("Displace", "DISPLACE")
        mod.texture = texture
        mod.texture_coords = "UV"
        mod.uv_layer = "UVMap"
        mod.direction = "NORMAL"
        mod.mid_level = mid_level
        mod.strength = float(strength)
        evaluated = coarse.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.to_mesh()
        co = np.zeros(len(mesh.vertices) * 3)
        mesh.vertices.foreach_get("co", co)
        evaluated.to_mesh_clear()
        coarse.modifiers.remove(mod)
        displaced[name] = co.reshape(-1, 3)
        displace_info[name] = {"image_is_float": bool(image.is_float), "image_size": list(image.size)}
    times["displace_s"] = time.perf_counter() - t0

    # 3. Bake detailed -> coarse, tangent space; and Blender's MikkTSpace tangents of the coarse mesh.
    t0 = time.perf_counter()
    detailed = make_object("detailed", data["detailed_vertices"], data["detailed_faces"], data["detailed_corner_uv"])
    bake = bpy.data.images.new("bake", w, h, float_buffer=True)
    bake.colorspace_settings.name = "Non-Color"
    mat = bpy.data.materials.new("bake")
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = bake
    mat.node_tree.nodes.active = node  # the bake writes into the active image node
    coarse.data.materials.append(mat)
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    detailed.select_set(True)
    coarse.select_set(True)
    bpy.context.view_layer.objects.active = coarse
    extrusion = float(data["cage_extrusion"])
    bpy.ops.object.bake(type="NORMAL", normal_space="TANGENT", use_selected_to_active=True,
                        cage_extrusion=extrusion, max_ray_distance=2.0 * extrusion, margin=0, use_clear=True)
    baked = read_pixels(bake)
    me = coarse.data
    me.calc_tangents(uvmap="UVMap")
    tangents = np.zeros(len(me.loops) * 3)
    me.loops.foreach_get("tangent", tangents)
    signs = np.zeros(len(me.loops))
    me.loops.foreach_get("bitangent_sign", signs)
    normals = np.zeros(len(me.vertices) * 3)
    me.vertices.foreach_get("normal", normals)
    times["bake_s"] = time.perf_counter() - t0

    # 4. The EXR as Blender reads it.
    exr = bpy.data.images.load(str(out / "displacement.exr"))
    exr.colorspace_settings.name = "Non-Color"
    ew, eh = exr.size
    exr_pixels = np.zeros(ew * eh * exr.channels, dtype=np.float32)
    exr.pixels.foreach_get(exr_pixels)
    exr_pixels = exr_pixels.reshape(eh, ew, exr.channels)[::-1, :, 0]

    np.savez(result_npz, displaced=displaced["displacement_uv.png"],
             displaced_exr=displaced["displacement.exr"], baked=baked, tangents=tangents.reshape(-1, 3),
             signs=signs, normals=normals.reshape(-1, 3), exr=exr_pixels, **glb_loops,
             **{f"glb_shading_{k}": v for k, v in glb_shading.items()},
             info=json.dumps({"glb": glb, "displace": displace_info, "times": times,
                              "version": bpy.app.version_string}))


def read_pixels(image) -> np.ndarray:
    """RGB (H, W, 3) float32 of a Blender image, rows top-down as ours (Blender's run bottom-up)."""
    w, h = image.size
    pixels = np.zeros(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(h, w, 4)[::-1, :, :3]


def make_object(name: str, vertices: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray):
    """A smooth-shaded mesh object with one UV map named UVMap (per-corner UVs (F, 3, 2))."""
    import bpy

    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    layer = mesh.uv_layers.new(name="UVMap")
    layer.data.foreach_set("uv", corner_uv.reshape(-1).astype(np.float32))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


if __name__ == "__main__":
    main(*sys.argv[1:4])
