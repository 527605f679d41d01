"""One subject through its stages, as plain Python calls; what went wrong is caught and recorded.

:func:`run_subject` is what both engines run (in this process, or as a Ray task on any node). It
skips every stage :func:`pbidr.batch.state.stage_complete` calls finished, resumes a half-finished
training from its latest checkpoint, and re-runs the stages after any stage it had to run. A
failure ends only this subject: its one-line error goes to status.json, the traceback to log.txt.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbidr.batch.state import SCORE_FILE, STAGES, SubjectPaths, now, read_status, stage_complete, subject_paths, write_status
from pbidr.batch.subjects import Subject
from pbidr.errors import PbidrError
from pbidr.geometry.cameras import DEFAULT_MARGIN, Rig
from pbidr.training.checkpoints import checkpoint_path, is_run_dir


@dataclass(frozen=True)
class BatchSettings:
    """Everything a subject's stages need; picklable (it travels to Ray workers)."""

    out: Path
    stages: tuple[str, ...] = STAGES
    conf: str | None = None
    overrides: tuple[str, ...] = ()       # KEY=VALUE conf overrides, as `pbidr train --set`
    rig: Rig = field(default_factory=Rig)
    margin: float = DEFAULT_MARGIN
    renderer: str = "embree"
    device: str = "auto"
    mc_resolution: int = 512
    eval_views: str = "all"
    threads: int | None = None            # torch threads per subject (Ray: its CPUs); None keeps torch's
    units: str | None = None              # the meshes' length unit (preprocess --units); None: mm, checked

    def identity(self) -> dict[str, Any]:
        """What the outputs depend on: a rerun into the same --out must agree (stages and engine may differ)."""
        import dataclasses

        from pbidr.training.conf import conf_to_text, load_conf

        return {"conf": conf_to_text(load_conf(self.conf, parse_overrides(self.overrides))),
                "rig": dataclasses.asdict(self.rig), "margin": self.margin, "renderer": self.renderer,
                "mc_resolution": self.mc_resolution, "eval_views": self.eval_views, "units": self.units}


@dataclass
class SubjectOutcome:
    id: str
    state: str                    # done | failed | interrupted
    stage: str | None = None      # the stage that failed (or was interrupted)
    error: str | None = None
    transient: bool = False       # worth a retry (not a PbidrError: those are the input's fault)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    attempt: int = 1


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """KEY=VALUE items -> overrides, by the one --set parser of ``pbidr train`` (pbidr.training.conf)."""
    from pbidr.training.conf import parse_set

    return parse_set(items)


