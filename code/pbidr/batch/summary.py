"""``summary.csv``, ``summary.md`` and ``overview.png`` of a batch, read from the subjects' outputs on disk.

Everything comes from status.json, eval/metrics.json and eval/score.json, so the summary of a rerun
covers the subjects an earlier run finished, and any process can rebuild it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pbidr.batch.state import SCORE_FILE, STAGES, read_status, stage_complete, subject_paths
from pbidr.batch.subjects import Subject
from pbidr.utils.atomic import write_text

COLUMNS = ["subject", "status", "stage_reached", "preprocess_s", "train_s", "eval_s", "psnr_db",
           "disp_mean", "disp_std", "disp_mean_abs", "disp_min", "disp_max",
           "normal_error_ratio", "displacement_correlation", "albedo_leak", "error"]
OVERVIEW_CELL = 256  # pixels: height of one subject's compare.png in overview.png


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def subject_row(out: Path, subject: Subject) -> dict[str, Any]:
    sp = subject_paths(out, subject.id)
    status = read_status(sp)
    has_truth = subject.ground_truth is not None
    reached = None
    for stage in STAGES:
        if not stage_complete(sp, stage, status, has_truth):
            break
        reached = stage
    row: dict[str, Any] = {"subject": subject.id, "status": status.get("state") or "pending", "stage_reached": reached,
                           "error": status.get("error")}
    for stage in STAGES:
        rec = status["stages"].get(stage) or {}
        row[f"{stage}_s"] = _num(rec.get("seconds")) if rec.get("state") == "done" else None
    if reached == "eval":
        metrics = _json(sp.eval / "metrics.json")
        row["psnr_db"] = _num((metrics.get("rendering") or {}).get("psnr_mean"))
        disp = ((metrics.get("displacement") or {}).get("detailed")) or {}
        for key in ("mean", "std", "mean_abs", "min", "max"):
            row[f"disp_{key}"] = _num(disp.get(key))
        if has_truth:
            score = _json(sp.eval / SCORE_FILE)
            for key in ("normal_error_ratio", "displacement_correlation", "albedo_leak"):
                row[key] = _num(score.get(key))
    return {c: row.get(c) for c in COLUMNS}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_summary(out: Path, subjects: list[Subject], header: dict[str, Any] | None = None,
                  overview: bool = True) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md (and overview.png); return the rows."""
    rows = [subject_row(out, s) for s in subjects]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v, 6) for k, v in row.items()})
    write_text(out / "summary.csv", buf.getvalue())

    counts = {state: sum(r["status"] == state for r in rows) for state in ("done", "failed", "interrupted", "running", "pending")}
    lines = ["# pbidr batch summary", ""]
    for key, value in (header or {}).items():
        lines.append(f"- {key}: {value}")
    lines.append("- subjects: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" (of {len(rows)})")
    lines += ["", "Seconds per stage are those of the run that finished the stage; displacement in world units "
              "(the input mesh's); score columns only for subjects with ground truth (`pbidr sample` folders).", ""]
    head = ["subject", "status", "reached", "preprocess s", "train s", "eval s", "PSNR dB", "disp mean", "disp std",
            "normal err ratio", "disp corr", "albedo leak", "error"]
    keys = ["subject", "status", "stage_reached", "preprocess_s", "train_s", "eval_s", "psnr_db", "disp_mean",
            "disp_std", "normal_error_ratio", "displacement_correlation", "albedo_leak", "error"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for row in rows:
        cells = [_fmt(row[k], 1 if k.endswith("_s") else 2 if k == "psnr_db" else 3) for k in keys]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    if overview:
        write_overview(out, rows)
    return rows


def write_overview(out: Path, rows: list[dict[str, Any]]) -> Path | None:
    """A grid of every subject's eval/compare.png (a grey tile with the status for the others)."""
    from pbidr.utils.images import contact_sheet, read_image, write_png

    if not rows:
        return None
    tiles, labels = [], []
    for row in rows:
        compare = subject_paths(out, row["subject"]).eval / "compare.png"
        if row["stage_reached"] == "eval" and compare.is_file():
            tiles.append(read_image(compare))
            psnr = f", {row['psnr_db']:.1f} dB" if row["psnr_db"] is not None else ""
            labels.append(f"{row['subject']}{psnr}")
        else:
            tiles.append(np.full((OVERVIEW_CELL, 2 * OVERVIEW_CELL, 3), 96, np.uint8))
            where = (row["error"] or "").split(":", 1)[0] if row["error"] else None  # "train: ..." -> train
            labels.append(f"{row['subject']}: {row['status']}" + (f" at {where}" if where else ""))
    n_cols = max(1, math.ceil(math.sqrt(len(tiles) / 2)))  # compare.png is about twice as wide as high
    rows_img = [tiles[i : i + n_cols] for i in range(0, len(tiles), n_cols)]
    rows_lab = [labels[i : i + n_cols] for i in range(0, len(labels), n_cols)]
    path = out / "overview.png"
    write_png(path, contact_sheet(rows_img, rows_lab, cell=OVERVIEW_CELL))
    return path
