"""The Python API: recover the fine detail of a coarse textured face mesh, read a finished run, score a
mesh against the built-in sample's truth. ``import pbidr`` gives ``pbidr.recover``, ``pbidr.load_result``
and ``pbidr.score`` (they load this module on first use, so ``import pbidr`` stays light)::

    import pbidr

    pbidr.make_sample("face")                      # the built-in face, with its true detail
    result = pbidr.recover("face/mesh.obj", "out", iters=300, progress=False)
    print(result.metrics.recovered_fraction, result.metrics.psnr_db)
    d_mm = result.displacement_map()               # (H, W) float32, mm, in the texture's UV layout
    albedo = result.albedo_map()                   # (H, W, 3) float32 in [0, 1], the same layout
    print(result.light, result.paths.detailed_dense)
    again = pbidr.load_result("out")               # a finished run, read back
    print(pbidr.score(result.paths.detailed, "face").normal_error_ratio)

Arguments are checked as the command line checks them, before any work starts; every problem with
the input is raised as :class:`pbidr.PbidrError`, whose message is one line naming the file, the
option or the conf key, and the problem. Nothing half-written is left behind, and nothing pbidr did
not write is replaced (the stages' output rules, README "Stages").
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np

from pbidr.errors import PbidrError
from pbidr.batch.state import SubjectPaths
from pbidr.evaluation.results import (EvalMetrics, FittedLight, Score, eval_checkpoint, eval_metrics, find_eval_dir,
                                      read_metrics)
from pbidr.utils.progress import ProgressEvent

__all__ = ["recover", "load_result", "score", "make_sample", "Result", "ResultPaths", "EvalMetrics", "Score",
           "FittedLight", "ProgressEvent", "PbidrError"]

Progress = Union[bool, Callable[[ProgressEvent], None]]

# recover(**overrides) names that are not conf keys: the view rig of preprocess and eval's options
RIG_OPTIONS = ("yaw", "yaw_angle", "pitch", "pitch_angle", "res", "distance", "fov", "front", "up")
EVAL_OPTIONS = {"mc_resolution": 512, "eval_views": "default"}


# ResultPaths' files of eval (pbidr.evaluation.run_eval)
EVAL_FILES = {"detailed": "detailed.obj", "detailed_dense": "detailed_subdivided.obj", "glb": "detailed.glb",
              "displacement_exr": "displacement.exr", "compare": "compare.png", "metrics": "metrics.json"}


@dataclass(frozen=True)
class ResultPaths:
    """Where a run's outputs are: ``scan`` (pbidr preprocess; None when it is gone), ``run`` (pbidr
    train), ``eval`` (pbidr eval), and the files people open: ``detailed`` (the coarse mesh with every
    vertex displaced: same topology, UVs and texture), ``detailed_dense`` (the coarse mesh subdivided to
    about a texel, then displaced), ``glb`` (the dense mesh for Blender and glTF viewers, in metres),
    ``displacement_exr`` (mm), ``compare`` (coarse vs detailed vs truth, shaded) and ``metrics``."""

    scan: Path | None
    run: Path
    eval: Path
    detailed: Path
    detailed_dense: Path
    glb: Path
    displacement_exr: Path
    compare: Path
    metrics: Path

    @classmethod
    def of(cls, eval_dir: Path, scan: Path | None) -> "ResultPaths":
        return cls(scan=scan, run=eval_dir.parent, eval=eval_dir, **{k: eval_dir / v for k, v in EVAL_FILES.items()})


class Result:
    """A finished run: its ``paths``, its ``metrics`` and, loaded on first use, the ``light`` the fit
    anchored on the coarse shape and the displacement and albedo maps as arrays."""

    def __init__(self, eval_dir: Path):
        eval_dir = Path(eval_dir).absolute()  # the paths stay right when the caller changes folder
        metrics = read_metrics(eval_dir)
        scan = Path(str(metrics.get("scan_dir", "")))
        self.paths = ResultPaths.of(eval_dir, scan if scan.is_dir() else None)
        self.metrics: EvalMetrics = eval_metrics(metrics)

    def __repr__(self) -> str:
        m = self.metrics
        return (f"Result({self.paths.eval}, step {m.step}, displacement {m.displacement_min_mm:+.3f} .. "
                f"{m.displacement_max_mm:+.3f} mm, recovered fraction {m.recovered_fraction})")

    @functools.cached_property
    def _model(self):
        from pbidr.training.checkpoints import load_checkpoint, model_from_checkpoint

        path = eval_checkpoint(self.paths.eval, self.metrics.all)
        model, _ = model_from_checkpoint(load_checkpoint(path), path)
        return model.eval()

    @functools.cached_property
    def light(self) -> FittedLight | None:
        """The detail mode's fitted light (world frame); None for the ray modes, whose shading is
        networks with no explicit light. Loads the checkpoint once."""
        from pbidr.evaluation.results import fitted_light

        return fitted_light(self._model)

    def displacement_map(self) -> np.ndarray:
        """(H, W) float32: the displacement in mm along the coarse mesh's normals at every texel of the
        coarse texture's UV layout (row 0 is v = 1; displacement.exr)."""
        from pbidr.evaluation.export import read_exr

        return read_exr(self.paths.displacement_exr)

    def albedo_map(self) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]: the albedo the fit separated from the shading, in the same layout
        as :meth:`displacement_map`; 0 outside the UV chart."""
        from pbidr.evaluation.results import albedo_at_texels

        size = self.displacement_map().shape
        return albedo_at_texels(self._model, self.metrics.step, self.paths.eval, size, self.paths.scan)


def load_result(path: str | Path) -> Result:
    """A finished run read back: ``path`` is what :func:`recover` wrote, a run folder of ``pbidr train``
    (with its eval), its ``eval/`` folder, or a subject folder of ``pbidr batch``."""
    return Result(find_eval_dir(path))


def score(mesh: str | Path, sample: str | Path) -> Score:
    """Score ``mesh`` (world frame, mm; any topology) against the true detail of ``sample``, a folder
    written by ``pbidr sample`` / :func:`make_sample` (as ``pbidr score``)."""
    from pbidr.evaluation.score import score_mesh

    return Score.from_json(score_mesh(mesh, sample))


def make_sample(out: str | Path, seed: int = 0, grid: tuple[int, int] | None = None, texture_size: int = 1024,
                overwrite: bool = False) -> Path:
    """Write the built-in procedural face (``pbidr sample``): ``out/mesh.obj`` and its true detail.
    ``grid`` (vertices along the face's width and height) and ``texture_size`` make it smaller."""
    from pbidr.preprocess.sample import make_sample as write_sample

    write_sample(out, seed=seed, grid=grid, texture_size=texture_size, overwrite=overwrite)
    return Path(out)


# ------------------------------------------------------------------------------------------------
# recover


@dataclass
class _Plan:
    """Everything recover checked before the first stage runs; ``out`` is laid out as a subject of
    ``pbidr batch`` (scan/, run/, run/eval/), so that both are read the same way."""

    mesh: Path
    out: SubjectPaths
    conf_path: Path
    conf_overrides: dict[str, Any]
    rig: Any
    eval_options: dict[str, Any]
    device: Any


def recover(mesh: str | Path, out: str | Path, preset: str = "detail", device: str = "auto", *,
            conf: str | Path | None = None, units: str | None = None, overwrite: bool = False,
            progress: Progress = True, **overrides: Any) -> Result:
    """Recover the fine geometric detail of a coarse textured face mesh: preprocess, the fit and eval,
    as ``pbidr preprocess``, ``pbidr train`` and ``pbidr eval``, into ``out/scan``, ``out/run`` and
    ``out/run/eval``. Returns the :class:`Result`.

    ``mesh``: a mesh file (.obj with .mtl and texture, .ply, .glb, .gltf) or a folder holding ``mesh.*``.
    ``preset``: a named conf (``detail``, the default; ``paper``; ``pbidr-cpu``; ``detail-mlp``), or
    ``conf``: a HOCON file instead. ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda[:N]``.
    ``units``: the mesh's length unit (``mm``, ``cm``, ``m``; default mm, checked against a face's size).
    ``overwrite``: replace an earlier recover into ``out`` (anything else there is never replaced).
    ``progress``: True prints bars (plain lines off a terminal) as the command line does, False prints
    nothing, a callable receives every :class:`ProgressEvent` (stage, task, done, total, note) instead.

    ``overrides``: any conf key, by its name when it is unique (``iters=300``, ``batch_size=512``) or
    by its path with ``__`` for the dots (``loss__texel__seam_weight=5``), as ``pbidr train --set``;
    the view rig of preprocess (``yaw``, ``yaw_angle``, ``pitch``, ``pitch_angle``, ``res``,
    ``distance``, ``fov``, ``front``, ``up``); eval's ``mc_resolution`` (512) and ``eval_views``
    (``default``, ``all`` or 1-based numbers like ``[1, 9, 17]``; the default: the frontal view and the
    two extreme yaws of the rig).
    """
    plan = _plan(mesh, out, preset, conf, device, overwrite, progress, overrides)
    _run_stages(plan, units, overwrite, progress)
    return load_result(plan.out.root)


def _plan(mesh, out, preset, conf, device, overwrite: bool, progress: Progress, overrides: dict[str, Any]) -> _Plan:
    """Every argument checked, and the outputs' folders checked against the output rules."""
    from pbidr.geometry.cameras import Rig
    from pbidr.training.conf import load_conf, resolve_conf
    from pbidr.utils.device import pick_device

    if not (isinstance(progress, bool) or callable(progress)):
        raise PbidrError(f"progress={progress!r}: expected True, False or a callable taking a ProgressEvent")
    mesh, root = Path(mesh), Path(out)
    if not mesh.exists():
        raise PbidrError(f"{mesh}: no such mesh file or folder")
    if root.exists() and not root.is_dir():
        raise PbidrError(f"{root}: out exists and is not a folder; choose another out")
    conf_overrides, labels, rig_options, eval_options = _split_overrides(overrides)
    conf_path = resolve_conf(conf, None if conf is not None else preset)
    load_conf(conf_path, conf_overrides, labels)
    rig = Rig(**rig_options)
    rig.validate()
    mc = eval_options["mc_resolution"]
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 8:
        raise PbidrError(f"recover(mc_resolution={mc!r}): must be an integer of at least 8")
    plan = _Plan(mesh=mesh, out=SubjectPaths(root), conf_path=conf_path, conf_overrides=conf_overrides, rig=rig,
                 eval_options=eval_options, device=pick_device(device))
    _check_outputs(plan, overwrite)
    return plan


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict, dict]:
    """recover's keyword overrides -> (conf overrides by dotted key, their labels, rig options, eval
    options); an unknown or ambiguous name is a one-line error."""
    from pbidr.training.conf import conf_keys
    from pbidr.utils.config import did_you_mean

    keys = [k for k, _ in conf_keys()]
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(k.rsplit(".", 1)[1], []).append(k)
    conf, labels, rig, evals = {}, {}, {}, dict(EVAL_OPTIONS)
    for name, value in overrides.items():
        label = f"recover({name}={value!r})"
        if name in RIG_OPTIONS:
            rig[name] = tuple(value) if name in ("front", "up") else value
        elif name in EVAL_OPTIONS:
            evals[name] = value
        elif "__" in name or len(by_name.get(name, [])) == 1:
            key = name.replace("__", ".") if "__" in name else by_name[name][0]
            if key not in keys:
                raise PbidrError(f"{label}: no conf key {key}{did_you_mean(key, keys)}")
            conf[key], labels[key] = value, label
        elif name in by_name:
            raise PbidrError(f"{label}: {name} is a key of several blocks ({', '.join(by_name[name])}); "
                             f"name one with __ for the dots, e.g. {by_name[name][0].replace('.', '__')}=...")
        else:
            known = [*by_name, *RIG_OPTIONS, *EVAL_OPTIONS]
            raise PbidrError(f"{label}: unknown option {name}{did_you_mean(name, known)} (a conf key, a view-rig "
                             "option or mc_resolution / eval_views)")
    return conf, labels, rig, evals


