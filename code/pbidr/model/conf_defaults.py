"""Default ``model`` and ``loss`` conf blocks: the original PBIDR settings (its confs/test.conf).

A user conf only needs the keys it changes: ``model_conf(user)`` and ``loss_conf(user)`` fall back to
these and reject unknown keys, so a typo fails at start instead of being silently ignored.

Names differ from the original where the original's were misleading:
  implicit_network -> sdf_network; reg_weight -> mesh_pull_weight; the albedo network's
  ``multires_view`` (it encodes the point) -> ``multires``; the diffuse network's ``multires_view``
  (it encodes the coarse normal) -> ``multires``.
Keys the original did not have: ``d_out`` of the shading nets (1 = grey shading as in the original),
``multires_normal`` (the original encodes the specular net's normal with multires_view),
``eikonal_uniform_ratio``, ``second_surface_pass``, ``sdf_chunk``, the ray tracer's
``mode`` and mesh-guided knobs, ``rgb_weight``, ``mesh_pull_norm``,
``mesh_pull_detach_target``, and alpha_factor / alpha_milestones (the original keeps them in ``train``).
"""

from __future__ import annotations

import copy
import difflib
import functools
from typing import Any, Optional

from pyhocon import ConfigFactory, ConfigTree

from pbidr.errors import PbidrError

DEFAULT_MODEL_CONF = """
model {
    feature_vector_size = 256
    sdf_network {
        # sphere: IDR's network with geometric init (a sphere of radius bias at step 0; the paper's).
        # coarse_residual: f(x) = d_coarse(x) + r(p(x)), the coarse mesh's signed distance plus a
        # residual network that starts at zero (pbidr.model.residual_sdf); needs the coarse mesh.
        parameterisation = sphere
        # displacement_map: f(x) = d_coarse(x) - D(uv(c(x))), D a map on the coarse mesh's UV chart
        # (pbidr.detail.field), fitted on every texel (train.solver = texels); shape: displacement_map.
        # coarse_residual: bound of |r| (normalised units), and whether r is read at x projected onto
        # the coarse mesh's tangent plane (a displacement along the coarse normal) or at x itself.
        max_residual = 0.02
        project = true
        # > 0: the positional encoding's bands open coarse to fine over this many iterations (BARF).
        coarse_to_fine_iters = 0
        d_in = 3
        dims = [512, 512, 512, 512, 512, 512, 512, 512]
        skip_in = [4]
        multires = 6
        geometric_init = true
        bias = 0.6
        weight_norm = true
        beta = 100.0
    }
    # Normal the diffuse shading network sees: coarse (PBIDR: the coarse mesh's) or sdf (the SDF's).
    diffuse_normal = coarse
    # The displacement_map parameterisation's map: resolution (texels per side; 0 = the texture's
    # size), its grid levels (cells of 2^k texels, finest_level .. coarsest_level, summed) and the
    # bound of |D| (world units, tanh).
    displacement_map {
        resolution = 0
        finest_level = 1
        coarsest_level = 5
        max_displacement = 5.0
    }
    diffuse_network {
        dims = [128]
        d_out = 1
        weight_norm = true
        multires = 6
    }
    specular_network {
        dims = [128]
        d_out = 1
        weight_norm = true
        multires_view = 4
        multires_normal = 4
    }
    albedo_network {
        dims = [256, 256, 256, 256]
        weight_norm = true
        multires = 4
    }
    ray_tracer {
        object_bounding_sphere = 1.0
        sdf_threshold = 5.0e-5
        line_search_step = 0.5
        line_step_iters = 3
        sphere_tracing_iters = 10
        n_steps = 100
        n_secant_steps = 8
        # "idr": the faithful IDR tracer (sphere tracing from the bounding sphere, n_steps samples,
        # secant). "mesh": search the surface in [d - band, d + band] around the coarse mesh's hit
        # depth d (band_steps samples + n_secant_steps secant steps; n_front_steps sphere-tracing
        # steps check that no surface lies in front of the band, 0 = no check), faithful tracer on
        # the rays that miss the mesh inside the mask or find no sign change in the band; out-of-mask
        # rays take the min-SDF point of n_steps_outside stratified samples + n_refine_outside
        # bracket-halving steps (pbidr.model.mesh_guided_tracing).
        mode = idr
        band = 0.05
        band_steps = 10
        n_front_steps = 10
        n_steps_outside = 16
        n_refine_outside = 4
        # mesh mode: false = rays the band does not resolve are misses (no faithful tracer), and no
        # min-SDF search outside the mask (only the mask loss needs it); for coarse_residual.
        fallback = true
        search_outside = true
    }
    # Uniform eikonal samples per ray, in the cube [-r, r]^3 (r = object_bounding_sphere); the traced
    # points of all rays are eikonal samples too. IDR: 0.5.
    eikonal_uniform_ratio = 0.5
    # true: re-evaluate feature and normal at the differentiable surface point x(theta) (IDR, exact,
    # one more SDF pass over the surface points); false: reuse the values at x0 from the single pass.
    second_surface_pass = false
    # Largest number of points per SDF call in the ray tracer (memory knob). On the CPU the SDF costs
    # least per point when a layer's activations (chunk x width floats) stay within the caches:
    # 8192 points measured 1.5x faster per point than 100000 on the 2-core reference machine for the
    # 512-wide network, and cut a faithful-tracer training step of a 256-wide one from 0.49 to 0.34 s.
    # A GPU may prefer larger chunks.
    sdf_chunk = 8192
    # coarse_residual: the loss's residual_lowpass term averages the residual over discs of this
    # radius (normalised units) around this many coarse-mesh hits per batch, from this many samples
    # per disc (0 points: off).
    residual_lowpass_radius = 0.05
    residual_lowpass_points = 0
    residual_lowpass_samples = 8
    # > 0: the loss's albedo_smoothness term compares the albedo at each surface point with the albedo
    # this far (normalised units) along a random tangent (0: off).
    albedo_smoothness_step = 0.0
}
"""