def error_line(exc: BaseException) -> str:
    """One line for the summary: a PbidrError as is, anything else with its type (OOM spelled out)."""
    if isinstance(exc, PbidrError):
        return str(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory ({exc.__class__.__name__}: {text[:200]})"
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__


# ------------------------------------------------------------------------------------------------
# The stages: each returns what goes into its status record


def _preprocess(subject: Subject, sp: SubjectPaths, settings: BatchSettings, upstream_fresh: bool) -> dict:
    from pbidr.preprocess.pipeline import preprocess

    meta = preprocess(subject.source, sp.scan, settings.rig, renderer=settings.renderer, margin=settings.margin,
                      device=settings.device, progress=False, units=settings.units)
    return {"n_views": meta["n_views"]}


def _train(subject: Subject, sp: SubjectPaths, settings: BatchSettings, upstream_fresh: bool) -> dict:
    from pbidr.training.trainer import Trainer
    from pbidr.utils.device import pick_device

    resume = False
    if is_run_dir(sp.run):
        if not upstream_fresh and checkpoint_path(sp.run).is_file():
            resume = True  # our own half-finished training: continue it exactly
        else:  # made from an older scan, or killed before its first checkpoint: keep it aside, start over
            aside = sp.root / f"run.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            sp.run.rename(aside)
            print(f"pbidr batch: {sp.run} could not be resumed; moved to {aside.name}")
    trainer = Trainer(sp.scan, sp.run, settings.conf, parse_overrides(settings.overrides),
                      device=pick_device(settings.device), resume=resume, progress=False)
    start = trainer.step
    result = trainer.run()
    if result.interrupted:
        raise KeyboardInterrupt
    return {"step": result.step, "resumed_from": start, "s_per_iter": result.s_per_iter,
            "final_losses": result.last_losses}


def _eval(subject: Subject, sp: SubjectPaths, settings: BatchSettings, upstream_fresh: bool) -> dict:
    from pbidr.evaluation.run_eval import evaluate
    from pbidr.utils.atomic import write_json

    metrics = evaluate(sp.run, mc_resolution=settings.mc_resolution, views=settings.eval_views,
                       device=settings.device, progress=False)
    record: dict[str, Any] = {"step": metrics["step"]}
    if subject.ground_truth is not None:
        from pbidr.evaluation.score import score_mesh

        write_json(sp.eval / SCORE_FILE, score_mesh(sp.eval / "detailed.obj", subject.ground_truth))
    return record


STAGE_FUNCTIONS = {"preprocess": _preprocess, "train": _train, "eval": _eval}


# ------------------------------------------------------------------------------------------------


def run_subject(subject: Subject, settings: BatchSettings, attempt: int = 1) -> SubjectOutcome:
    """Bring ``subject`` through ``settings.stages``; never raises except on KeyboardInterrupt."""
    t_start = time.perf_counter()
    sp = subject_paths(settings.out, subject.id)
    sp.root.mkdir(parents=True, exist_ok=True)
    status = read_status(sp)
    status.update(subject=subject.id, source=str(subject.source),
                  ground_truth=str(subject.ground_truth) if subject.ground_truth else None)
    outcome = SubjectOutcome(subject.id, "done", attempt=attempt)
    has_truth = subject.ground_truth is not None
    upstream_fresh = False  # an earlier stage ran in this call: every later stage runs again
    if settings.threads:
        import torch

        torch.set_num_threads(max(1, int(settings.threads)))
    with open(sp.log, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"# {now()} attempt {attempt}: stages {','.join(settings.stages)}", flush=True)
        for stage in STAGES:
            if not upstream_fresh and stage_complete(sp, stage, status, has_truth):
                outcome.skipped.append(stage)
                continue
            if stage not in settings.stages:
                later = [s for s in STAGES[STAGES.index(stage) + 1:] if s in settings.stages]
                if later:
                    outcome.state, outcome.stage = "failed", later[0]
                    outcome.error = f"{later[0]} needs {stage} to be finished first (add it to --stages)"
                break
            record: dict[str, Any] = {"state": "running", "started": now(), "attempt": attempt}
            status["stages"][stage] = record
            for later in STAGES[STAGES.index(stage) + 1:]:
                status["stages"].pop(later, None)
            status.update(state="running", error=None)
            write_status(sp, status)
            t0 = time.perf_counter()
            try:
                record.update(STAGE_FUNCTIONS[stage](subject, sp, settings, upstream_fresh))
            except KeyboardInterrupt:
                record.update(state="interrupted", finished=now(), seconds=time.perf_counter() - t0)
                status.update(state="interrupted")
                write_status(sp, status)
                raise
            except Exception as exc:  # noqa: BLE001 -- any failure stays local to this subject
                traceback.print_exc()
                err = error_line(exc)
                record.update(state="failed", finished=now(), seconds=time.perf_counter() - t0, error=err)
                outcome.state, outcome.stage, outcome.error = "failed", stage, err
                outcome.transient = not isinstance(exc, PbidrError)
                break
            record.update(state="done", finished=now(), seconds=time.perf_counter() - t0)
            outcome.ran.append(stage)
            upstream_fresh = True
            write_status(sp, status)
        print(f"# {now()} {outcome.state}" + (f" at {outcome.stage}: {outcome.error}" if outcome.error else ""),
              flush=True)
    status.update(state=outcome.state, error=f"{outcome.stage}: {outcome.error}" if outcome.error else None)
    write_status(sp, status)
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def mark_failed(settings: BatchSettings, subject: Subject, error: str) -> None:
    """Record a failure the subject's own process could not (its Ray worker died)."""
    sp = subject_paths(settings.out, subject.id)
    status = read_status(sp)
    stage = "start"
    for name, record in status["stages"].items():
        if record.get("state") == "running":
            record.update(state="failed", finished=now(), error=error)
            stage = name
    status.update(state="failed", error=f"{stage}: {error}")
    write_status(sp, status)
