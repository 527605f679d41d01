"""The one config loader: a run's conf is HOCON with ``train``, ``dataset``, ``model`` and ``loss``
blocks, read into one typed tree, :class:`RunConfig`.

Each component owns its block's dataclass, next to its code, with a default and a one-line doc per
field (``pbidr train --print-conf`` prints them): :class:`TrainConfig` (here), ``DatasetConfig``
(``pbidr.datasets.scan``), ``ModelConfig`` (``pbidr.model.pbidr_model``, with the SDF field's, the
shading networks' and the tracer's blocks) and ``LossConfig`` (``pbidr.training.losses``, with the texel
fit's). A conf file needs only the keys it changes. The text is parsed (pyhocon), ``--set`` overrides
are put in, and the blocks are built once: unknown keys are refused with a near-miss hint, and every
value is checked for type, range and choices (``pbidr.utils.config``), then the model and the loss are
built once, so a typo never silently runs the default and never fails after the scan is read. The
one-line error names the conf file or the ``--set`` item at fault. The resolved conf is saved in the
run directory (``run.conf``) and in every checkpoint, and loads again through :func:`parse_conf`.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyhocon import ConfigFactory, ConfigTree, HOCONConverter

from pbidr.datasets.scan import DatasetConfig
from pbidr.errors import PbidrError
from pbidr.model.pbidr_model import ModelConfig, PBIDRModel
from pbidr.training.losses import LossConfig, PBIDRLoss
from pbidr.utils.config import (Config, SettingError, UnknownKeyError, block, build, describe, did_you_mean,
                                hocon_value, leaves, setting, to_dict)

SOLVERS = ("rays", "texels")


@dataclass
class TrainConfig(Config):
    """The ``train`` block: the optimisation's schedule, batches, checkpoints and plots."""

    batch_size: int = setting(2048, "rays per iteration (the original's num_pixels)", positive=True)
    learning_rate: float = setting(1.0e-4, "Adam's base learning rate", positive=True)
    sched_milestones: list[int] = setting([1000, 1500], "epochs at which the learning rate is multiplied by "
                                                        "sched_factor")
    sched_factor: float = setting(0.5, "learning-rate factor at each milestone", positive=True)
    time_budget_s: float = setting(0.0, "> 0: stop (with a checkpoint) after this many seconds of this session")
    mask_ray_fraction: float = setting(0.0, "fraction of each batch's rays drawn inside the object mask "
                                            "(0: uniform, IDR)", at_most_one=True)
    sdf_lr_factor: float = setting(1.0, "the SDF network's learning rate = learning_rate x this")
    geometry_warmup_iters: int = setting(0, "the SDF network's learning rate ramps up from 0 over this many "
                                            "iterations")
    nepoch: int = setting(2000, "epochs; one epoch = n_views iterations (IDR: one image per iteration)",
                          positive=True)
    iters: int = setting(0, "> 0 overrides nepoch: the total number of iterations")
    checkpoint_freq: int = setting(100, "iterations between checkpoints")
    checkpoint_seconds: float = setting(60.0, "also a checkpoint when this many seconds passed since the last "
                                              "(0: off)")
    keep_checkpoints: int = setting(3, "numbered checkpoints kept besides latest.pt")
    plot_freq: int = setting(500, "iterations between TensorBoard / PNG renders of one view (0: only at the end)")
    plot_view: int = setting(0, "0-based view index rendered in plots")
    plot_res: int = setting(128, "longest side of the plot render in pixels", positive=True)
    render_chunk: int = setting(4096, "rays per chunk when rendering (memory knob)", positive=True)
    seed: int = setting(0, "seed of every random number generator")
    solver: str = setting("rays", "rays: IDR's ray batches from the views; texels: the whole UV chart per step",
                          choices=SOLVERS)


@dataclass
class RunConfig(Config):
    """A run's whole conf: one block per component."""

    train: TrainConfig = block(TrainConfig, "the optimisation")
    dataset: DatasetConfig = block(DatasetConfig, "the scan's views")
    model: ModelConfig = block(ModelConfig, "the model: SDF field, shading networks, ray tracer")
    loss: LossConfig = block(LossConfig, "the loss's weights, and the texel fit's energy")


BLOCKS = ("train", "dataset", "model", "loss")
_BLOCK_TYPES = {"train": TrainConfig, "dataset": DatasetConfig, "model": ModelConfig, "loss": LossConfig}

# Where the named confs live: confs/ at the repository root (pip install -e . keeps the package there).
PRESETS = {"detail": "fast.conf", "paper": "test.conf", "pbidr-cpu": "fast_pbidr.conf", "detail-mlp": "fast_mlp.conf"}
DEFAULT_PRESET = "detail"
PRESET_HELP = ("detail = confs/fast.conf (the default: the detail mode, a displacement map fitted on every texel, "
               "sized for 2 CPU cores), "
               "paper = confs/test.conf (the paper's settings, for a GPU: hours on a CPU), "
               "pbidr-cpu = confs/fast_pbidr.conf (PBIDR's model at CPU size), "
               "detail-mlp = confs/fast_mlp.conf (the detail mode with ray batches and a residual MLP)")

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


