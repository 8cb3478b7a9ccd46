"""Agreement of cardiac function with the ground truth (scripts/metrics/agreement.py and its use in the report)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from monai.data import MetaTensor
from PIL import Image

from scripts.data import UNLABELLED
from scripts.errors import CSTMInputError
from scripts.metrics import (
    agreement_rows,
    agreement_stats,
    check_evaluation_outputs,
    format_agreement_table,
    function_values,
    summarize_agreement,
)
from scripts.metrics.report import EvaluationReport


def heart(lv: int, myo_ring: bool, rv: int, slices: int = 3) -> np.ndarray:
    """(12, 12, slices) labels: an lv×lv LV square at (1, 1), a 1-pixel myocardium ring around it, an RV block of
    ``rv`` pixels in column 11."""
    out = np.zeros((12, 12, slices), np.uint8)
    if myo_ring:
        out[0 : lv + 2, 0 : lv + 2] = 2
    out[1 : lv + 1, 1 : lv + 1] = 3
    out[:rv, 11] = 1
    return out


ALL = {1: [0, 1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}


def test_function_values_hand_computed() -> None:
    """Voxel 0.1 mL, 3 slices. ED: LV 8×8 (192 voxels, 19.2 mL), myocardium ring 10×10 − 8×8 (108 voxels, 10.8 mL,
    11.34 g), RV 10 (3 mL). ES: LV 4×4 (4.8 mL), RV 6 (1.8 mL). LV EF 75 %, RV EF 40 %."""
    values = function_values(heart(8, True, 10), heart(4, False, 6), ALL, ALL, 0.1)
    assert values == pytest.approx(
        {
            "lv_edv_ml": 19.2,
            "lv_esv_ml": 4.8,
            "lv_ef_percent": 75.0,
            "rv_edv_ml": 3.0,
            "rv_esv_ml": 1.8,
            "rv_ef_percent": 40.0,
            "lv_mass_g": 11.34,
        }
    )


def test_function_values_count_only_labelled_slices_and_drawn_classes() -> None:
    """ES labels slices 0-1 only (slice 2 holds a prediction that must not count); only LV and Myo-at-ED drawn."""
    ed, es = heart(8, True, 10), heart(4, False, 6)
    values = function_values(ed, es, {3: [0, 1, 2], 2: [0, 2]}, {3: [0, 1]}, 0.1)
    # ED LV 3 × 64 voxels = 19.2 mL; ES LV 2 × 16 = 3.2 mL; EF 16 / 19.2 = 83.33 %; myocardium 2 × 36 = 7.2 mL, 7.56 g
    assert values == pytest.approx({"lv_edv_ml": 19.2, "lv_esv_ml": 3.2, "lv_ef_percent": 83.33, "lv_mass_g": 7.56})
    assert not any(q.startswith("rv_") for q in values)  # RV not drawn: no value, not a 0


def test_copy_ed_ef_is_zero_and_empty_prediction_ef_is_undefined() -> None:
    ed = heart(8, True, 10)
    copy = function_values(ed, ed, ALL, ALL, 0.1)
    assert copy["lv_ef_percent"] == 0.0 and copy["rv_ef_percent"] == 0.0
    empty = function_values(np.zeros_like(ed), np.zeros_like(ed), ALL, ALL, 0.1)
    rows = agreement_rows("s", "", "model", empty, copy)
    ef = next(r for r in rows if r["quantity"] == "lv_ef_percent")
    assert ef["ours"] is None and ef["difference"] is None and ef["reference"] == 0.0


def test_agreement_stats_of_known_differences() -> None:
    """Differences 1, 3, −1, 5: bias 2, SD sqrt(20/3), LoA 2 ∓ 1.96 SD, MAE 2.5; None is counted apart."""
    stats = agreement_stats([1.0, 3.0, -1.0, 5.0, None])
    sd = math.sqrt(20 / 3)
    assert stats == pytest.approx(
        {
            "n": 4,
            "n_undefined": 1,
            "bias": 2.0,
            "sd": sd,
            "loa_low": 2 - 1.96 * sd,
            "loa_high": 2 + 1.96 * sd,
            "mae": 2.5,
        }
    )
    one = agreement_stats([-2.0])
    assert one["bias"] == -2.0 and one["mae"] == 2.0 and math.isnan(one["sd"]) and math.isnan(one["loa_high"])


def test_summary_per_method_and_group_and_table() -> None:
    rows = []
    for study, group, diff in (("a", "NOR", 2.0), ("b", "NOR", 4.0), ("c", "HCM", -3.0)):
        rows += agreement_rows(study, group, "model", {"lv_ef_percent": 60 + diff}, {"lv_ef_percent": 60.0})
    rows += agreement_rows("a", "NOR", "copy_ed", {"lv_ef_percent": 0.0}, {"lv_ef_percent": 60.0})
    overall = summarize_agreement(rows)
    assert overall["model"]["lv_ef_percent"]["bias"] == pytest.approx(1.0)
    assert overall["model"]["lv_ef_percent"]["mae"] == pytest.approx(3.0)
    assert overall["copy_ed"]["lv_ef_percent"]["bias"] == -60.0 and "lv_mass_g" not in overall["model"]
    nor = summarize_agreement(rows, "NOR")["model"]["lv_ef_percent"]
    assert nor["n"] == 2 and nor["bias"] == pytest.approx(3.0) and nor["sd"] == pytest.approx(math.sqrt(2))
    table = format_agreement_table(
        {
            "studies": ["a", "b", "c"],
            "agreement": overall,
            "groups": {"NOR": {"studies": 2, "agreement": {"model": {"lv_ef_percent": nor}}}},
        }
    )
    assert "| NOR (2) | model | 3.0 [0.2, 5.8] 3.0 | - |" in table
    assert "| all (3) | copy_ed | -60.0 [-, -] 60.0 |" in table


def study_item() -> tuple[dict, np.ndarray, np.ndarray]:
    """A 4-phase study, ED t=0, ES t=2, voxel 1.5×1.5×8 mm = 0.018 mL; the model right at ED and 1 pixel wider LV
    at ES (4×4 -> 5×4 on each of 3 slices)."""
    label = np.full((1, 12, 12, 3, 4), UNLABELLED, dtype=np.uint8)
    ed, es = heart(8, True, 10), heart(4, False, 6)
    label[0, ..., 0], label[0, ..., 2] = ed, es
    pred = np.zeros((1, 12, 12, 3, 4), np.uint8)
    pred[0, ..., 0], pred[0, ..., 2] = ed, es
    pred[0, 5, 1:5, :, 2] = 3
    item = {
        "label": label,
        "pred": pred,
        "ed": 0,
        "es": 2,
        "annotation_slice": 1,
        "annotation_phase": 0,
        "anchor_frames": np.array([[1, 0]]),  # (N, 2) (z, t) of the annotated frames
        "base_first": True,
        "study": "s",
        "group": "NOR",
        "study_dir": "unused",
        "image": MetaTensor(np.zeros((1, 12, 12, 3, 4)), affine=np.diag([1.5, 1.5, 8.0, 1.0])),
    }
    return item, ed, es


def test_report_writes_function_rows_plot_and_summary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("scripts.metrics.report.read_info", lambda _: {"labels": [3, 2]})  # Sunnybrook-like: no RV
    report = EvaluationReport(tmp_path, baselines=["copy_ed"])
    item, _, _ = study_item()
    report(item)
    report.write()
    summary = json.loads((tmp_path / "summary.json").read_text())
    with open(tmp_path / "function.csv", newline="") as f:
        rows = {(r["method"], r["quantity"]): r for r in csv.DictReader(f)}
    assert set(rows) == {
        *(("model", q) for q in ("lv_edv_ml", "lv_esv_ml", "lv_ef_percent", "lv_mass_g")),
        ("copy_ed", "lv_esv_ml"),
        ("copy_ed", "lv_ef_percent"),
    }
    # ED LV 192 voxels, ES truth 48, model 60 (× 0.018 mL); copy-ED's ES is the ED truth: EF 0
    assert float(rows["model", "lv_edv_ml"]["difference"]) == 0.0
    assert float(rows["model", "lv_esv_ml"]["ours"]) == pytest.approx(round(60 * 0.018, 2))
    assert float(rows["model", "lv_esv_ml"]["reference"]) == pytest.approx(round(48 * 0.018, 2))
    assert float(rows["model", "lv_ef_percent"]["reference"]) == 75.0
    assert float(rows["model", "lv_ef_percent"]["ours"]) == pytest.approx(68.75, abs=0.01)
    assert float(rows["copy_ed", "lv_ef_percent"]["ours"]) == 0.0
    assert float(rows["copy_ed", "lv_ef_percent"]["difference"]) == -75.0
    assert float(rows["model", "lv_mass_g"]["reference"]) == pytest.approx(round(108 * 0.018 * 1.05, 2))
    assert {r["group"] for r in rows.values()} == {"NOR"}
    ef = summary["agreement"]["model"]["lv_ef_percent"]
    assert ef["n"] == 1 and ef["bias"] == pytest.approx(-6.25, abs=0.01) and ef["mae"] == pytest.approx(6.25, abs=0.01)
    assert ef["sd"] is None and ef["loa_low"] is None  # one study: no SD (NaN -> null in summary.json)
    assert summary["groups"]["NOR"]["agreement"]["copy_ed"]["lv_ef_percent"]["bias"] == -75.0
    assert summary["files"]["bland_altman"] == str(tmp_path / "bland_altman.png")
    with Image.open(tmp_path / "bland_altman.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "summary.json").unlink()
    with pytest.raises(CSTMInputError, match="function.csv: output file exists"):
        check_evaluation_outputs(tmp_path)
    (tmp_path / "function.csv").unlink()
    with pytest.raises(CSTMInputError, match="bland_altman.png: output file exists"):
        check_evaluation_outputs(tmp_path)
    check_evaluation_outputs(tmp_path, overwrite=True)


def test_a_complete_stack_is_scored_on_every_slice_beside_the_labelled_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Slice 2 holds no structure at ES and the truth says so (labels complete): the model's LV carried there costs
    it on every slice (Dice, ESV, the heart on empty slices), not on the labelled slices only."""
    monkeypatch.setattr("scripts.metrics.report.read_info", lambda _: {"labels": [3, 2], "annotated_slices_es": [0, 1]})
    item, _, _ = study_item()
    item["label"][0, :, :, 2, 2] = 0  # a complete stack: the empty ES slice is background, not unlabelled
    item["label"][0, ..., 0][item["label"][0, ..., 0] == UNLABELLED] = 0
    item["pred"][0, :, :, 2, 2] = 0
    item["pred"][0, 4:8, 4:8, 2, 2] = 3  # 16 LV voxels carried past the end of the heart
    item["labels_complete"] = True
    report = EvaluationReport(tmp_path, baselines=[])
    report(item)
    summary = report.write()
    every, labelled = (summary[k]["model"]["ES"]["whole"]["LV"] for k in ("metrics", "metrics_labelled"))
    assert every["dice_2d"] < labelled["dice_2d"]  # the carried slice scores 0 on every slice
    assert {r["slices"] for r in report.rows} == {"every", "labelled"}
    esv = {k: summary[k]["model"]["lv_esv_ml"]["bias"] for k in ("agreement", "agreement_labelled")}
    assert esv["agreement"] == pytest.approx(esv["agreement_labelled"] + 16 * 0.018, abs=0.011)
    empty = summary["agreement"]["model"]["heart_on_empty_slices_es_ml"]
    assert empty["mean_ours"] == pytest.approx(16 * 0.018, abs=0.006) and empty["n_over_5ml"] == 0
    assert "heart_on_empty_slices_es_ml" not in summary["agreement_labelled"]["model"]
    assert "heart on empty slices at ES mL (n > 5)" in format_agreement_table(summary)
    item["labels_complete"] = False
    partial = EvaluationReport(tmp_path / "partial", baselines=[])
    partial(item)
    assert "heart_on_empty_slices_es_ml" not in partial.write()["agreement"]["model"]
