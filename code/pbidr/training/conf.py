"""The run configuration: HOCON with ``train``, ``dataset``, ``model`` and ``loss`` blocks.

A conf file needs only the keys it changes; everything else falls back to the defaults here and
in ``pbidr.model.conf_defaults`` (the original's settings). Every key and value is checked at start
(unknown keys, types, ranges, choices, and whether the model builds), so a typo never silently runs
the default and never fails after the scan is read; the one-line error names the conf file or the
``--set`` item at fault. The command line's named confs (``--preset``) live in the repository's
confs/; its default is the detail mode (confs/fast.conf). The resolved conf is saved in the run
directory.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from pathlib import Path
from typing import Any

from pyhocon import ConfigFactory, ConfigTree, HOCONConverter
from pyhocon.exceptions import ConfigException

from pbidr.errors import PbidrError
from pbidr.model.conf_defaults import loss_conf, model_conf

DEFAULT_TRAIN_CONF = """
train {
    batch_size = 2048            # rays per iteration (the original's num_pixels)
    learning_rate = 1.0e-4
    sched_milestones = [1000, 1500]   # epochs at which the learning rate is multiplied by sched_factor
    sched_factor = 0.5
    time_budget_s = 0            # > 0: stop (with a checkpoint) after this many seconds of this session
    mask_ray_fraction = 0.0      # fraction of each batch's rays drawn inside the object mask (0: uniform, IDR)
    sdf_lr_factor = 1.0          # the SDF network's learning rate = learning_rate x this
    geometry_warmup_iters = 0    # the SDF network's learning rate ramps up from 0 over this many iterations
    nepoch = 2000                # one epoch = n_views iterations (IDR: one image per iteration)
    iters = 0                    # > 0 overrides nepoch: the total number of iterations
    checkpoint_freq = 100        # iterations between checkpoints
    checkpoint_seconds = 60      # also a checkpoint when this many seconds passed since the last (0: off)
    keep_checkpoints = 3         # numbered checkpoints kept besides latest.pt
    plot_freq = 500              # iterations between TensorBoard / PNG renders of one view (0: only at the end)
    plot_view = 0                # 0-based view index rendered in plots
    plot_res = 128               # longest side of the plot render in pixels
    render_chunk = 4096          # rays per chunk when rendering (memory knob)
    seed = 0
    solver = rays                # rays: IDR's ray batches from the views; texels: the whole UV chart per step
}
dataset {
    img_res = []                 # [H, W] to resample the scan's images to; [] keeps their size
    views = []                   # 0-based views to train on; [] = all
}
"""

BLOCKS = ("train", "dataset", "model", "loss")

# Where the named confs live: confs/ at the repository root (pip install -e . keeps the package there).
PRESETS = {"detail": "fast.conf", "paper": "test.conf", "pbidr-cpu": "fast_pbidr.conf", "detail-mlp": "fast_mlp.conf"}
DEFAULT_PRESET = "detail"
PRESET_HELP = ("detail = confs/fast.conf (the default: the detail mode, a displacement map fitted on every texel, "
               "sized for 2 CPU cores), "
               "paper = confs/test.conf (the paper's settings, for a GPU: hours on a CPU), "
               "pbidr-cpu = confs/fast_pbidr.conf (PBIDR's model at CPU size), "
               "detail-mlp = confs/fast_mlp.conf (the detail mode with ray batches and a residual MLP)")

# Keys whose default is written as an integer but which hold seconds (any number).
_FLOAT_KEYS = {"train.time_budget_s", "train.checkpoint_seconds"}
# Keys that must be > 0 (every other number must be >= 0: no key of the conf means anything negative).
_POSITIVE = {"train.batch_size", "train.nepoch", "train.learning_rate", "train.sched_factor", "train.plot_res",
             "train.render_chunk", "model.sdf_network.max_residual", "model.sdf_network.beta",
             "model.ray_tracer.object_bounding_sphere", "model.ray_tracer.sdf_threshold",
             "model.ray_tracer.line_search_step", "model.ray_tracer.band", "model.sdf_chunk",
             "model.residual_lowpass_radius", "model.residual_lowpass_samples", "loss.alpha", "loss.alpha_factor",
             "model.displacement_map.max_displacement", "loss.texel.albedo_radius_mm", "loss.texel.robust_scale",
             "loss.texel.lowpass_sigma_mm", "loss.texel.light_iters"}
_AT_MOST_ONE = {"train.mask_ray_fraction"}
_CHOICES = {"model.diffuse_normal": ("coarse", "sdf"), "model.sdf_network.d_in": (3,), "train.solver": ("rays", "texels"),
            "loss.texel.colour_source": ("texture", "views"), "loss.texel.light_model": ("lambert", "poly"),
            "loss.texel.albedo_guide_order": (1, 2),
            "model.diffuse_network.d_out": (1, 3), "model.specular_network.d_out": (1, 3)}
# List keys whose entries must be > 0 (layer widths, image size); other lists hold indices or steps (>= 0).
_POSITIVE_ENTRIES = ("dims", "img_res")


def did_you_mean(key: str, known) -> str:
    """' (did you mean batch_size?)' for a near miss of one of ``known``, else ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_keys(user: ConfigTree, default: ConfigTree, where: str, source: str) -> None:
    for key, value in user.items():
        if key not in default:
            known = ", ".join(sorted(default.keys()))
            raise PbidrError(f"{source}: unknown key {where}.{key}{did_you_mean(key, default.keys())} "
                             f"(known in {where}: {known})")
        if isinstance(value, ConfigTree) and isinstance(default[key], ConfigTree):
            _check_keys(value, default[key], f"{where}.{key}", source)


