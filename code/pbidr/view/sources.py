"""What ``pbidr view -i PATH`` shows: PATH resolved into subjects, each a set of meshes with their
displacements, the run's metrics and the face's frame. No viewer code here, so it is tested without one.

PATH is one of:

* a run of ``pbidr train`` with its eval (``RUN/eval/``), an eval folder, or a folder holding the run
  as ``run/`` (what ``pbidr.recover`` writes): one subject, with the coarse mesh (the scan's
  ``mesh.obj``), ``detailed.obj`` (coarse topology), ``detailed_subdivided.obj`` (dense) and, when the
  scan was made from a ``pbidr sample``, the sample's truth (``gt_detailed.obj``);
* a ``pbidr batch`` output (``batch.json``, ``subjects/ID/``): one subject per finished eval;
* a mesh file (.obj, .ply, .glb, .gltf), or a folder holding ``mesh.*``: shown alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pbidr.errors import PbidrError
from pbidr.evaluation.results import EvalMetrics, eval_metrics, find_eval_dir, is_eval_dir, read_metrics
from pbidr.io.load import MESH_SUFFIXES, find_mesh_in_dir

KINDS = ("run", "eval", "batch", "mesh")
# The meshes of a subject, in their side-by-side order, with the names the page shows.
MESH_LABELS = {"coarse": "coarse", "detailed": "detailed (coarse topology)", "dense": "detailed (dense)",
               "truth": "truth (sample)", "mesh": "mesh"}


@dataclass(frozen=True)
class MeshSource:
    """One mesh file of a subject; ``displacement`` (V,) .npy per vertex of the file, in units of
    ``displacement_mm`` millimetres (None: the mesh has none, e.g. a mesh file shown alone)."""

    key: str
    path: Path
    displacement: Path | None = None
    displacement_mm: float = 1.0

    @property
    def label(self) -> str:
        return MESH_LABELS[self.key]


@dataclass
class Subject:
    """One face: its meshes, its eval's metrics (None for a mesh file), the face's front and up
    directions (the scan's rig) and notes for the page (what is missing)."""

    name: str
    meshes: list[MeshSource]
    metrics: EvalMetrics | None = None
    front: tuple[float, float, float] = (0.0, 0.0, 1.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    notes: list[str] = field(default_factory=list)


@dataclass
class ViewSource:
    kind: str
    path: Path
    subjects: list[Subject]
    notes: list[str] = field(default_factory=list)


def resolve_source(path: str | Path) -> ViewSource:
    """PATH -> what the page shows; a one-line error naming PATH when it is none of the inputs."""
    path = Path(path)
    if not path.exists():
        raise PbidrError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise PbidrError(f"{path}: not a mesh file ({', '.join(MESH_SUFFIXES)}); pbidr view also takes a run, "
                             "an eval folder or a pbidr batch output")
        return ViewSource("mesh", path, [mesh_subject(path)])
    if (path / "batch.json").is_file() or (path / "subjects").is_dir():
        return batch_source(path)
    if any((path / f"mesh{s}").is_file() for s in MESH_SUFFIXES) and not (path / "run").is_dir():
        return ViewSource("mesh", path, [mesh_subject(find_mesh_in_dir(path))])
    eval_dir = find_eval_dir(path)  # a one-line error for a run without eval, or a foreign folder
    kind = "eval" if eval_dir == path else "run"
    return ViewSource(kind, path, [eval_subject(eval_dir, path.resolve().name)])


def mesh_subject(mesh: Path) -> Subject:
    return Subject(name=mesh.name, meshes=[MeshSource("mesh", mesh)])


def eval_subject(eval_dir: Path, name: str) -> Subject:
    """A finished eval's meshes, metrics and frame (see the module's docstring)."""
    from pbidr.evaluation.export import scan_frame
    from pbidr.evaluation.run_eval import sample_source

    metrics = eval_metrics(read_metrics(eval_dir))
    mm = metrics.mm_per_unit
    scan = Path(str(metrics.all.get("scan_dir", "")))
    subject = Subject(name=name, meshes=[], metrics=metrics)
    coarse = scan / "mesh.obj"
    if coarse.is_file():
        subject.meshes.append(MeshSource("coarse", coarse, None, mm))
        frame = scan_frame(scan)
        subject.front, subject.up = frame.front, frame.up
    else:
        subject.notes.append(f"coarse mesh not shown: {coarse} is missing (the run's scan folder)")
    subject.meshes.append(MeshSource("detailed", eval_dir / "detailed.obj", eval_dir / "displacement.npy", mm))
    dense = eval_dir / "detailed_subdivided.obj"
    if dense.is_file():
        subject.meshes.append(MeshSource("dense", dense, eval_dir / "displacement_subdivided.npy", mm))
    sample = sample_source(scan) if scan.is_dir() else None
    if sample is not None:  # the sample's truth is in mm (pbidr sample)
        subject.meshes.append(MeshSource("truth", sample / "gt_detailed.obj", sample / "gt_displacement.npy", 1.0))
    return subject


def batch_source(out: Path) -> ViewSource:
    """A ``pbidr batch`` output: one subject per ``subjects/ID/run/eval`` that finished."""
    subjects_dir = out / "subjects"
    folders = sorted(p for p in subjects_dir.iterdir() if p.is_dir()) if subjects_dir.is_dir() else []
    done = [p for p in folders if is_eval_dir(p / "run" / "eval")]
    if not done:
        raise PbidrError(f"{subjects_dir}: no subject of the batch has a finished eval yet "
                         f"({len(folders)} subject folder{'s' if len(folders) != 1 else ''})")
    source = ViewSource("batch", out, [eval_subject(p / "run" / "eval", p.name) for p in done])
    missing = [p.name for p in folders if p not in done]
    if missing:
        source.notes.append(f"{len(missing)} subject(s) without a finished eval, not listed: "
                            + ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else ""))
    return source


def metrics_markdown(metrics: EvalMetrics | None) -> str:
    """The run's numbers for the page: recovered fraction (with its ceiling), PSNR, displacement range."""
    if metrics is None:
        return "no run metrics (a mesh file)"

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

    lines = [f"**step** {metrics.step}"]
    for name, sc in (("coarse topology", metrics.score), ("dense", metrics.score_dense)):
        if sc is not None:
            lines.append(f"**recovered fraction** ({name}) {num(sc.recovered_fraction, '.2f')} (normal-error "
                         f"ratio {num(sc.normal_error_ratio, '.3f')}, ceiling {num(sc.ceiling_ratio, '.3f')})")
    if metrics.score is None:
        lines.append("**recovered fraction** n/a (no sample truth)")
    lines.append(f"**PSNR** {num(metrics.psnr_db, '.2f')} dB")
    lines.append(f"**displacement** {num(metrics.displacement_min_mm, '+.3f')} .. "
                 f"{num(metrics.displacement_max_mm, '+.3f')} mm (std {num(metrics.displacement_std_mm, '.3f')} mm)")
    return "  \n".join(lines)


def describe(source: ViewSource) -> str:
    """One line for the console: what was found."""
    n = len(source.subjects)
    meshes = ", ".join(m.label for m in source.subjects[0].meshes)
    what = f"{n} subject{'s' if n != 1 else ''}" if source.kind == "batch" else meshes
    return f"{source.kind} {source.path}: {what}"

