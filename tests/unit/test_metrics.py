"""scripts.metrics: Dice/HD95 against hand-computed values, the documented empty cases, regions, slice selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monai.data import MetaTensor

from scripts.data import UNLABELLED
from scripts.inferers import slice_regions
from scripts.metrics import EMPTY_BOTH, dice_hd95, format_table, grid_diagonal, score_phase, scored_slices
from scripts.metrics.report import EvaluationReport


def square(shape: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def test_dice_hd95_hand_computed() -> None:
    # 4x4 squares, one column apart: overlap 12 of 16 + 16 pixels -> Dice 0.75. Of the 12 edge pixels of each square,
    # the 4 of its outer column lie one column (2 mm) from the other square's edge, the rest on it: HD95 = 2 mm.
    a = square((10, 10), slice(2, 6), slice(2, 6))
    b = square((10, 10), slice(2, 6), slice(3, 7))
    dice, hd95 = dice_hd95(a, b, (1.0, 2.0))
    assert dice == pytest.approx(0.75)
    assert hd95 == pytest.approx(2.0)
    assert dice_hd95(a, a, (1.0, 2.0)) == (1.0, 0.0)


def test_dice_hd95_3d_uses_slice_spacing() -> None:
    a = np.zeros((8, 8, 4), dtype=bool)
    a[2:6, 2:6, 0:2] = True
    b = np.zeros_like(a)
    b[2:6, 2:6, 1:3] = True  # one slice deeper: 10 mm
    dice, hd95 = dice_hd95(a, b, (1.0, 1.0, 10.0))
    assert dice == pytest.approx(0.5)
    assert hd95 == pytest.approx(10.0)


@pytest.mark.parametrize("pred_empty, truth_empty", [(True, False), (False, True), (True, True)])
def test_empty_cases_have_documented_values(pred_empty: bool, truth_empty: bool) -> None:
    full = square((10, 20), slice(2, 6), slice(2, 6))
    empty = np.zeros_like(full)
    pred, truth = (empty if pred_empty else full), (empty if truth_empty else full)
    dice, hd95 = dice_hd95(pred, truth, (1.5, 2.0))
    if pred_empty and truth_empty:
        assert (dice, hd95) == EMPTY_BOTH == (1.0, 0.0)
    else:
        assert dice == 0.0
        assert hd95 == pytest.approx(math.hypot(10 * 1.5, 20 * 2.0)) == grid_diagonal((10, 20), (1.5, 2.0))
    assert not math.isnan(dice) and not math.isnan(hd95)


def test_dice_hd95_rejects_mismatched_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        dice_hd95(np.zeros((4, 4), bool), np.zeros((4, 4), bool), (1.0, 1.0, 1.0))


def test_score_phase_regions_classes_and_empty_slices() -> None:
    num_slices = 6  # slice_regions: 2 basal, 2 middle, 2 apex
    assert slice_regions(num_slices) == ["basal", "basal", "middle", "middle", "apex", "apex"]
    truth = np.zeros((10, 10, num_slices), dtype=np.uint8)
    truth[2:6, 2:6, :5] = 3  # LV on slices 0-4, absent on apex slice 5
    pred = truth.copy()
    pred[2:6, 2:6, 1] = 0  # basal slice 1: LV missed
    rows = score_phase(pred, truth, {3: list(range(num_slices))}, (1.0, 1.0, 8.0))
    by = {(r["region"], r["class"]): r for r in rows}
    assert set(by) == {(reg, c) for reg in ("basal", "middle", "apex", "whole") for c in ("LV", "mean")}  # no Myo/RV
    assert by["basal", "LV"]["dice_2d"] == pytest.approx(0.5)  # slice 0: 1.0, slice 1: 0.0 (missed)
    assert by["basal", "LV"]["hd95_2d"] == pytest.approx(0.5 * grid_diagonal((10, 10), (1, 1)))
    assert by["basal", "LV"]["num_missed"] == 1
    assert by["middle", "LV"]["dice_2d"] == 1.0 and by["middle", "LV"]["hd95_2d"] == 0.0
    assert by["apex", "LV"]["dice_2d"] == 1.0 and by["apex", "LV"]["num_empty"] == 1  # slice 5 not counted
    assert by["whole", "LV"]["dice_2d"] == pytest.approx(4 / 5)
    assert by["whole", "LV"]["dice_3d"] == pytest.approx(2 * 64 / (64 + 80))
    assert by["whole", "mean"]["dice_2d"] == by["whole", "LV"]["dice_2d"]  # mean of the scored classes only


def test_score_phase_follows_apex_first_order() -> None:
    truth = np.zeros((6, 6, 3), dtype=np.uint8)
    truth[1:4, 1:4, 0] = 1
    rows = score_phase(truth, truth, {1: [0]}, (1.0, 1.0, 1.0), base_first=False)
    assert {r["region"] for r in rows} == {"apex", "whole"}  # z = 0 is apical when the stack runs apex first


def test_scored_slices_skips_unannotated_classes_and_slices() -> None:
    label = np.full((4, 4, 5, 3), UNLABELLED, dtype=np.uint8)
    label[:, :, 1:4, 0] = 0  # ED labelled on slices 1-3
    label[:, :, 2:4, 2] = 0  # ES labelled on slices 2-3
    info = {"labels": [3, 2], "labels_es": [3], "annotated_slices_ed_myo": [1, 2]}  # Sunnybrook-like
    assert scored_slices(label, info, "ed", 0, skip=2) == {3: [1, 3], 2: [1]}
    assert scored_slices(label, info, "es", 2) == {3: [2, 3]}
    assert scored_slices(label, {}, "es", 2) == {1: [2, 3], 2: [2, 3], 3: [2, 3]}


def test_report_copy_ed_baseline_and_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A study scored through the report: the model perfect at ES, copy-ED its ED truth (LV only annotated)."""
    label = np.full((1, 12, 12, 3, 4), UNLABELLED, dtype=np.uint8)
    ed_truth, es_truth = np.zeros((12, 12, 3), np.uint8), np.zeros((12, 12, 3), np.uint8)
    ed_truth[2:10, 2:10] = 3
    es_truth[4:8, 4:8] = 3
    label[0, ..., 0], label[0, ..., 2] = ed_truth, es_truth
    pred = np.zeros((1, 12, 12, 3, 4), np.uint8)
    pred[0, ..., 0], pred[0, ..., 2] = ed_truth, es_truth
    monkeypatch.setattr("scripts.metrics.report.read_info", lambda _: {"labels": [3]})
    report = EvaluationReport("unused", baselines=["copy_ed"])
    report(
        {
            "label": label,
            "pred": pred,
            "ed": 0,
            "es": 2,
            "anchor_frames": np.array([[1, 0]]),
            "base_first": True,
            "study": "s",
            "study_dir": "unused",
            "image": MetaTensor(np.zeros((1, 12, 12, 3, 4)), affine=np.diag([1.5, 1.5, 8.0, 1.0])),
        }
    )
    summary = report.summary()
    assert summary["model"]["ES"]["whole"]["LV"]["dice_2d"] == 1.0
    assert summary["copy_ed"]["ES"]["whole"]["LV"]["dice_2d"] == pytest.approx(2 * 16 / (64 + 16))
    assert "ED" not in summary["copy_ed"]  # copy-ED is the truth at ED: not scored there
    assert {r["phase"] for r in report.rows if r["method"] == "model"} == {"ED", "ES"}
    assert not any(r["phase"] == "ED" and r["num_slices"] == 3 for r in report.rows)  # annotated slice skipped
    table = format_table(summary)
    assert "Whole heart" in table and "copy_ed" in table and "-" in table  # Myo, RV not annotated: '-'


def test_hd95_3d_keeps_the_gap_of_a_skipped_slice() -> None:
    """Truth on slice 0, prediction on slices 0 and 2 (10 mm apart), slice 1 not scored: the prediction's extra slice
    lies 20 mm from the truth. Stacking only the scored slices made it 10 mm."""
    pred, truth = np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8)
    truth[2:6, 2:6, 0] = 3
    pred[2:6, 2:6, [0, 2]] = 3
    row = next(
        r
        for r in score_phase(pred, truth, {3: [0, 2]}, (1.0, 1.0, 10.0))
        if r["class"] == "LV" and r["region"] == "whole"
    )
    assert row["hd95_3d"] == pytest.approx(20.0)
    assert dice_hd95(pred[..., [0, 2]] == 3, truth[..., [0, 2]] == 3, (1.0, 1.0, 10.0))[1] == pytest.approx(10.0)
