"""``pbidr train``: the IDR-style optimisation with PBIDR's decoupled renderer.

Run directory layout::

    run.conf            the resolved configuration (eval reloads it)
    run.json            scan directory, device, versions, start time
    log.txt             one line per logged iteration (plain text)
    checkpoints/        latest.pt and step_NNNNNNN.pt (atomic: temp file + rename), each with a .sha256
    .pbidr-stage        marker: a `pbidr train` run, done or not (pbidr.utils.outputs.stage_done)
    .lock               pid of the training writing into the folder (a second one refuses)
    plots/              step_NNNNNNN.png renders of one view (rgb / diffuse / specular / albedo / normal)
    tb/                 TensorBoard scalars and images

A checkpoint holds step, model, optimiser, scheduler, alpha, every RNG state and the conf, so
``--resume`` continues exactly where the run stopped. Checkpoints are written every
``checkpoint_freq`` steps and every ``checkpoint_seconds`` seconds, so a kill loses at most that
much; a checkpoint that fails its checksum or does not load is skipped for the previous numbered
one, with a warning. A run killed before its first checkpoint resumes from step 0.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbidr.version import __version__
from pbidr.datasets.scan import RaySampler, ScanData, load_scan, resize_camera
from pbidr.detail.solver import TexelSolver, fit_config, map_resolution
from pbidr.errors import PbidrError
from pbidr.model.pbidr_model import PBIDRModel
from pbidr.model.render import batch_to_device, render_camera
from pbidr.training.checkpoints import (CHECKPOINT_DIR, checkpoint_path, checksum_path, is_run_dir,
                                        latest_good_checkpoint, write_checkpoint)
from pbidr.training.conf import RunConfig, TrainConfig, conf_to_text, load_conf, parse_conf
from pbidr.training.losses import LossTerms, PBIDRLoss
from pbidr.training.regularisers import RegulariserSampler
from pbidr.utils.atomic import write_json, write_text
from pbidr.utils.config import hocon_value, leaves
from pbidr.utils.images import contact_sheet, write_png
from pbidr.utils.lock import PidLock, lock_owner
from pbidr.utils.outputs import check_output, write_marker
from pbidr.utils.progress import progress_bar

LOCK = ".lock"
# The first steps timed for the run-time estimate (the very first one, warming caches, is left out),
# and the projected time above which the estimate is printed.
ESTIMATE_STEPS = 5
LONG_RUN_S = 3600.0


def long_run_warning(s_per_iter: float, remaining_steps: int, device: torch.device | str,
                     budget_s: float = 0.0) -> str | None:
    """One line when ``remaining_steps`` at ``s_per_iter`` (measured) will take over LONG_RUN_S."""
    projected = s_per_iter * remaining_steps
    if budget_s > 0:
        projected = min(projected, budget_s)  # train.time_budget_s stops the run earlier
    if projected <= LONG_RUN_S:
        return None
    return (f"at {s_per_iter:.2f} s/it on {device} the remaining {remaining_steps:,} steps take about "
            f"{projected / 3600:.1f} h; for a CPU-sized run use the default conf (--preset detail = "
            "confs/fast.conf) or fewer --iters (Ctrl-C saves a checkpoint; --resume continues)")


# What may change when a run resumes: its length and its bookkeeping. Anything else (the model, the
# losses, the data, the learning rate, the seed) would be silently overridden by the checkpoint's
# weights, optimiser, scheduler and RNG states, or would mix two settings in one run.
RESUMABLE_KEYS = tuple(f"train.{k}" for k in ("iters", "nepoch", "time_budget_s", "checkpoint_freq",
                                               "checkpoint_seconds", "keep_checkpoints", "plot_freq", "plot_view",
                                               "plot_res", "render_chunk"))


def conf_differences(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every value that differs between two confs."""
    before = {key: value for key, value, _ in leaves(old)}
    return [(key, before[key], value) for key, value, _ in leaves(new) if before.get(key) != value]