class ConfValueError(PbidrError):
    """A conf value that does not fit its key; ``key`` says which (for naming the source)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@functools.lru_cache(maxsize=128)
def _parsed(text: str) -> ConfigTree:
    # pyhocon takes ~0.1 s per commented conf; parse each text once (callers copy or only read)
    return ConfigFactory.parse_string(text)


def _parse(text: str | None, source: str) -> ConfigTree:
    """A copy of ``text`` parsed (the overrides are put into it)."""
    try:
        return copy.deepcopy(_parsed(text or ""))
    except Exception as exc:  # pyhocon raises several parser exception types
        raise PbidrError(f"{source}: not valid HOCON ({' '.join(str(exc).split())})") from None


def _block(cls: type, data: Any, name: str, source: str) -> Any:
    """One block built from the user's keys; errors start with ``source``."""
    try:
        return build(cls, data, name)
    except UnknownKeyError as err:
        raise PbidrError(f"{source}: {err}") from None
    except SettingError as err:
        raise ConfValueError(err.key, f"{source}: {err}") from None


def _check_builds(conf: RunConfig, source: str) -> None:
    """Build the model and the loss once on the CPU, so what only they check fails now, not after the
    scan is read. The RNG state is left as it was (building draws initial weights)."""
    try:
        with torch.random.fork_rng(devices=[]):
            PBIDRModel(conf.model)
            PBIDRLoss(conf.loss)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise PbidrError(f"{source}: {' '.join(str(exc).split()) or exc.__class__.__name__}") from None


def _build(user: ConfigTree, source: str) -> RunConfig:
    """The user's blocks over the defaults, every key and value checked; errors start with ``source``."""
    for key in user.keys():
        if key not in BLOCKS:
            raise PbidrError(f"{source}: unknown block '{key}' (expected {', '.join(BLOCKS)})")
    for name in BLOCKS:
        if name in user and not isinstance(user[name], ConfigTree):
            raise PbidrError(f"{source}: {name} must be a block {{ ... }}")
    conf = RunConfig(**{name: _block(cls, user.get(name, ConfigTree()), name, source)
                        for name, cls in _BLOCK_TYPES.items()})
    _check_builds(conf, source)
    return conf


def _check_override_keys(overrides: dict[str, Any], label) -> None:
    """Every ``--set`` key names a value or block of the tree."""
    for key in overrides:
        node: Any = RunConfig()
        parts = key.split(".")
        if parts[0] not in BLOCKS:
            raise PbidrError(f"{label(key)}: unknown block '{parts[0]}' (expected {', '.join(BLOCKS)})")
        for depth, part in enumerate(parts):
            if not isinstance(node, Config) or not hasattr(node, part):
                head = ".".join(parts[:depth])
                known = sorted(to_dict(node)) if isinstance(node, Config) else []
                raise PbidrError(f"{label(key)}: unknown key {key}{did_you_mean(part, known)} "
                                 f"(known in {head}: {', '.join(known) or 'none'})")
            node = getattr(node, part)


def parse_conf(text: str | None = None, source: str = "conf", overrides: dict[str, Any] | None = None,
               labels: dict[str, str] | None = None) -> RunConfig:
    """Parse a conf (HOCON text), apply ``overrides`` (dotted keys) and fill the defaults.

    Every key and value is checked. A fault of the text itself is reported as ``source: ...``; one an
    override brings in as the override's label (``labels[key]``, by default ``--set KEY=VALUE``)."""
    user = _parse(text, source)
    conf = _build(user, source)
    if not overrides:
        return conf
    labels = {**getattr(overrides, "labels", {}), **(labels or {})}

    def label(key: str) -> str:
        return labels.get(key) or f"--set {key}={_hocon(overrides[key])}"

    _check_override_keys(overrides, label)
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
    return hocon_value(value) if isinstance(value, (bool, list)) else str(value)


def load_conf(path: str | Path | None, overrides: dict[str, Any] | None = None,
              labels: dict[str, str] | None = None) -> RunConfig:
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


def conf_to_text(conf: RunConfig) -> str:
    """The resolved tree as HOCON (what run.conf and the checkpoints hold; :func:`parse_conf` reads it)."""
    return HOCONConverter.to_hocon(ConfigFactory.from_dict(to_dict(conf))) + "\n"


def describe_conf(conf: RunConfig) -> str:
    """The resolved tree as commented HOCON: each key's doc above it, and its default where it differs."""
    return "\n".join(describe(conf, RunConfig())) + "\n"


def same_conf(a: str, b: str) -> bool:
    """Whether two saved confs (run.conf texts) resolve to the same tree, however they are laid out."""
    return parse_conf(a, "saved conf") == parse_conf(b, "saved conf")


def conf_keys() -> list[tuple[str, Any]]:
    """(dotted key, default) of every value of the tree."""
    return [(key, value) for key, value, _ in leaves(RunConfig())]


def _block_config(cls: type, name: str, user: Any) -> Any:
    tree = user if isinstance(user, ConfigTree) else (_parse(user, name) if isinstance(user, str)
                                                      else ConfigFactory.from_dict(user or {}))
    if name in tree and isinstance(tree[name], ConfigTree) and len(tree) == 1:
        tree = tree[name]  # accept {model {...}} as well as the block itself
    return _block(cls, tree, name, name)


def model_config(user: Any = None) -> ModelConfig:
    """A ``model`` block (HOCON text, dict or ConfigTree; None: the defaults) as a checked ModelConfig."""
    return _block_config(ModelConfig, "model", user)


def loss_config(user: Any = None) -> LossConfig:
    """A ``loss`` block (HOCON text, dict or ConfigTree; None: the defaults) as a checked LossConfig."""
    return _block_config(LossConfig, "loss", user)
