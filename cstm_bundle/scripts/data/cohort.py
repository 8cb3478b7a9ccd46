"""``cohort.csv``: one row per study of an inference run, read back from the studies' own output files.

The table is a summary, regenerated at the end of every run from the per-study JSON reports (``cardiac_function.json``),
so it lists the studies finished by earlier runs (``--skip_done``) beside those of this run, and the failed ones with
their problem. Its columns follow the reports generically: a nested key ``{"lv": {"ef_percent": 61.2}}`` is the column
``lv_ef_percent``, so a key added to the report becomes a column without a change here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ..io import SafeDictWriter, write_atomic

logger = logging.getLogger(__name__)

COHORT_FILE = "cohort.csv"
LEADING = ("study", "status", "error", "num_flags", "flags")
"""The first columns; then the reports' values; then :data:`TIMING` (empty for a study not processed in this run)."""
TIMING = ("frames", "load_s", "inference_s", "postprocessing_s", "fps")
"""The columns of :class:`~scripts.metrics.StudyTimer`'s records; the only ones that differ between equal runs."""
SKIPPED_KEYS = ("study", "flags")
"""Report keys with a column of their own."""
MAX_TEXT = 40
"""Longer strings are left out: they are statements (the report's ``conventions``), the same for every study, not
values (a short one, such as ``ed_source`` "info.json", is kept)."""
Status = Literal["processed", "skipped_done", "failed", "not_run"]


class CohortStudy(NamedTuple):
    """What became of one study in a run.

    Attributes:
        study: the study's name (its output folder).
        status: "processed" in this run, "skipped_done" (finished by an earlier run, ``--skip_done true``), "failed"
            (bad before the run, or failed while loaded, segmented or written), "not_run" (the run ended before it).
        error: the problem, one line, for a failed study; else "".
        reports: the study's JSON reports (read when the status is not "failed").
        timing: the study's :class:`~scripts.metrics.StudyTimer` record when it was processed in this run.
    """

    study: str
    status: Status
    error: str = ""
    reports: Sequence[Path] = ()
    timing: Mapping[str, Any] | None = None


def flatten_report(report: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar values of a (nested) report as flat columns: keys joined with "_", in the report's order.

    Numbers, booleans, None and strings of at most :data:`MAX_TEXT` characters are kept; lists (the per-phase volume
    curves), longer strings and the keys of :data:`SKIPPED_KEYS` at the top level are left out.

    Args:
        report: a parsed ``cardiac_function.json``.
        prefix: the parent keys joined, for the recursion.
    Returns:
        ``{"ed_phase": 0, ..., "lv_edv_ml": 151.2, ..., "indexed_lv_edv_ml_per_m2": 80.1, ...}``.
    """
    out: dict[str, Any] = {}
    for key, value in report.items():
        if not prefix and key in SKIPPED_KEYS:
            continue
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_report(value, name))
        elif value is None or isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= MAX_TEXT):
            out[name] = value
    return out


def merge_columns(orders: Iterable[Sequence[str]]) -> list[str]:
    """One column order from the key orders of several rows: a key not seen before goes right after the key that
    precedes it in its row, so the reports' own order is kept when some rows have keys that others lack (a study
    without height has no indexed values)."""
    columns: list[str] = []
    for order in orders:
        for i, key in enumerate(order):
            if key in columns:
                continue
            previous = next((order[j] for j in range(i - 1, -1, -1) if order[j] in columns), None)
            columns.insert(0 if previous is None else columns.index(previous) + 1, key)
    return columns


def _read_reports(entry: CohortStudy) -> tuple[dict[str, Any], list[str], str]:
    """The flat values, the flags and the read problem ("" if none) of one study's reports."""
    values: dict[str, Any] = {}
    flags: list[str] = []
    for path in entry.reports:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            return values, flags, f"{Path(path).name}: cannot be read ({type(e).__name__}: {e})"
        if not isinstance(report, Mapping):
            return values, flags, f"{Path(path).name}: not a JSON object"
        values.update(flatten_report(report))
        flags += [str(f) for f in report.get("flags", ())]
    return values, flags, ""


def cohort_rows(studies: Iterable[CohortStudy]) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of the cohort table, rows sorted by study name.

    Returns:
        columns (:data:`LEADING`, the reports' values in :func:`merge_columns` order, :data:`TIMING`) and one dict per
        study (a missing value is absent from the dict: an empty cell).
    """
    rows, orders = [], []
    for entry in sorted(studies, key=lambda s: s.study):
        row: dict[str, Any] = {"study": entry.study, "status": entry.status, "error": entry.error}
        if entry.status != "failed":
            values, flags, problem = _read_reports(entry)
            values = {k: v for k, v in values.items() if k not in LEADING and k not in TIMING}  # ours win
            row.update(values)
            row["num_flags"], row["flags"] = len(flags), "; ".join(flags)
            row["error"] = row["error"] or problem
            orders.append(list(values))
        if entry.timing:
            row.update({k: entry.timing[k] for k in TIMING if k in entry.timing})
        rows.append(row)
    return [*LEADING, *merge_columns(orders), *TIMING], rows


def write_cohort(path: str | os.PathLike, studies: Iterable[CohortStudy]) -> Path:
    """Write ``cohort.csv`` atomically (:func:`~scripts.io.write_atomic`), replacing an earlier one: the table holds
    nothing that the per-study files do not (timings aside), so rewriting it loses no data.

    Args:
        path: the file, ``<output_dir>/cohort.csv``.
        studies: every study of the run, whatever became of it.
    Returns:
        the path written.
    """
    columns, rows = cohort_rows(studies)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = SafeDictWriter(f, fieldnames=columns, restval="")  # no cell runs as a formula
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)

    written = write_atomic(path, write, overwrite=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("processed", "skipped_done", "failed", "not_run")}
    logger.info(
        f"cohort table written {written}: {len(rows)} studies ("
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + ")"
    )
    return written
