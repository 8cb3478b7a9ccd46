"""The per-frame quality report: area jumps, scores and flags, the files, and how the score ranks frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.errors import CSTMInputError
from scripts.inferers import QC_CONFIDENCE, QC_DISAGREEMENT
from scripts.metrics import QualityReportd, area_jumps, frame_quality
from scripts.metrics.report import quality_ranking


def _labels(z: int = 3, t: int = 4) -> np.ndarray:
    labels = np.zeros((10, 10, z, t), np.uint8)
    labels[2:6, 2:6] = 3  # 16 px of LV on every frame
    return labels


def test_area_jump_is_relative_to_the_neighbouring_phases():
    labels = _labels()
    labels[2:8, 2:8, 1, 2] = 3  # 36 px at (1, 2) against 16 at t = 1 and 3
    jumps = area_jumps(labels)
    assert jumps[1, 2] == pytest.approx(20 / 16)
    assert jumps[1, 1] == pytest.approx(abs(16 - 26) / 26) and jumps[0, 2] == 0
    assert not area_jumps(_labels(t=2)).any()  # two phases (ED, ES) are not neighbours in time


def test_scores_flags_and_anchors():
    labels = _labels()
    confidence = np.full((3, 4), 0.97)
    confidence[2, 3] = 0.6
    disagreement = np.zeros((3, 4))
    disagreement[0, 1] = 0.5
    rows = {(r["z"], r["t"]): r for r in frame_quality(labels, confidence, disagreement, [(1, 0)])}
    assert rows[(2, 3)]["score"] == pytest.approx(0.6) and rows[(2, 3)]["flagged"]
    assert rows[(0, 1)]["score"] == pytest.approx(0.485) and rows[(0, 1)]["flagged"]
    assert rows[(1, 0)]["anchor"] and rows[(1, 0)]["score"] == 1 and not rows[(1, 0)]["flagged"]
    assert sum(r["flagged"] for r in rows.values()) == 2 and rows[(0, 0)]["region"] == "basal"


def test_report_files_name_the_frame_to_correct_next(tmp_path: Path):
    labels = _labels()
    confidence = torch.full((1, 3, 4), 0.95)
    confidence[0, 2, 1] = 0.5
    confidence[0, 1, 0] = 0.1  # the anchor: never the one to correct
    pred = MetaTensor(torch.as_tensor(labels)[None])
    pred.meta.update({QC_CONFIDENCE: confidence[0], QC_DISAGREEMENT: torch.zeros(3, 4)})
    item = {
        "pred": pred,
        "study": "s",
        "anchor_frames": torch.tensor([[1, 0]]),
        "base_first": True,
        "kspace_spike_frames": torch.tensor([2]),
    }
    writer = QualityReportd("pred", tmp_path)
    writer(item)
    qc = json.loads((tmp_path / "s" / "qc.json").read_text())
    why = qc["correct_next"].pop("why")
    assert qc["correct_next"] == {
        "z": 2,
        "t": 1,
        "region": "apex",
        "score": 0.5,
        "confidence": 0.5,
        "disagreement": 0.0,
        "area_jump": 0.0,
        "flagged": 1,
    }
    assert qc["num_flagged"] == 1 and qc["kspace_spike_frames"] == 2
    assert why == "lowest score of the frames not annotated (0.500 = confidence 0.500); below the flag threshold 0.85"
    rows = list(csv.DictReader((tmp_path / "s" / "qc.csv").open()))
    assert len(rows) == 12 and [r["flagged"] for r in rows].count("1") == 1
    assert writer.output_files("s") == [tmp_path / "s" / "qc.csv", tmp_path / "s" / "qc.json"]
    with pytest.raises(CSTMInputError, match="exists"):
        writer(item)  # no silent overwrite
    assert QualityReportd("pred", tmp_path / "off", enabled=False)(item) and not (tmp_path / "off").exists()


def test_quality_ranking():
    rows = [{"score": s, "dice": d, "flagged": int(s < 0.9)} for s, d in [(0.99, 0.95), (0.95, 0.9), (0.8, 0.5)]]
    ranking = quality_ranking(rows)
    assert ranking["spearman_score_dice"] == pytest.approx(1.0)
    assert ranking["dice_flagged"] == pytest.approx(0.5) and ranking["dice_not_flagged"] == pytest.approx(0.925)