def confs_dir() -> Path:
    """The repository's confs/ folder, found from the package's own location."""
    root = Path(__file__).resolve().parents[3]
    path = root / "confs"
    if not path.is_dir():
        raise PbidrError(f"{path}: the named confs are not there (pbidr runs from its repository: "
                         "pip install -e .); pass --conf FILE instead")
    return path


def preset_path(name: str) -> Path:
    """``--preset NAME`` -> its conf file."""
    if name not in PRESETS:
        raise PbidrError(f"--preset {name}: expected one of {', '.join(PRESETS)}")
    path = confs_dir() / PRESETS[name]
    if not path.is_file():
        raise PbidrError(f"{path}: conf file of --preset {name} not found")
    return path


def resolve_conf(conf: str | Path | None, preset: str | None) -> Path:
    """The conf file the command line asks for: --conf FILE, --preset NAME, or the default (detail)."""
    if conf is not None and preset is not None:
        raise PbidrError(f"--conf {conf} and --preset {preset}: give one of them")
    if conf is not None:
        path = Path(conf)
        if not path.is_file():
            raise PbidrError(f"--conf {conf}: conf file not found")
        return path
    return preset_path(preset or DEFAULT_PRESET)


class SetOverrides(dict):
    """{dotted key: value} from --set, with ``labels``: each key's item as typed (``--set KEY=VALUE``)."""

    def __init__(self):
        super().__init__()
        self.labels: dict[str, str] = {}


def parse_set(items: list[str] | tuple[str, ...] | None) -> SetOverrides:
    """``--set KEY=VALUE`` items -> {dotted key: value}; VALUE is HOCON (5, 1.0e-3, [64, 64], mesh, true).

    The one parser of --set for ``pbidr train`` and ``pbidr batch``; the keys and values are checked
    against the conf schema by :func:`parse_conf`."""
    out = SetOverrides()
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise PbidrError(f"--set {item}: expected KEY=VALUE, e.g. train.batch_size=1024")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", key):
            raise PbidrError(f"--set {item}: KEY must be a dotted conf key such as train.batch_size")
        if key in out:
            raise PbidrError(f"--set {key}: given twice")
        if not value.strip():
            raise PbidrError(f"--set {item}: empty value")
        try:
            tree = ConfigFactory.parse_string(f"v = {value}")
        except Exception as exc:  # pyhocon raises several parser exception types
            raise PbidrError(f"--set {item}: not a HOCON value ({' '.join(str(exc).split())[:120]}); "
                             "e.g. 5, 1.0e-3, [64, 64], mesh, true") from None
        if list(tree.keys()) != ["v"]:
            raise PbidrError(f"--set {item}: one value expected (quote a string holding commas or '=')")
        out[key] = tree["v"]
        out.labels[key] = f"--set {item}"
    return out


@functools.lru_cache(maxsize=128)
def _parsed(text: str) -> ConfigTree:
    # pyhocon takes ~0.1 s per commented default block; parse each text once (callers copy or only read)
    return ConfigFactory.parse_string(text)


