"""The simulated correction loop (scripts/metrics/correction_loop.py): which frame each strategy corrects, the
neighbours it is judged by, and one loop on a phantom study through the real inferer and its cache."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from helpers import TINY_CSTM
from scripts.data import make_phantom_study
from scripts.inferers import Propagation4DInferer
from scripts.inferers.cache import PropagationCache
from scripts.metrics.correction_loop import (
    CorrectionLoop,
    choose_frame,
    format_summary,
    neighbours,
    summarize,
    truth_frames,
)
from scripts.networks import build_cstm


def test_each_strategy_picks_its_frame() -> None:
    candidates = [(0, 0), (1, 0), (2, 5)]
    dice = {(0, 0): 0.9, (1, 0): 0.4, (2, 5): 0.7}
    scores = {(0, 0): 0.8, (1, 0): 0.95, (2, 5): 0.6, (3, 3): 0.1}  # (3, 3) has no truth: never chosen
    assert choose_frame("qc", candidates, dice, scores, random.Random(0)) == (2, 5)
    assert choose_frame("oracle", candidates, dice, scores, random.Random(0)) == (1, 0)
    picks = {choose_frame("random", candidates, dice, scores, random.Random(s)) for s in range(20)}
    assert picks == set(candidates)
    with pytest.raises(ValueError, match="strategy"):
        choose_frame("worst", candidates, dice, scores, random.Random(0))


def test_neighbours_are_one_slice_and_two_phases_away_cyclically() -> None:
    frames = [(4, 0), (5, 1), (6, 2), (5, 3), (3, 29), (5, 27), (4, 5)]
    assert neighbours((4, 0), frames, 30) == [(5, 1), (3, 29)]
    assert neighbours((5, 1), frames, 30) == [(4, 0), (6, 2), (5, 3)]  # (5, 27) is 4 phases away


def test_truth_frames_are_the_fully_labelled_ed_and_es_slices() -> None:
    label = np.full((8, 8, 4, 3), 255, dtype=np.uint8)
    label[:, :, 1, 0] = 0
    label[2:5, 2:5, 1, 0] = 3
    label[:, :, 2, 2] = 1
    label[0, 0, 3, 2] = 2  # one pixel labelled, the rest unknown: not a truth frame
    info = {"ed": 0, "es": 2, "annotated_slices_ed": [1], "annotated_slices_es": [2, 3]}
    assert truth_frames(label, info, 0, 2, "s") == {(1, 0): [1, 2, 3], (2, 2): [1, 2, 3]}


def test_one_loop_on_a_phantom_corrects_frames_with_truth_and_reports_the_rounds() -> None:
    torch.manual_seed(0)
    study = make_phantom_study(seed=3, image_size=(48, 48), num_slices=5, num_phases=6)
    network = build_cstm("small", **TINY_CSTM).eval()
    label = np.full((1, *study.label.shape), 255, dtype=np.uint8)
    for t in (study.ed, study.es):
        label[0, :, :, :, t] = study.label[:, :, :, t]
    z_a = 2
    d = {
        "study": "phantom",
        "study_dir": "",
        "image": torch.as_tensor(study.image)[None],
        "label": torch.as_tensor(label),
        "ed": study.ed,
        "es": study.es,
        "image_spacing": torch.tensor([1.5, 1.5]),
        "base_first": True,
        "anchor_frames": torch.tensor([[z_a, study.ed]]),
        "anchor_labels": torch.as_tensor(study.label[:, :, z_a, study.ed])[None],
    }
    info = {"ed": study.ed, "es": study.es}
    loop = CorrectionLoop(network, lambda cache: Propagation4DInferer(cache_dir=cache), rounds=2)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr("scripts.metrics.correction_loop.read_info", lambda folder: info)
        rows = loop.study(d)
    assert [(r["strategy"], r["round"]) for r in rows] == [(s, r) for s in ("qc", "random", "oracle") for r in range(3)]
    for r in rows:
        if r["round"]:
            assert r["corrected_t"] in (study.ed, study.es) and (r["corrected_z"], r["corrected_t"]) != (z_a, study.ed)
    by = {(r["strategy"], r["round"]): r for r in rows}
    assert by["qc", 0]["es_dice"] == by["oracle", 0]["es_dice"]  # the same first run
    summary = summarize(rows)
    assert summary["qc"][2]["studies"] == 1 and summary["qc"][1]["rerun_ratio"] is not None
    assert "| oracle | 2 | 1 |" in format_summary(summary)


def test_cache_entry_of_a_metatensor_prediction_is_read_back(tmp_path: Path) -> None:
    """The bundle's images are MetaTensors: their probabilities must be stored as plain tensors, or weights-only
    loading refuses the entry and every correction recomputes the whole study (seen on every real study)."""
    cache = PropagationCache(tmp_path)
    probabilities = MetaTensor(torch.rand(2, 3, 4, 8, 8), affine=torch.eye(4), meta={"spacing": np.ones(3)})
    cache.save("k", {(0, 0): "a", (1, 2): "b"}, probabilities)
    entry = cache.load("k")
    assert entry is not None and type(entry["probabilities"]) is torch.Tensor
    assert entry["signatures"] == {(0, 0): "a", (1, 2): "b"}
