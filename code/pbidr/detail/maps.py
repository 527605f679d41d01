"""Pictures of the texel fit's maps: D (diverging grey) beside the albedo, in the chart's layout."""

from __future__ import annotations

import numpy as np

from pbidr.utils.images import contact_sheet


def displacement_picture(d: np.ndarray, span: float | None = None) -> np.ndarray:
    """D (H, W) as uint8 RGB: mid grey is 0, white +span, black -span (default: the 99th percentile of |D|)."""
    d = np.asarray(d, dtype=np.float64)
    if span is None:
        span = float(np.percentile(np.abs(d), 99)) if d.size else 1.0
    g = np.clip(0.5 + 0.5 * d / max(span, 1e-12), 0.0, 1.0)
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def maps_sheet(field, size: int = 256) -> np.ndarray:
    """Contact sheet of a ``MapSDF``'s D and albedo maps, each ``size`` pixels tall."""
    import cv2
    import torch

    with torch.no_grad():
        d = field.displacement().detach().cpu().numpy()
        albedo = field.albedo.detach().cpu().numpy()
    span = float(np.percentile(np.abs(d), 99)) if d.size else 0.0
    cells = [displacement_picture(d, span), (np.clip(albedo, 0, 1) * 255 + 0.5).astype(np.uint8)]
    cells = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in cells]
    return contact_sheet([cells], [[f"displacement (+-{span:.3g})", "albedo"]])


IMAGE_MODEL_FILES = {
    "albedo": "albedo_uv.png",
    "shading": "shading_uv.png",
    "specular": "specular_uv.png",
    "rgb": "rgb_uv.png",
}


def image_model_maps(field, coarse) -> dict[str, np.ndarray]:
    """PBIDR's image model on the coarse chart, part by part, as the fit left it: the albedo map, the grey
    diffuse shading and the grey glossy lobe of the detailed normals (the fitted light), and their sum
    ``albedo x shading + specular`` (what the fit says the texture is), each (H, W[, 3]) float in the
    texture's units. ``coarse``: the coarse mesh in the world frame (the map's D is in world units)."""
    import torch

    from pbidr.detail.chart import build_chart
    from pbidr.detail.fit import chart_tensors, detailed_normals

    with torch.no_grad():
        d = field.displacement().detach().cpu().float()
        albedo = field.albedo.detach().cpu().numpy().astype(np.float64)
        chart = build_chart(coarse, tuple(d.shape))
        n = detailed_normals(chart_tensors(chart, torch.device("cpu")), d).double()
        light = field.light()
        shading = light.shading(n).clamp_min(0.0).numpy()
        specular = light.specular(n).numpy()
    inside = chart.mask[..., None]
    return {"albedo": albedo * inside, "shading": shading * chart.mask, "specular": specular * chart.mask,
            "rgb": (albedo * shading[..., None] + specular[..., None]) * inside}


def write_image_model_maps(out, field, coarse, texture: np.ndarray | None) -> dict:
    """Write :func:`image_model_maps` as 8-bit PNGs in the texture's units (shading divided by its 99th
    percentile: a grey picture, the scale is in the metrics), and report the light and how well the parts
    give the texture back (PSNR over the chart, where there is a texture)."""
    import cv2

    from pbidr.utils.images import write_png

    maps = image_model_maps(field, coarse)
    scale = float(np.percentile(maps["shading"][maps["shading"] > 0], 99)) if (maps["shading"] > 0).any() else 1.0
    pictures = dict(maps, shading=maps["shading"] / max(scale, 1e-12))
    for name, image in pictures.items():
        write_png(out / IMAGE_MODEL_FILES[name], (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    report = {"files": dict(IMAGE_MODEL_FILES), "shading_png_scale": scale, "light": field.light().describe()}
    if texture is not None:
        h, w = maps["rgb"].shape[:2]
        tex = cv2.resize(np.asarray(texture)[..., :3], (w, h), interpolation=cv2.INTER_AREA) / 255.0
        mask = maps["shading"] > 0
        mse = float(np.mean((np.clip(maps["rgb"], 0, 1)[mask] - tex[mask]) ** 2))
        report["texture_psnr_db"] = 10.0 * np.log10(1.0 / max(mse, 1e-12))
    return report