def _defaults_tree() -> ConfigTree:
    """Every default key and value (read only)."""
    from pbidr.model.conf_defaults import DEFAULT_LOSS_CONF, DEFAULT_MODEL_CONF

    return _parsed(DEFAULT_TRAIN_CONF + DEFAULT_MODEL_CONF + DEFAULT_LOSS_CONF)


class ConfValueError(PbidrError):
    """A conf value that does not fit its key; ``key`` says which (for naming the source)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _choices(key: str) -> tuple | None:
    if key in _CHOICES:
        return _CHOICES[key]
    # the modules that use these values own the lists (imported here, so both always agree)
    if key == "model.sdf_network.parameterisation":
        from pbidr.model.pbidr_model import PARAMETERISATIONS

        return PARAMETERISATIONS
    if key == "model.ray_tracer.mode":
        from pbidr.model.ray_tracing import RayTracerConfig

        return RayTracerConfig.MODES
    if key == "loss.mesh_pull_norm":
        from pbidr.training.losses import _MESH_PULL_NORMS

        return _MESH_PULL_NORMS
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(key: str, value: Any, default: Any) -> None:
    """Raise ConfValueError when ``value`` does not fit the type, range or choices of ``key``."""
    def bad(why: str) -> None:
        raise ConfValueError(key, f"{key} = {value!r}: {why}")

    choices = _choices(key)
    if isinstance(default, ConfigTree):
        bad("expected a block { ... }")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            bad("expected true or false")
        return
    if isinstance(default, str):
        if not isinstance(value, str):
            bad(f"expected one of {', '.join(choices)}" if choices else "expected a string")
        if choices and value not in choices:
            bad(f"expected one of {', '.join(choices)}")
        return
    if isinstance(default, list):
        if not isinstance(value, list):
            bad("expected a list like [1, 2]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            bad("expected a list of integers")
        least = 1 if key.rsplit(".", 1)[-1] in _POSITIVE_ENTRIES else 0
        if any(v < least for v in value):
            bad(f"every entry must be >= {least}")
        return
    if not _is_number(value):
        bad("expected a number")
    if isinstance(default, int) and key not in _FLOAT_KEYS and not isinstance(value, int):
        bad("expected an integer")
    if not math.isfinite(float(value)):
        bad("expected a finite number")
    if choices and value not in choices:
        bad(f"expected one of {', '.join(str(c) for c in choices)}")
    if key in _POSITIVE and not value > 0:
        bad("must be > 0")
    if value < 0:
        bad("must be >= 0")
    if key in _AT_MOST_ONE and value > 1:
        bad("must be in [0, 1]")


def _check_values(conf: ConfigTree, defaults: ConfigTree, where: str = "") -> None:
    for key, default in defaults.items():
        full = f"{where}{key}"
        value = conf.get(key)
        if isinstance(default, ConfigTree) and isinstance(value, ConfigTree):
            _check_values(value, default, full + ".")
        else:
            _check_value(full, value, default)


def _check_builds(conf: ConfigTree) -> None:
    """Build the model and the loss once on the CPU, so what only they check fails now, not after the
    scan is read. The RNG state is left as it was (building draws initial weights)."""
    import torch

    from pbidr.model.pbidr_model import PBIDRModel
    from pbidr.training.losses import PBIDRLoss

    try:
        with torch.random.fork_rng(devices=[]):
            PBIDRModel(conf.get_config("model"))
            PBIDRLoss(conf.get_config("loss"))
    except (ValueError, TypeError, KeyError, IndexError, ConfigException) as exc:
        raise PbidrError(" ".join(str(exc).split()) or exc.__class__.__name__) from None


def _build(user: ConfigTree, source: str) -> ConfigTree:
    """The user's blocks over the defaults, every key and value checked; errors start with ``source``."""
    defaults = copy.deepcopy(_parsed(DEFAULT_TRAIN_CONF))
    for block in ("train", "dataset"):
        if block in user:
            if not isinstance(user[block], ConfigTree):
                raise PbidrError(f"{source}: {block} must be a block {{ ... }}")
            _check_keys(user.get_config(block), defaults.get_config(block), block, source)
    for block in ("model", "loss"):
        if block in user and not isinstance(user[block], ConfigTree):
            raise PbidrError(f"{source}: {block} must be a block {{ ... }}")
    try:
        model = model_conf(user.get_config("model") if "model" in user else None)
        loss = loss_conf(user.get_config("loss") if "loss" in user else None)
    except PbidrError as err:
        raise PbidrError(f"{source}: {err}") from None
    conf = ConfigTree()
    conf.put("train", user.get_config("train").with_fallback(defaults.get_config("train"))
             if "train" in user else defaults.get_config("train"))
    conf.put("dataset", user.get_config("dataset").with_fallback(defaults.get_config("dataset"))
             if "dataset" in user else defaults.get_config("dataset"))
    conf.put("model", model)
    conf.put("loss", loss)
    try:
        _check_values(conf, _defaults_tree())
    except ConfValueError as err:
        raise ConfValueError(err.key, f"{source}: {err}") from None
    if len(conf.get_list("dataset.img_res")) not in (0, 2):
        raise PbidrError(f"{source}: dataset.img_res must be [] or [H, W]")
    try:
        _check_builds(conf)
    except PbidrError as err:
        raise PbidrError(f"{source}: {err}") from None
    return conf


