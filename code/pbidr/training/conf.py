"""The run configuration: HOCON with ``train``, ``dataset``, ``model`` and ``loss`` blocks.

A conf file needs only the keys it changes; everything else falls back to the defaults here and
in ``pbidr.model.conf_defaults`` (the original's settings). Unknown keys are an error at start, so
a typo never silently runs the default. The resolved conf is saved in the run directory.
"""

from __future__ import annotations

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
}
dataset {
    img_res = []                 # [H, W] to resample the scan's images to; [] keeps their size
    views = []                   # 0-based views to train on; [] = all
}
"""

BLOCKS = ("train", "dataset", "model", "loss")


def _check_keys(user: ConfigTree, default: ConfigTree, where: str, source: str) -> None:
    for key, value in user.items():
        if key not in default:
            known = ", ".join(sorted(default.keys()))
            raise PbidrError(f"{source}: unknown key {where}.{key} (known in {where}: {known})")
        if isinstance(value, ConfigTree) and isinstance(default[key], ConfigTree):
            _check_keys(value, default[key], f"{where}.{key}", source)


def parse_conf(text: str | None = None, source: str = "conf", overrides: dict[str, Any] | None = None) -> ConfigTree:
    """Parse a conf (HOCON text), apply ``overrides`` (dotted keys) and fill the defaults."""
    try:
        user = ConfigFactory.parse_string(text or "")
    except Exception as exc:  # pyhocon raises several parser exception types
        raise PbidrError(f"{source}: not valid HOCON ({' '.join(str(exc).split())})") from None
    for key in user.keys():
        if key not in BLOCKS:
            raise PbidrError(f"{source}: unknown block '{key}' (expected {', '.join(BLOCKS)})")
    for key, value in (overrides or {}).items():
        user.put(key, value)
    defaults = ConfigFactory.parse_string(DEFAULT_TRAIN_CONF)
    for block in ("train", "dataset"):
        if block in user:
            _check_keys(user.get_config(block), defaults.get_config(block), block, source)
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
    try:  # touch every typed value now so a wrong type fails at start, not mid-run
        _ = [conf.get_int(f"train.{k}") for k in ("batch_size", "nepoch", "iters", "checkpoint_freq", "plot_freq",
                                                   "plot_view", "plot_res", "render_chunk", "seed",
                                                   "keep_checkpoints")]
        _ = conf.get_float("train.learning_rate"), conf.get_float("train.sched_factor")
        _ = conf.get_float("train.checkpoint_seconds")
        _ = conf.get_list("train.sched_milestones"), conf.get_list("dataset.img_res"), conf.get_list("dataset.views")
    except (ConfigException, ValueError, TypeError) as exc:
        raise PbidrError(f"{source}: {' '.join(str(exc).split())}") from None
    if conf.get_int("train.batch_size") <= 0:
        raise PbidrError(f"{source}: train.batch_size must be positive")
    if len(conf.get_list("dataset.img_res")) not in (0, 2):
        raise PbidrError(f"{source}: dataset.img_res must be [] or [H, W]")
    return conf


def load_conf(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ConfigTree:
    """Read a conf file (None: the defaults = the original's settings)."""
    if path is None:
        return parse_conf(None, "defaults", overrides)
    path = Path(path)
    if not path.is_file():
        raise PbidrError(f"{path}: conf file not found")
    return parse_conf(path.read_text(), str(path), overrides)


def conf_to_text(conf: ConfigTree) -> str:
    return HOCONConverter.to_hocon(conf) + "\n"