def _check_outputs(plan: _Plan, overwrite: bool) -> None:
    """out/scan and out/run: new, empty, or an earlier recover's with ``overwrite`` (never anything else)."""
    from pbidr.training.checkpoints import is_run_dir
    from pbidr.utils.outputs import check_output

    check_output(plan.out.scan, "preprocess", overwrite, flag="out/scan")
    if plan.out.run.is_dir() and is_run_dir(plan.out.run):
        if not overwrite:
            raise PbidrError(f"{plan.out.run}: already holds a training run; pass overwrite=True to replace it, "
                             "or choose another out")
    else:
        check_output(plan.out.run, "train", overwrite, flag="out/run")


def _run_stages(plan: _Plan, units: str | None, overwrite: bool, progress: Progress) -> None:
    """preprocess, train and eval in turn, each reporting to ``progress``."""
    from pbidr.evaluation.run_eval import evaluate
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.training.trainer import Trainer

    with _reporting(progress, "preprocess") as shown:
        preprocess(plan.mesh, plan.out.scan, plan.rig, device=str(plan.device), progress=shown, overwrite=overwrite,
                   units=units)
    with _reporting(progress, "train") as shown:
        trained = Trainer(plan.out.scan, plan.out.run, plan.conf_path, plan.conf_overrides, device=plan.device,
                          progress=shown, overwrite=overwrite).run()
    if trained.interrupted:
        raise KeyboardInterrupt  # Ctrl-C during the fit: its checkpoint is saved
    views = plan.eval_options["eval_views"]
    with _reporting(progress, "eval") as shown:
        evaluate(plan.out.run, mc_resolution=plan.eval_options["mc_resolution"], device=plan.device, progress=shown,
                 overwrite=overwrite, views=",".join(map(str, views)) if isinstance(views, (list, tuple)) else views)


@contextlib.contextmanager
def _reporting(progress: Progress, stage: str) -> Iterator[bool]:
    """``with _reporting(progress, stage) as shown``: ``shown`` is the stages' own progress flag; a
    callable ``progress`` receives the stage's bars and notes instead of the terminal."""
    if callable(progress):
        from pbidr.utils.progress import report_progress_to

        with report_progress_to(progress, stage):
            yield True
    else:
        yield bool(progress)
