"""Engines: ``local`` runs subjects one after another in this process; ``ray`` runs each as a Ray task.

Both retry a subject whose failure looks transient (not a PbidrError: those are the input's fault) up
to ``retries`` times, and report to a :class:`Progress`. The Ray engine asks for ``num_cpus`` /
``num_gpus`` per task (fractional GPUs let jobs share one); Ray sets ``CUDA_VISIBLE_DEVICES`` per task,
so ``--device auto`` picks the GPU Ray gave it. Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Callable

from tqdm import tqdm

from pbidr.batch.stages import BatchSettings, SubjectOutcome, error_line, mark_failed, run_subject
from pbidr.batch.subjects import Subject
from pbidr.errors import PbidrError

RAY_INSTALL_HINT = "pip install -e .[ray]  (or: pip install -r requirements-ray.txt)"
CANCEL_GRACE_S = 60.0  # time the cancelled Ray tasks get to save their checkpoints on Ctrl-C


class Progress:
    """Subjects done / running / failed with an ETA (tqdm), and one line per finished subject."""

    def __init__(self, total: int, enabled: bool = True, on_finish: Callable[[SubjectOutcome], None] | None = None):
        self.running: set[str] = set()
        self.slots: int | None = None  # subjects the resources can run at once (Ray queues the rest)
        self.done = self.failed = 0
        self.on_finish = on_finish
        self.bar = tqdm(total=total, desc="batch", unit="subject", disable=not enabled, dynamic_ncols=True,
                        file=sys.stderr)
        self.enabled = enabled

    def _postfix(self) -> None:
        running = len(self.running) if self.slots is None else min(len(self.running), self.slots)
        queued = len(self.running) - running
        self.bar.set_postfix_str(f"done {self.done} running {running} failed {self.failed}"
                                 + (f" queued {queued}" if queued else ""))

    def started(self, sid: str) -> None:
        self.running.add(sid)
        self._postfix()

    def retry(self, outcome: SubjectOutcome) -> None:
        self.running.discard(outcome.id)
        self._note(f"{outcome.id}: attempt {outcome.attempt} failed at {outcome.stage}: {outcome.error}; retrying")

    def finished(self, outcome: SubjectOutcome) -> None:
        self.running.discard(outcome.id)
        if outcome.state == "done":
            self.done += 1
            what = f"ran {','.join(outcome.ran)}" if outcome.ran else "nothing to do"
            self._note(f"{outcome.id}: done ({what}; {outcome.seconds:.1f} s)")
        else:
            self.failed += 1
            self._note(f"{outcome.id}: FAILED at {outcome.stage}: {outcome.error}")
        self.bar.update(1)
        self._postfix()
        if self.on_finish is not None:
            self.on_finish(outcome)

    def refresh(self) -> None:
        self.bar.refresh()

    def _note(self, text: str) -> None:
        if self.enabled:
            self.bar.write(f"[batch] {text}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def run_local(subjects: list[Subject], settings: BatchSettings, retries: int, progress: Progress) -> list[SubjectOutcome]:
    outcomes = []
    for subject in subjects:
        attempt = 1
        while True:
            progress.started(subject.id)
            outcome = run_subject(subject, settings, attempt)
            if outcome.state == "failed" and outcome.transient and attempt <= retries:
                progress.retry(outcome)
                attempt += 1
                continue
            break
        progress.finished(outcome)
        outcomes.append(outcome)
    return outcomes


# ------------------------------------------------------------------------------------------------
# Ray


def import_ray():
    try:
        import ray
    except ImportError:
        raise PbidrError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def _ray_subject(subject: Subject, settings: BatchSettings, attempt: int) -> SubjectOutcome:
    return run_subject(subject, settings, attempt)


def _init_ray(ray, address: str | None) -> bool:
    """Join ``address`` or start a local Ray, unless one is already initialised in this process; whether
    this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise PbidrError(f"could not start or join {where}: {' '.join(str(exc).split())[:300]}") from None
    return True


def _ray_slots(ray, cpus_per_job: float, gpus_per_job: float, max_parallel: int | None) -> int:
    """How many subjects the cluster runs at once; a job that no node could ever hold is an error."""
    have = ray.cluster_resources()
    for name, need in (("CPU", cpus_per_job), ("GPU", gpus_per_job)):
        if need > 0 and have.get(name, 0.0) < need:
            raise PbidrError(f"--{name.lower()}s-per-job {need:g}: the Ray cluster has only "
                             f"{have.get(name, 0.0):g} {name}s, so no subject could ever start")
    needs = [(have.get(name, 0.0), need) for name, need in (("CPU", cpus_per_job), ("GPU", gpus_per_job)) if need > 0]
    slots = max(1, min(int(total // need + 1e-9) for total, need in needs))
    return min(slots, max_parallel) if max_parallel is not None else slots


def _ray_outcome(ray, ref, subject: Subject, attempt: int, settings: BatchSettings) -> SubjectOutcome:
    """The task's outcome; a task Ray lost (the worker died: OOM killer, segfault, node lost) is a
    transient failure, recorded as such."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        err = f"Ray task lost: {error_line(exc)}"
        outcome = SubjectOutcome(subject.id, "failed", stage=None, error=err, transient=True, attempt=attempt)
        mark_failed(settings, subject, err)
        return outcome


def _cancel_running(ray, running: dict) -> None:
    """Cancel the running tasks and give them CANCEL_GRACE_S to end: cancelling raises KeyboardInterrupt
    inside them, and the trainer saves a checkpoint first."""
    for ref in running:
        ray.cancel(ref)
    deadline = time.monotonic() + CANCEL_GRACE_S
    refs = list(running)
    while refs and time.monotonic() < deadline:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=1.0)


def run_ray(subjects: list[Subject], settings: BatchSettings, retries: int, progress: Progress,
            address: str | None = None, cpus_per_job: float = 1.0, gpus_per_job: float = 0.0,
            max_parallel: int | None = None) -> list[SubjectOutcome]:
    """Each subject as a Ray task. Joins ``address`` (a cluster), or starts a local Ray when none is
    given; a Ray already initialised in this process (tests, notebooks) is used as it is."""
    ray = import_ray()
    started_here = _init_ray(ray, address)
    try:
        progress.slots = _ray_slots(ray, cpus_per_job, gpus_per_job, max_parallel)
        remote = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(_ray_subject)
        pending = deque((s, 1) for s in subjects)
        running: dict = {}
        outcomes: list[SubjectOutcome] = []
        try:
            while pending or running:
                while pending and (max_parallel is None or len(running) < max_parallel):
                    subject, attempt = pending.popleft()
                    running[remote.remote(subject, settings, attempt)] = (subject, attempt)
                    progress.started(subject.id)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                progress.refresh()
                for ref in ready:
                    subject, attempt = running.pop(ref)
                    outcome = _ray_outcome(ray, ref, subject, attempt, settings)
                    if outcome.state == "failed" and outcome.transient and attempt <= retries:
                        progress.retry(outcome)
                        pending.append((subject, attempt + 1))
                    else:
                        progress.finished(outcome)
                        outcomes.append(outcome)
        except KeyboardInterrupt:
            _cancel_running(ray, running)
            raise
        return outcomes
    finally:
        if started_here:
            ray.shutdown()