DEFAULT_LOSS_CONF = """
loss {
    rgb_weight = 1.0
    eikonal_weight = 0.1
    mask_weight = 100.0
    # The original's reg_weight: mean squared distance between mesh-pulled and traced surface points.
    mesh_pull_weight = 5.0
    mesh_pull_norm = l2sq        # l2sq (original) | l2 | l1
    mesh_pull_detach_target = false   # the original compares against the (detached) traced point
    normal_weight = 1.0
    # Detail mode regularisers: mean squared SDF at the coarse-mesh hits (the residual there) and
    # mean squared local mean of the residual (model.residual_lowpass_*): keeps low frequencies
    # where the coarse mesh has them.
    residual_weight = 0.0
    residual_lowpass_weight = 0.0
    # Mean L1 albedo difference over model.albedo_smoothness_step (piecewise-constant albedo prior).
    albedo_smoothness_weight = 0.0
    # train.solver = texels: the texel fit's energy (pbidr.detail.fit, FitConfig has the docs).
    texel {
        colour_source = texture      # texture (the views are its renders) or views (project into the images)
        light_model = lambert        # lambert (ambient + clamped diffuse) or poly (SH of light_order)
        light_order = 2
        light_iters = 4
        albedo_radius_mm = 3.0       # window half-size of the albedo model (3 mm: best of 2-6 on seeds 0-2)
        albedo_eps = 1.0e-6          # guided-filter regulariser (chromaticity^2): small lets the albedo follow colour edges
        albedo_guide_order = 2       # 1: affine in chromaticity, 2: quadratic (blends of two colours)
        robust_scale = 0.001         # Charbonnier scale of the data term (log units): near L1 (0.005 before)
        mark_tau = 0.04              # marks (chromaticity far from the local mean) count less; 0: off
        mark_radius_mm = 3.0
        dark_level = 0.25            # dark texels count less: the log of a dark 8-bit colour is noise
        lowpass_sigma_mm = 10.0      # D's local mean over this Gaussian is penalised (no low frequencies)
        lowpass_weight = 20.0
        laplacian_weight = 0.0       # a Laplacian damps the 2-3 mm detail too (0.3 before; BENCHMARKS.md)
        # a weak penalty on D minus its Gaussian mean over finescale_sigma_texels: stops texel noise, and per mm
        # of amplitude weighs the 2-3 mm detail about 9x less than the 0.3 Laplacian it replaced
        finescale_weight = 1.0
        finescale_sigma_texels = 1.0
        seam_weight = 10.0           # the UV copies of a seam vertex agree
        # steps between the opening of two map levels, coarse to fine (0: all open from the start; on
        # seeds 0, 1, 2 that recovered 0.34 / 0.37 / 0.38 against 0.33 / 0.37 / 0.37 with 12, BENCHMARKS.md)
        level_steps = 0
        final_lr_fraction = 0.05     # cosine decay of train.learning_rate to this fraction
    }
    alpha = 50.0
    alpha_factor = 2.0
    alpha_milestones = [250, 500, 750, 1000, 1250]
}
"""


def _as_tree(conf: Any) -> ConfigTree:
    if conf is None:
        return ConfigTree()
    if isinstance(conf, ConfigTree):
        return conf
    if isinstance(conf, str):
        return ConfigFactory.parse_string(conf)
    if isinstance(conf, dict):
        return ConfigFactory.from_dict(conf)
    raise TypeError(f"expected a pyhocon ConfigTree, dict or HOCON string, got {type(conf).__name__}")


def _check_keys(user: ConfigTree, default: ConfigTree, where: str) -> None:
    for key, value in user.items():
        if key not in default:
            close = difflib.get_close_matches(key, list(default.keys()), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PbidrError(f"{where}.{key}: unknown config key{hint}; known: {', '.join(sorted(default.keys()))}")
        if isinstance(value, ConfigTree) and isinstance(default[key], ConfigTree):
            _check_keys(value, default[key], f"{where}.{key}")


@functools.lru_cache(maxsize=None)
def _parsed_default(default_text: str) -> ConfigTree:
    # parsing the commented defaults costs ~0.1 s each time; callers get a copy
    return ConfigFactory.parse_string(default_text)


def _merged(user: Any, default_text: str, block: str) -> ConfigTree:
    default = copy.deepcopy(_parsed_default(default_text)).get_config(block)
    tree = _as_tree(user)
    if block in tree and isinstance(tree[block], ConfigTree) and len(tree) == 1:
        tree = tree.get_config(block)  # accept {model {...}} as well as the block itself
    _check_keys(tree, default, block)
    return tree.with_fallback(default)


def model_conf(user: Optional[Any] = None) -> ConfigTree:
    """The ``model`` block: ``user`` (ConfigTree, dict or HOCON string) over the defaults."""
    return _merged(user, DEFAULT_MODEL_CONF, "model")


def loss_conf(user: Optional[Any] = None) -> ConfigTree:
    """The ``loss`` block: ``user`` over the defaults."""
    return _merged(user, DEFAULT_LOSS_CONF, "loss")
