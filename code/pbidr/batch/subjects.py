"""The subjects of a batch: one per subfolder, mesh file or list-file line, with ids from their names.

``--inputs DIR``: every visible subfolder of DIR is a subject (it should hold ``mesh.*``; one that does
not fails on its own at preprocess, it does not stop the batch), and so is every mesh file directly in
DIR. ``--inputs LIST`` (a text file): one path per line (a folder or a mesh file; relative paths are
relative to the list file), blank lines and ``#`` comments ignored.

The id of a subject is its folder's name, or its file's stem (the parent folder's name for a file
called ``mesh.*``), with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by
``_``. Ids never depend on order, so a rerun finds each subject's earlier outputs. Two subjects with
the same id (case ignored: some file systems ignore it) are refused before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pbidr.errors import PbidrError
from pbidr.io.load import MESH_SUFFIXES

GROUND_TRUTH_FILE = "sample.json"  # written by `pbidr sample`; pbidr.evaluation.score reads it


@dataclass(frozen=True)
class Subject:
    id: str
    source: Path                    # mesh file or folder holding mesh.* (absolute)
    ground_truth: Path | None       # a `pbidr sample` folder to score against, when there is one


def subject_id(path: Path) -> str:
    name = path.parent.name if path.is_file() and path.stem.lower() == "mesh" else (path.stem if path.is_file() else path.name)
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    if not clean:
        raise PbidrError(f"{path}: cannot make a subject id from its name")
    return clean


def _ground_truth(source: Path) -> Path | None:
    folder = source if source.is_dir() else source.parent
    return folder if (folder / GROUND_TRUTH_FILE).is_file() else None


def _from_dir(folder: Path, skip: set[Path]) -> list[Path]:
    paths = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.resolve() in skip:
            continue
        if p.is_dir() or (p.is_file() and p.suffix.lower() in MESH_SUFFIXES):
            paths.append(p)
    return paths


def _from_list(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PbidrError(f"{list_file}: cannot read the list file ({exc.__class__.__name__})") from None
    paths = []
    for n, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else list_file.parent / p
        if not p.exists():
            raise PbidrError(f"{list_file}:{n}: {entry}: no such file or folder")
        paths.append(p)
    return paths


def find_subjects(inputs: str | Path, out: str | Path | None = None) -> list[Subject]:
    """The subjects named by ``inputs`` (a folder or a list file), sorted by id; ``out`` is never one."""
    inputs = Path(inputs)
    if not inputs.exists():
        raise PbidrError(f"{inputs}: no such folder or list file")
    skip = {Path(out).resolve()} if out is not None else set()
    paths = _from_dir(inputs, skip) if inputs.is_dir() else _from_list(inputs)
    if not paths:
        raise PbidrError(f"{inputs}: no subjects (expected subfolders holding mesh.obj/.ply/.glb/.gltf, mesh files, "
                         "or a list file with one path per line)")
    seen: dict[str, Path] = {}
    subjects = []
    for p in paths:
        sid = subject_id(p)
        clash = seen.get(sid.lower())
        if clash is not None:
            raise PbidrError(f"{inputs}: subjects {clash} and {p} have the same id '{sid}'; rename one "
                             "(ids come from folder or file names)")
        seen[sid.lower()] = p
        source = p.resolve()
        subjects.append(Subject(sid, source, _ground_truth(source)))
    return sorted(subjects, key=lambda s: s.id)
