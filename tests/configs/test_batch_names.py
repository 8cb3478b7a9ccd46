"""Study folder names a batch must survive (issue 31, items 6-8), through ``python -m monai.bundle run inference``: a
folder named like a spreadsheet formula is segmented and written as text in ``cohort.csv``; a folder whose name is
not UTF-8 and a folder of studies one level down are each one ``bad study`` line and a failed row, while the others
run; the console shows no traceback and no library noise."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from test_batches import infer, phantoms

pytestmark = pytest.mark.slow

FORMULA = '=HYPERLINK("x.y","z")'
"""A folder name cannot hold "/", so no URL; the spreadsheet would still run it."""
BAD_NAME = os.fsdecode(b"bad\xffname")


def test_formula_named_and_undecodable_studies_and_a_group_folder(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    phantoms(data, [FORMULA])
    shutil.copytree(data / FORMULA, data / BAD_NAME)
    shutil.copytree(data / FORMULA, data / "group" / "nested")
    result = infer(data, out)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"bad study {data}/bad\\udcffname: folder name b'bad\\xffname' is not UTF-8 text" in output, output[-3000:]
    assert f"bad study {data}/group: not a study: it holds 1 study folder one level down (nested)" in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: {data}: 2 of 3 studies failed (bad\\udcffname, group)"), output[-3000:]
    for noise in ("Traceback", "Logging error", "unable to load", "nvImageCodec", "optional_packages"):
        assert noise not in result.stdout, noise
    assert "Traceback" not in result.stderr
    with open(out / "cohort.csv", newline="", encoding="utf-8") as f:  # valid UTF-8, the byte escaped
        rows = {r["study"]: r for r in csv.DictReader(f)}
    assert {name: r["status"] for name, r in rows.items()} == {
        "'" + FORMULA: "processed",
        "bad\\xffname": "failed",
        "group": "failed",
    }
    assert (out / FORMULA / "label_4d.nii.gz").is_file() and not (out / BAD_NAME).exists()
    with open(out / FORMULA / "qc.csv", newline="") as f:
        assert all(not cell.startswith(("=", "+", "@")) for row in csv.reader(f) for cell in row)