def _short(value: Any) -> str:
    text = hocon_value(value) if isinstance(value, (bool, list, str)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class TrainResult:
    exp_dir: Path
    step: int
    total_steps: int
    seconds: float
    rays_per_s: float
    s_per_iter: float
    last_losses: dict[str, float]
    interrupted: bool = False


# ------------------------------------------------------------------------------------------------
# Optimiser and training state (the checkpoint files: pbidr.training.checkpoints)


@dataclass
class TexelTerms:
    """One texel-solver step's energy terms (floats), shaped like LossTerms for the run loop."""

    terms: dict[str, float]

    @property
    def total(self) -> torch.Tensor:
        return torch.tensor(self.terms["total"])

    def as_floats(self) -> dict[str, float]:
        return dict(self.terms)


def make_optimizer(model: PBIDRModel, tc: TrainConfig, epoch_len: int):
    """Adam over two parameter groups, geometry (the SDF network) and appearance (the rest), and its
    schedule: both follow the multi-step decay (milestones in epochs); the geometry group's rate is
    ``sdf_lr_factor`` times the base and ramps up linearly over ``geometry_warmup_iters`` (0 = none),
    so the appearance networks fit the colours of the starting shape before the shape may move."""
    lr = tc.learning_rate
    geometry = list(model.sdf_network.parameters())
    ids = {id(p) for p in geometry}
    appearance = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.Adam([{"params": geometry, "lr": lr * tc.sdf_lr_factor},
                                  {"params": appearance, "lr": lr}], lr=lr)
    milestones = sorted(m * epoch_len for m in tc.sched_milestones)
    gamma, warmup = tc.sched_factor, tc.geometry_warmup_iters

    def decay(step: int) -> float:
        return gamma ** sum(1 for m in milestones if step >= m)

    def geometry_rate(step: int) -> float:
        return decay(step) * (min(1.0, step / warmup) if warmup > 0 else 1.0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [geometry_rate, decay])
    return optimizer, scheduler


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# The run


def _warn(text: str, kind: str = "warning") -> None:
    print(f"pbidr train: {kind}: {text}", file=sys.stderr, flush=True)


@dataclass
class RunStart:
    """Where a run starts, as the run folder's rules decide it (:meth:`Trainer._prepare_run_dir`): the
    scan folder (None: not given and not known from run.json), the conf file to load (None: a resumed
    run's own conf, else the built-in defaults), and for a resumed run its own conf and the checkpoint
    to continue (None: killed before its first one)."""

    scan_dir: str | Path | None
    conf_file: str | Path | None
    checkpoint: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    saved_conf: tuple[str, Path] | None = None  # a resumed run's own conf: (HOCON text, the file it is from)


@dataclass
class StepResult:
    """One loop step: the step's terms and its wall time (seconds)."""

    terms: LossTerms | TexelTerms
    seconds: float


@dataclass
class Cadence:
    """When the loop writes a checkpoint (every ``checkpoint_freq`` steps and every ``checkpoint_seconds``
    seconds; 0 = never) and a plot (every ``plot_freq`` steps)."""

    checkpoint_freq: int
    checkpoint_seconds: float
    plot_freq: int


@dataclass
class LoopClock:
    """The loop's clock: when it started (the time budget, the rates), the step it started at, and
    when the steps timed for the run-time estimate began (after the first one)."""

    t_start: float
    start_step: int
    t_timed: float | None = None


class Trainer:
    def __init__(self, scan_dir: str | Path | None, exp_dir: str | Path, conf_path: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, device: torch.device = torch.device("cpu"),
                 resume: bool = False, progress: bool = True, overwrite: bool = False, conf_given: bool = True):
        """``conf_given``: ``conf_path`` is what the caller asked for (--conf / --preset), so a resumed
        run is checked against it; False (the command line's default conf): a resumed run keeps its
        own conf, with ``overrides`` checked against it (:meth:`_check_resume_conf`)."""
        self.exp_dir = Path(exp_dir)
        self.device = device
        self.progress = progress
        overrides = dict(overrides or {})
        self._replace_old_run = False
        self._notes: list[str] = []  # printed now and written to log.txt when the run starts
        self._log_notes: list[str] = []
        self._saved_conf: RunConfig | None = None  # a resumed run's own conf
        start = self._prepare_run_dir(scan_dir, conf_path, resume, overwrite, conf_given)
        self._load_config(start, overrides)
        self._load_data()
        self._check_solver()
        self._check_resume_conf()
        self._build_model()
        self._build_optimiser()
        self._restore(start.checkpoint)
        self._stop_signal: int | None = None
        self.last_counts: dict[str, int] = {}
        self._tb = None
        for note in self._notes:
            _warn(note, "note")

    def _prepare_run_dir(self, scan_dir: str | Path | None, conf_path: str | Path | None, resume: bool,
                         overwrite: bool, conf_given: bool = True) -> RunStart:
        """The run folder's rules: a file, a foreign folder and a folder whose lock another training
        holds are refused; a run there is continued (``resume``), replaced when the run starts
        (``overwrite``) or refused; a new folder starts from step 0 with ``conf_path``."""
        if self.exp_dir.exists() and not self.exp_dir.is_dir():
            check_output(self.exp_dir, "train", overwrite, flag="--exp-dir")  # refuses a file
        owner = lock_owner(self.exp_dir / LOCK)
        if owner is not None and owner != os.getpid():
            raise PbidrError(f"{self.exp_dir}: another `pbidr train` (pid {owner}) is running in this run folder; "
                             f"wait for it or stop it (lock file {self.exp_dir / LOCK})")
        if is_run_dir(self.exp_dir):
            if resume:
                return self._resume_start(scan_dir, conf_path, conf_given)
            elif overwrite:
                self._replace_old_run = True
                return RunStart(scan_dir, conf_path)
            else:
                raise PbidrError(f"{self.exp_dir}: already holds a training run; pass --resume to continue it, "
                                 "--overwrite to start it again, or choose another --exp-dir")
        check_output(self.exp_dir, "train", overwrite, flag="--exp-dir")  # refuses a foreign folder
        if resume:
            if not self.exp_dir.exists():
                raise PbidrError(f"{self.exp_dir}: --resume given but the directory holds no run")
            self._notes.append(f"{self.exp_dir}: holds no run yet; starting it from step 0")
        return RunStart(scan_dir, conf_path)

    def _resume_start(self, scan_dir: str | Path | None, conf_path: str | Path | None, conf_given: bool) -> RunStart:
        """--resume on a run: its latest good checkpoint (or run.conf, killed before the first one) as the
        run's own conf, ``conf_path`` when the caller asked for it, and the scan folder from run.json
        unless given."""
        found = latest_good_checkpoint(self.exp_dir, warn=self._note_warning)
        try:
            run_info = json.loads((self.exp_dir / "run.json").read_text())
        except (OSError, ValueError):
            run_info = {}
        scan_dir = scan_dir or run_info.get("scan_dir")
        if found is not None:
            checkpoint, path = found
            return RunStart(scan_dir, conf_path if conf_given else None, checkpoint, path,
                            saved_conf=(checkpoint["conf"], path))
        # killed before its first checkpoint: start it again with its own conf
        run_conf = self.exp_dir / "run.conf"
        self._notes.append(f"{self.exp_dir}: the run has no checkpoint yet; starting it from step 0")
        if not run_conf.is_file():
            return RunStart(scan_dir, conf_path)
        return RunStart(scan_dir, conf_path if conf_given else None, saved_conf=(run_conf.read_text(), run_conf))

    def _load_config(self, start: RunStart, overrides: dict[str, Any]) -> None:
        """The conf (``start``'s file, else a resumed run's own, with ``overrides``) and the scan folder."""
        if start.saved_conf is not None:
            text, source = start.saved_conf
            self._saved_conf = parse_conf(text, str(source))
        if start.conf_file is None and start.saved_conf is not None:
            conf = parse_conf(start.saved_conf[0], str(start.saved_conf[1]), overrides)
        else:
            conf = load_conf(start.conf_file, overrides)
        if start.scan_dir is None:
            raise PbidrError("--input/--data SCAN_DIR is required for a new run")
        self.scan_dir = Path(start.scan_dir)
        self.conf = conf
        self.batch_size = conf.train.batch_size
        self.seed = conf.train.seed

    def _load_data(self) -> None:
        """The scan at the conf's resolution and views, its ray sampler, and the run's length in steps."""
        tc, dc = self.conf.train, self.conf.dataset
        self.data: ScanData = load_scan(self.scan_dir, tuple(dc.img_res) if dc.img_res else None, dc.views or None)
        if not 0 <= tc.plot_view < self.data.n_views:
            raise PbidrError(f"train.plot_view = {tc.plot_view} but the scan has {self.data.n_views} views")
        self.sampler = RaySampler(self.data)
        self.epoch_len = self.data.n_views  # IDR: one image per iteration, an epoch is every image once
        self.total_steps = tc.iters if tc.iters > 0 else tc.nepoch * self.epoch_len

    def _check_solver(self) -> None:
        """The solver and the SDF parameterisation go together; a displacement map's resolution 0 (auto)
        is resolved from the scan."""
        self.texel_solver = None
        self.solver = self.conf.train.solver
        param = self.conf.model.sdf_network.parameterisation
        if (self.solver == "texels") != (param == "displacement_map"):
            raise PbidrError(f"train.solver = {self.solver} and model.sdf_network.parameterisation = {param}: the "
                             "texel solver fits the displacement_map parameterisation, and only it")
        dmap = self.conf.model.displacement_map
        if param == "displacement_map" and dmap.resolution == 0:
            # resolved once and saved in the run's conf, so eval builds the same map
            dmap.resolution = map_resolution(0, self.data.mesh)

    def _check_resume_conf(self) -> None:
        """A resumed run keeps what its checkpoint was trained with: a conf that changes any other key
        is refused (naming the keys); the run's length and bookkeeping (:data:`RESUMABLE_KEYS`) may
        change, and a note says so."""
        if self._saved_conf is None:
            return
        changed = conf_differences(self._saved_conf, self.conf)
        fixed = [c for c in changed if c[0] not in RESUMABLE_KEYS]
        if fixed:
            shown = ", ".join(f"{key} ({_short(old)} -> {_short(new)})" for key, old, new in fixed[:4])
            more = f" and {len(fixed) - 4} more" if len(fixed) > 4 else ""
            raise PbidrError(f"{self.exp_dir}: --resume continues the run with its own conf, but --conf/--preset/--set "
                             f"change {shown}{more}; only the run's length and bookkeeping may change on resume "
                             "(train.iters, nepoch, time_budget_s, checkpoint, plot and render_chunk settings): start "
                             "a new run with --overwrite or another --exp-dir")
        for key, old, new in changed:
            self._notes.append(f"resuming with {key} = {_short(new)} (the run had {_short(old)})")

    def _build_model(self) -> None:
        """Seed every RNG (so the initial weights are the seed's), then the model on the coarse mesh, and
        the loss."""
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        random.seed(self.seed)
        self.model = PBIDRModel(self.conf.model).to(self.device)
        coarse = self.sampler.coarse
        self.model.attach_coarse_mesh(coarse.vertices, coarse.faces, coarse.vertex_normals, uv=self.data.mesh.uv,
                                      face_uv=self.data.mesh.face_uv, scale=float(self.data.scale_mat[0, 0]))
        self.loss_fn = PBIDRLoss(self.conf.loss)
        self.regulariser_sampler = RegulariserSampler(self.model)

    def _build_optimiser(self) -> None:
        """The texel solver's optimiser and schedule, or Adam over the networks (:func:`make_optimizer`)."""
        if self.solver == "texels":
            c = self.conf
            fit = fit_config(c.loss.texel, c.model.displacement_map, c.train.learning_rate, c.train.iters)
            self.texel_solver = TexelSolver(self.model, fit, c.loss.texel.colour_source, self.data.mesh, self.scan_dir,
                                            self.device, self.total_steps)
            self.optimizer, self.scheduler = self.texel_solver.optimizer, self.texel_solver.scheduler
        else:
            self.optimizer, self.scheduler = make_optimizer(self.model, self.conf.train, self.epoch_len)

    def _restore(self, checkpoint: dict[str, Any] | None) -> None:
        """Step 0, or the checkpoint's model, optimiser, scheduler, step and RNG states (exact resume)."""
        self.step = 0
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.step = int(checkpoint["step"])
            _set_rng_state(checkpoint["rng"], self.rng)

    def _note_warning(self, text: str) -> None:
        _warn(text)
        self._log_notes.append(f"warning: {text}")

    # -------------------------------------------------------------------------------------------
    def alpha(self) -> float:
        return self.loss_fn.alpha_for(self.step // self.epoch_len)

    def save_checkpoint(self) -> Path:
        if self.texel_solver is not None:
            self.texel_solver.refresh_buffers()
        state = {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "alpha": self.alpha(), "rng": _rng_state(self.rng),
            "conf": conf_to_text(self.conf), "pbidr_version": __version__, "n_views": self.data.n_views,
        }
        latest = checkpoint_path(self.exp_dir)
        write_checkpoint(latest, state)
        write_checkpoint(checkpoint_path(self.exp_dir, self.step), state)
        keep = self.conf.train.keep_checkpoints
        old = sorted(latest.parent.glob("step_*.pt"))[:-keep] if keep > 0 else []
        for p in old:
            p.unlink()
            checksum_path(p).unlink(missing_ok=True)
        self._last_checkpoint_t = time.perf_counter()
        return latest

    def _write_run_files(self) -> None:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.exp_dir / "run.conf", conf_to_text(self.conf))
        info = {"scan_dir": str(self.scan_dir.resolve()), "device": str(self.device), "pbidr_version": __version__,
                "torch": torch.__version__, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "n_views": self.data.n_views, "image_size": list(self.data.hw), "total_steps": self.total_steps}
        write_json(self.exp_dir / "run.json", info)

    def _log(self, text: str) -> None:
        with open(self.exp_dir / "log.txt", "a") as f:
            f.write(text + "\n")

    def _tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                print(f"pbidr train: warning: TensorBoard unavailable ({exc}); scalars go to log.txt only",
                      file=sys.stderr)
                self._tb = False
                return None
            self._tb = SummaryWriter(str(self.exp_dir / "tb"), purge_step=self.step or None)
        return self._tb or None

    def plot(self) -> Path:
        """Render the plot view at plot_res; PNG in plots/ and an image in TensorBoard. The texel
        solver shows its maps instead (D and the albedo in the chart): they are what it fits."""
        tc = self.conf.train
        if self.texel_solver is not None:
            from pbidr.detail.maps import maps_sheet

            self.texel_solver.refresh_buffers()
            sheet = maps_sheet(self.model.sdf_network, tc.plot_res)
            path = self.exp_dir / "plots" / f"step_{self.step:07d}.png"
            write_png(path, sheet)
            return path
        cam = self.data.cameras[tc.plot_view]
        scale = tc.plot_res / max(cam.width, cam.height)
        small = resize_camera(cam, max(1, round(cam.width * scale)), max(1, round(cam.height * scale)))
        self.model.set_step(self.step)
        view = render_camera(self.model, self.sampler.coarse, small, self.device, tc.render_chunk)
        gt = self.data.images[tc.plot_view]
        import cv2

        gt = cv2.resize(gt, (small.width, small.height), interpolation=cv2.INTER_AREA)
        names = ["input", "rgb", "diffuse", "specular", "albedo", "normal"]
        sheet = contact_sheet([[gt, *view.images().values()]], [names])
        path = self.exp_dir / "plots" / f"step_{self.step:07d}.png"
        write_png(path, sheet)
        tb = self._tensorboard()
        if tb:
            tb.add_image("render", sheet, self.step, dataformats="HWC")
        return path

    # -------------------------------------------------------------------------------------------
    def train_step(self) -> LossTerms | "TexelTerms":
        if self.texel_solver is not None:
            terms = TexelTerms(self.texel_solver.step(self.step))
            self.step += 1
            return terms
        rays = self.sampler.sample(self.batch_size, self.rng, self.conf.train.mask_ray_fraction)
        batch = batch_to_device(rays, self.device)
        rgb_gt = torch.as_tensor(rays["rgb"], device=self.device) * 2.0 - 1.0  # images compared in [-1, 1]
        self.model.set_step(self.step)
        out = self.model(batch)
        # What this iteration evaluated: the benchmark turns these into FLOPs (pbidr.bench.flops).
        self.last_counts = {"n_sdf_evals": int(out.n_sdf_evals), "n_sdf_grad_evals": int(out.n_sdf_grad_evals),
                            "n_surface": int(out.surface_mask.sum()), "n_trace_fallback": int(out.n_trace_fallback)}
        terms = self.loss_fn(out, rgb_gt, alpha=self.alpha(), regularisers=self.regulariser_sampler(out))
        if not torch.isfinite(terms.total):
            raise FloatingPointError(terms)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return terms

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum

    def _start_over(self) -> None:
        """--overwrite on an earlier run: move it aside in one rename, start empty, delete it."""
        trash = self.exp_dir.parent / f".{self.exp_dir.name}.old-{os.getpid()}"
        os.replace(self.exp_dir, trash)
        self.exp_dir.mkdir()
        shutil.rmtree(trash, ignore_errors=True)

    def run(self) -> TrainResult:
        """Train under the run folder's lock (a second training into the same folder refuses)."""
        if self._replace_old_run:
            self._start_over()
            self._replace_old_run = False
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        lock = PidLock(self.exp_dir / LOCK, "another `pbidr train`")
        lock.acquire()
        try:
            for tmp in (self.exp_dir / CHECKPOINT_DIR).glob(".*.tmp*"):  # a killed run's half-written checkpoint
                tmp.unlink(missing_ok=True)
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> TrainResult:
        tc = self.conf.train
        cadence = Cadence(checkpoint_freq=tc.checkpoint_freq, plot_freq=tc.plot_freq,
                          checkpoint_seconds=tc.checkpoint_seconds)
        self._start_log()
        # Only the main thread may set signal handlers; a run in another thread (pbidr.recover in a
        # notebook's background thread) stops with its process, without the last checkpoint.
        in_main = threading.current_thread() is threading.main_thread()
        old_handlers = ({s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                        if in_main else {})
        clock = LoopClock(t_start=time.perf_counter(), start_step=self.step)
        last: dict[str, float] = {}
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="it",
                           disable=not self.progress)
        self._last_checkpoint_t = time.perf_counter()
        try:
            budget = tc.time_budget_s
            while self.step < self.total_steps and self._stop_signal is None:
                if budget > 0 and time.perf_counter() - clock.t_start >= budget:
                    self._log(f"# time budget of {budget:g} s reached at step {self.step}")
                    break
                step = self._step()
                self._estimate_run_time(clock, budget)
                last = step.terms.as_floats()
                rays_s = self.batch_size / max(step.seconds, 1e-9)
                self._log_step(bar, last, rays_s)
                self._maybe_checkpoint(cadence)
                self._maybe_plot(cadence)
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        return self._finish(clock, last, cadence)

    def _start_log(self) -> None:
        """run.conf and run.json for a new run, the not-done marker, and log.txt's notes and start line."""
        if self.step == 0:
            self._write_run_files()
        write_marker(self.exp_dir, "train", done=False, step=self.step, total_steps=self.total_steps)
        for note in self._log_notes + self._notes:
            self._log(f"# {note}")
        self._log(f"# {datetime.now().isoformat(timespec='seconds')} start at step {self.step} of "
                  f"{self.total_steps} on {self.device}, {self.data.n_views} views at {self.data.hw}, "
                  f"batch {self.batch_size}")

    def _step(self) -> StepResult:
        """One training step, timed; a non-finite loss saves the last good state and stops the run."""
        t0 = time.perf_counter()
        try:
            terms = self.train_step()
        except FloatingPointError as exc:
            path = self.save_checkpoint()
            bad = exc.args[0].as_floats() if exc.args and hasattr(exc.args[0], "as_floats") else {}
            self._log(f"non-finite loss at step {self.step + 1}: {bad}")
            raise PbidrError(f"non-finite loss at step {self.step + 1} ({bad}); stopped; the last good "
                             f"state is {path} (lower train.learning_rate or check the data)") from None
        return StepResult(terms=terms, seconds=time.perf_counter() - t0)

    def _estimate_run_time(self, clock: LoopClock, budget: float) -> None:
        """After the first ESTIMATE_STEPS timed steps, a note when the rest of the run will be long."""
        done_here = self.step - clock.start_step
        if done_here == 1:
            clock.t_timed = time.perf_counter()
        elif done_here == 1 + ESTIMATE_STEPS:
            note = long_run_warning((time.perf_counter() - clock.t_timed) / ESTIMATE_STEPS,
                                    self.total_steps - self.step, self.device, budget)
            if note:
                _warn(note, "note")
                self._log(f"# {note}")

    def _log_step(self, bar, last: dict[str, float], rays_s: float) -> None:
        """The progress bar's line every step; log.txt's line and TensorBoard's scalars every 10 steps
        and at the last."""
        bar.update(1)
        if self.texel_solver is not None:
            bar.set_postfix_str(" ".join(f"{k} {v:.4g}" for k, v in last.items()))
        else:
            bar.set_postfix_str(f"loss {last['total']:.4f} rgb {last['rgb']:.4f} eik {last['eikonal']:.4f} "
                                f"mask {last['mask']:.4f} pull {last['mesh_pull']:.2e} "
                                f"nrm {last['normal']:.4f} {rays_s:.0f} rays/s")
        if self.step % 10 == 0 or self.step == self.total_steps:
            lr = self.optimizer.param_groups[-1]["lr"]  # the appearance group (the only one for texels)
            self._log(f"step {self.step} " + " ".join(f"{k} {v:.6g}" for k, v in last.items())
                      + f" lr {lr:.3g} alpha {self.alpha():.4g} rays/s {rays_s:.0f}"
                      + (f" sdf_evals/ray {self.last_counts['n_sdf_evals'] / self.batch_size:.1f}"
                         f" trace_fallback {self.last_counts['n_trace_fallback']}" if self.last_counts else ""))
            tb = self._tensorboard()
            if tb:
                for k, v in last.items():
                    tb.add_scalar(f"loss/{k}", v, self.step)
                tb.add_scalar("train/lr", lr, self.step)
                tb.add_scalar("train/alpha", self.alpha(), self.step)
                tb.add_scalar("train/rays_per_s", rays_s, self.step)
                if self.last_counts:
                    tb.add_scalar("train/sdf_evals_per_ray", self.last_counts["n_sdf_evals"] / self.batch_size,
                                  self.step)

    def _maybe_checkpoint(self, cadence: Cadence) -> None:
        if (cadence.checkpoint_freq > 0 and self.step % cadence.checkpoint_freq == 0) or (
                cadence.checkpoint_seconds > 0
                and time.perf_counter() - self._last_checkpoint_t >= cadence.checkpoint_seconds):
            self.save_checkpoint()

    def _maybe_plot(self, cadence: Cadence) -> None:
        if cadence.plot_freq > 0 and self.step % cadence.plot_freq == 0:
            self.plot()

    def _finish(self, clock: LoopClock, last: dict[str, float], cadence: Cadence) -> TrainResult:
        """The final checkpoint and plot (a plot unless interrupted or just written), log.txt's last
        line, the marker (done when every step ran) and the run's result."""
        interrupted = self._stop_signal is not None
        self.save_checkpoint()
        if not interrupted and (cadence.plot_freq <= 0 or self.step % cadence.plot_freq != 0):
            self.plot()
        seconds = time.perf_counter() - clock.t_start
        n = max(self.step - clock.start_step, 1)
        result = TrainResult(exp_dir=self.exp_dir, step=self.step, total_steps=self.total_steps, seconds=seconds,
                             rays_per_s=n * self.batch_size / max(seconds, 1e-9), s_per_iter=seconds / n,
                             last_losses=last, interrupted=interrupted)
        self._log(f"# {'interrupted' if interrupted else 'finished'} at step {self.step}: {seconds:.1f} s, "
                  f"{result.s_per_iter:.3f} s/it, {result.rays_per_s:.0f} rays/s")
        write_marker(self.exp_dir, "train", done=not interrupted and self.step >= self.total_steps, step=self.step,
                     total_steps=self.total_steps)
        if self._tb:
            self._tb.close()
        return result
