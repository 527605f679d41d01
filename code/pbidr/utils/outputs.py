"""The one policy for output folders (``--output``, ``--exp-dir``): never destroy what pbidr did not write.

* a missing path is created;
* an existing regular file (or anything that is not a folder) is refused;
* an empty folder is used;
* a non-empty folder is replaced only when it is a previous output of the same stage (it holds the
  marker file ``.pbidr-stage`` that the stage writes) *and* the user passed ``--overwrite``;
  otherwise it is refused with one line naming the folder and the flag.

Replacing is atomic (``staging_dir``): the new output is built beside the old one and renamed over
it, so a failed or killed run leaves the earlier result as it was. ``stage_done`` reads the marker,
so a batch runner can skip stages whose output is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from pbidr.errors import PbidrError
from pbidr.utils.atomic import staging_dir, write_json

MARKER = ".pbidr-stage"

# Outputs written before the marker existed are recognised by the file each stage always wrote,
# so that `--overwrite` can replace them; stage_done() never trusts these (no completeness record).
LEGACY_SIGNATURES = {
    "sample": "sample.json",
    "preprocess": "meta.json",
    "photo": "photo.json",
    "train": "run.json",
    "eval": "metrics.json",
}


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of ``folder`` as a dict, or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("stage"), str) else None


def write_marker(folder: str | os.PathLike, stage: str, done: bool = True, **info: Any) -> None:
    """Record that ``folder`` is ``stage``'s output (``done``: complete). Written atomically."""
    write_json(Path(folder) / MARKER, {"stage": stage, "done": bool(done), **info})


def stage_done(folder: str | os.PathLike, stage: str) -> bool:
    """True when ``folder`` holds a complete output of ``stage`` (its marker says so)."""
    marker = read_marker(folder)
    return marker is not None and marker["stage"] == stage and bool(marker.get("done", False))


def output_stage(folder: str | os.PathLike) -> str | None:
    """The stage that wrote ``folder`` (marker, or a pre-marker output's signature file), else None."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["stage"]
    for stage, name in LEGACY_SIGNATURES.items():
        if (folder / name).is_file():
            return stage
    return None


def _is_leftover(name: str) -> bool:
    """Files that an interrupted pbidr run may leave and that carry no user data."""
    return name in (MARKER, ".lock") or (name.startswith(".") and ".tmp" in name)


def is_effectively_empty(folder: Path) -> bool:
    return all(_is_leftover(p.name) for p in folder.iterdir())


def check_output(path: str | os.PathLike, stage: str, overwrite: bool = False, flag: str = "--output") -> bool:
    """Apply the output policy to ``path`` for ``stage``. Returns True when an earlier output of the
    stage is there and will be replaced; raises a one-line ``PbidrError`` when the path is refused."""
    path = Path(path)
    sweep_stale_staging(path)
    if path.is_symlink() and not path.exists():
        raise PbidrError(f"{path}: {flag} is a broken symbolic link; choose another {flag}")
    if not path.exists():
        return False
    if not path.is_dir():
        raise PbidrError(f"{path}: {flag} exists and is not a folder; pbidr does not replace files, choose another {flag}")
    if is_effectively_empty(path):
        return False
    owner = output_stage(path)
    if owner == stage:
        if overwrite:
            return True
        raise PbidrError(f"{path}: already holds a `pbidr {stage}` output; pass --overwrite to replace it, "
                         f"or choose another {flag}")
    if owner:
        what = f"a `pbidr {owner}` output"
    else:
        names = sorted(p.name for p in path.iterdir() if not _is_leftover(p.name))
        what = "files that pbidr did not write (" + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") + ")"
    raise PbidrError(f"{path}: the folder is not empty and holds {what}; it is never replaced "
                     f"(even with --overwrite); choose a new or empty {flag}")


def sweep_stale_staging(final: str | os.PathLike) -> None:
    """Remove staging folders of ``final`` left by killed runs (their process is gone)."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return
    for p in parent.glob(f".{final.name}.*.tmp"):
        pid = _staging_pid(p.name, final.name)
        if pid is not None and not pid_alive(pid) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    # staging_dir moves the earlier output aside for an instant while it renames the new one in; a
    # kill in that instant leaves it here: put it back (or drop it when the new one made it).
    for p in parent.glob(f".{final.name}.old-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir():
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, final)


def _staging_pid(name: str, final_name: str) -> int | None:
    rest = name[len(final_name) + 2:]  # ".<final>.<pid>.<random>.tmp"
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: it holds nothing
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def stage_output(path: str | os.PathLike, stage: str, overwrite: bool = False, flag: str = "--output",
                 **marker_info: Any) -> Iterator[Path]:
    """Check ``path`` against the policy, then yield an empty staging folder that replaces ``path``
    atomically on success (with the stage's marker inside). Check early with ``check_output`` too,
    before long work, so a refusal costs nothing."""
    check_output(path, stage, overwrite, flag)
    with staging_dir(path) as tmp:
        yield tmp
        check_output(path, stage, overwrite, flag)  # the folder may have changed while we worked
        write_marker(tmp, stage, done=True, **marker_info)
