"""Every CSV we write is safe to open in a spreadsheet (issue 31, item 6): a study folder or group named like a formula
(``=HYPERLINK(...)``, ``+cmd|...``, ``@SUM(A1)``, a leading ``-``, tab or CR; OWASP "CSV Injection") is written as
text, numbers stay numbers, and a name that is not UTF-8 does not stop the file. One helper does it
(``scripts.io.csv_cell`` / ``SafeDictWriter``); this file checks it and each writer that uses it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_agreement import study_item

from scripts.data.cohort import CohortStudy, write_cohort
from scripts.io import FORMULA_START, SafeDictWriter, csv_cell
from scripts.metrics.agreement import write_agreement_csv
from scripts.metrics.quality import QC_COLUMNS, _write_csv
from scripts.metrics.report import EvaluationReport

FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(A1)", "-2+3", "\tTAB", "\r=1+1"]
"""Names a spreadsheet would run (the first character is a formula character)."""


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def is_safe(cell: str) -> bool:
    """What a spreadsheet reads as text or a number: nothing else starts with a formula character."""
    try:
        float(cell)
        return True
    except ValueError:
        return not cell.startswith(FORMULA_START)


@pytest.mark.parametrize("name", FORMULAS)
def test_a_formula_becomes_text_and_keeps_its_characters(name: str) -> None:
    assert csv_cell(name) == "'" + name


@pytest.mark.parametrize("value", [-1.5, -3, 0, 2.5, None, True, "-1.5", "+2", "-1e-3", "mid", "a=b", ""])
def test_numbers_and_plain_text_are_unchanged(value: object) -> None:
    assert csv_cell(value) == value and type(csv_cell(value)) is type(value)


def test_a_name_that_is_not_utf8_is_written_with_its_byte_escaped(tmp_path: Path) -> None:
    name = b"bad\xffname".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:  # the surrogate alone would fail here
        writer = SafeDictWriter(f, ["study", "value"])
        writer.writeheader()
        writer.writerows([{"study": name, "value": -4.5}, {"study": "=1+1", "value": 2}])
    assert read_rows(tmp_path / "t.csv") == [
        {"study": "bad\\xffname", "value": "-4.5"},
        {"study": "'=1+1", "value": "2"},
    ]


def test_cohort_csv_neutralises_study_names_errors_and_report_values(tmp_path: Path) -> None:
    report = tmp_path / "s" / "cardiac_function.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"study": "s", "lv": {"ef_percent": -5.0}, "note": "@SUM(A1)", "flags": []}))
    studies = [CohortStudy(name, "failed", "-bad image") for name in FORMULAS]
    studies.append(CohortStudy("s", "processed", reports=[report]))
    write_cohort(tmp_path / "cohort.csv", studies)
    rows = read_rows(tmp_path / "cohort.csv")
    assert all(is_safe(cell) for row in rows for cell in row.values())
    assert sorted(r["study"] for r in rows) == sorted(["'" + n for n in FORMULAS] + ["s"])
    done = next(r for r in rows if r["study"] == "s")
    assert done["lv_ef_percent"] == "-5.0" and done["note"] == "'@SUM(A1)"  # a negative number stays a number
    assert {r["error"] for r in rows if r["status"] == "failed"} == {"'-bad image"}


def test_qc_csv_text_cells_are_neutralised(tmp_path: Path) -> None:
    row = dict.fromkeys(QC_COLUMNS, 0) | {"region": "=cmd()", "score": -0.25}
    _write_csv(str(tmp_path / "qc.csv"), [row])
    (read,) = read_rows(tmp_path / "qc.csv")
    assert read["region"] == "'=cmd()" and read["score"] == "-0.25"


def test_evaluation_csvs_neutralise_study_and_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``metrics.csv``, ``function.csv`` and ``quality.csv`` of a study and group named like formulas."""
    monkeypatch.setattr("scripts.metrics.report.read_info", lambda _: {"labels": [3, 2]})
    report = EvaluationReport(tmp_path, baselines=["copy_ed"])
    item, _, _ = study_item()
    item["study"], item["group"] = FORMULAS[0], FORMULAS[2]
    report(item)
    quality = dict.fromkeys(QC_COLUMNS, 0) | {"region": "mid"}
    report.quality_rows.append({"study": FORMULAS[1], **quality, "dice": 0.5})
    report.write()
    for name in ("metrics.csv", "function.csv", "quality.csv"):
        rows = read_rows(tmp_path / name)
        assert rows and all(is_safe(cell) for row in rows for cell in row.values()), name
    assert {r["study"] for r in read_rows(tmp_path / "metrics.csv")} == {"'" + FORMULAS[0]}
    assert {r["group"] for r in read_rows(tmp_path / "function.csv")} == {"'" + FORMULAS[2]}
    assert [r["study"] for r in read_rows(tmp_path / "quality.csv")] == ["'" + FORMULAS[1]]


def test_agreement_csv_keeps_negative_differences_as_numbers(tmp_path: Path) -> None:
    row = {"study": "-s", "group": "", "method": "model", "quantity": "lv_ef_percent"}
    write_agreement_csv([row | {"ours": 50.0, "reference": 60.0, "difference": -10.0}], tmp_path / "function.csv")
    (read,) = read_rows(tmp_path / "function.csv")
    assert read["study"] == "'-s" and read["difference"] == "-10.0"