def parse_conf(text: str | None = None, source: str = "conf", overrides: dict[str, Any] | None = None,
               labels: dict[str, str] | None = None) -> ConfigTree:
    """Parse a conf (HOCON text), apply ``overrides`` (dotted keys) and fill the defaults.

    Every key and value is checked. A fault of the text itself is reported as ``source: ...``; one an
    override brings in as the override's label (``labels[key]``, by default ``--set KEY=VALUE``)."""
    try:
        user = copy.deepcopy(_parsed(text or ""))  # a copy: the overrides are put into it
    except Exception as exc:  # pyhocon raises several parser exception types
        raise PbidrError(f"{source}: not valid HOCON ({' '.join(str(exc).split())})") from None
    for key in user.keys():
        if key not in BLOCKS:
            raise PbidrError(f"{source}: unknown block '{key}' (expected {', '.join(BLOCKS)})")
    conf = _build(user, source)
    if not overrides:
        return conf
    labels = {**getattr(overrides, "labels", {}), **(labels or {})}

    def label(key: str) -> str:
        return labels.get(key) or f"--set {key}={_hocon(overrides[key])}"

    defaults = _defaults_tree()
    for key in overrides:
        head, _, leaf = key.rpartition(".")
        if head.split(".")[0] not in BLOCKS:
            raise PbidrError(f"{label(key)}: unknown block '{key.split('.')[0]}' (expected {', '.join(BLOCKS)})")
        parent = defaults.get(head, None) if head else defaults
        if not isinstance(parent, ConfigTree) or leaf not in parent:
            known = ", ".join(sorted(parent.keys())) if isinstance(parent, ConfigTree) else "none"
            hint = did_you_mean(leaf, parent.keys()) if isinstance(parent, ConfigTree) else ""
            raise PbidrError(f"{label(key)}: unknown key {key}{hint} (known in {head}: {known})")
    for key, value in overrides.items():
        user.put(key, value, append=False)
    try:
        return _build(user, "--set")
    except ConfValueError as err:
        culprit = next((k for k in overrides if err.key == k or err.key.startswith(k + ".")), None)
        text_ = str(err).removeprefix("--set: ")
        raise PbidrError(f"{label(culprit)}: {text_}" if culprit else f"{source}: {text_}") from None
    except PbidrError as err:
        text_ = str(err).removeprefix("--set: ")
        raise PbidrError(f"{' '.join(label(k) for k in overrides)}: {text_}") from None


def _hocon(value: Any) -> str:
    """A value as it would be typed after --set KEY= (for an override that came without its text)."""
    if isinstance(value, ConfigTree):
        return "{" + " ".join(HOCONConverter.to_hocon(value).split()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_conf(path: str | Path | None, overrides: dict[str, Any] | None = None,
              labels: dict[str, str] | None = None) -> ConfigTree:
    """Read a conf file (None: the built-in defaults = the original's settings, as confs/test.conf)."""
    if path is None:
        return parse_conf(None, "defaults", overrides, labels)
    path = Path(path)
    if not path.is_file():
        raise PbidrError(f"{path}: conf file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PbidrError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    return parse_conf(text, str(path), overrides, labels)


def conf_to_text(conf: ConfigTree) -> str:
    return HOCONConverter.to_hocon(conf) + "\n"
