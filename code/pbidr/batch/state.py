"""Where a subject's outputs live, its ``status.json``, the one check that a stage is finished, and
the check that a rerun into ``--out`` has the settings of its outputs (``batch.json``).

Layout under ``--out``::

    batch.json                      the settings the outputs were made with (a rerun must match)
    summary.csv  summary.md  overview.png
    subjects/<id>/status.json       per stage: state, started, finished, seconds, attempt, error
    subjects/<id>/log.txt           everything the stages printed, and tracebacks of failures
    subjects/<id>/scan/             pbidr preprocess
    subjects/<id>/run/              pbidr train (checkpoints/ ...), run/eval/ pbidr eval (+ score.json)

``status.json`` is written atomically by whoever runs the subject (this process or a Ray worker on
another node) after every change, so a crash leaves the last consistent state. A stage counts as
finished only when :func:`stage_complete` says so: its record says ``done`` *and* its key outputs are
there. Everything that decides "finished" goes through that one function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pbidr.errors import PbidrError
from pbidr.training.checkpoints import checkpoint_path
from pbidr.training.conf import same_conf
from pbidr.utils.atomic import write_json

STAGES = ("preprocess", "train", "eval")
SUBJECTS_DIR = "subjects"
SCORE_FILE = "score.json"
SETTINGS_FILE = "batch.json"


@dataclass(frozen=True)
class SubjectPaths:
    root: Path

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def scan(self) -> Path:
        return self.root / "scan"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def eval(self) -> Path:
        return self.root / "run" / "eval"


def subject_paths(out: str | Path, subject_id: str) -> SubjectPaths:
    return SubjectPaths(Path(out) / SUBJECTS_DIR / subject_id)


def now() -> str:
    """UTC timestamp with microseconds: stage records are compared by it (a rerun must not touch them)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_status(sp: SubjectPaths) -> dict[str, Any]:
    """The subject's status; a missing (or foreign) file reads as a fresh one."""
    status = _json(sp.status) or {}
    if not isinstance(status.get("stages"), dict):
        status["stages"] = {}
    return status


def write_status(sp: SubjectPaths, status: dict[str, Any]) -> None:
    status["updated"] = now()
    write_json(sp.status, status)


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def stage_complete(sp: SubjectPaths, stage: str, status: dict[str, Any], has_ground_truth: bool) -> bool:
    """True when ``stage`` of the subject is finished: recorded ``done`` and its key outputs present.

    preprocess: ``scan/meta.json``, ``scan/cameras.npz`` and as many images and masks as meta.json's
    views. train: ``run/run.json``'s total steps equal the recorded final step, and ``latest.pt`` and
    the numbered checkpoint of that step exist. eval: ``eval/metrics.json`` is of that same step,
    ``compare.png`` exists, and ``score.json`` when the subject has ground truth.
    """
    stages = status.get("stages", {})
    record = stages.get(stage) or {}
    if record.get("state") != "done":
        return False
    if stage == "preprocess":
        meta = _json(sp.scan / "meta.json")
        n = meta.get("n_views") if meta else None
        return (isinstance(n, int) and n > 0 and (sp.scan / "cameras.npz").is_file()
                and _count(sp.scan / "image", "*.png") == n and _count(sp.scan / "mask", "*.png") == n)
    if stage == "train":
        info = _json(sp.run / "run.json")
        step = record.get("step")
        return (info is not None and isinstance(step, int) and info.get("total_steps") == step
                and checkpoint_path(sp.run).is_file() and checkpoint_path(sp.run, step).is_file())
    if stage == "eval":
        metrics = _json(sp.eval / "metrics.json")
        train_step = (stages.get("train") or {}).get("step")
        ok = metrics is not None and metrics.get("step") == train_step and (sp.eval / "compare.png").is_file()
        return ok and (not has_ground_truth or _json(sp.eval / SCORE_FILE) is not None)
    raise ValueError(f"unknown stage {stage!r}")


def _same_setting(key: str, now: Any, before: Any) -> bool:
    """Whether a recorded setting agrees with this run's: equal as JSON (tuples and lists compare equal),
    or for the conf, the same tree however its text is laid out (an older pbidr wrote the keys in
    another order)."""
    now = json.loads(json.dumps(now))
    if now == before:
        return True
    if key == "conf" and isinstance(now, str) and isinstance(before, str):
        try:
            return same_conf(now, before)
        except PbidrError:
            return False
    return False


def check_settings(out: Path, identity: dict) -> None:
    """Refuse to mix outputs of different settings in one --out; record them on the first run."""
    path = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise PbidrError(f"{out}: exists and is not a folder; --out must be a (new or earlier batch's) folder")
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            raise PbidrError(f"{path}: unreadable; it records the settings of the outputs in {out}") from None
        if not isinstance(before, dict) or "settings" not in before:
            raise PbidrError(f"{path}: not a pbidr batch settings file")
        # JSON round trip so tuples and lists compare equal
        differ = [k for k in identity if not _same_setting(k, identity[k], before["settings"].get(k))]
        if differ:
            raise PbidrError(f"{out}: holds outputs made with other settings ({', '.join(differ)} differ, see {path}); "
                             "rerun with the same options or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise PbidrError(f"{out}: exists and is not a pbidr batch output folder (no {SETTINGS_FILE}); "
                         "choose an empty or new --out")
    write_json(path, {"settings": identity})
