"""train_init.json: the initialiser trains on labelled frames of the real split, resumes, and saves its record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA, run_bundle
from scripts.inferers import FrameInitializer
from scripts.networks import build_initializer_from_checkpoint, read_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "acdc_dev").is_dir(), reason="../shared/data/acdc_dev is not there"),
]
SMALL = (
    "--dataset_weights", "{'acdc_dev': 1.0}", "--filters", "[4, 8, 16]", "--crop_size", "64",
    "--samples_per_frame", "1", "--batch_size", "8",
)  # fmt: skip


def test_train_init_trains_resumes_and_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_bundle("training", "train_init.json", "--output_dir", str(out), "--max_epochs", "1", *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "labelled frames of 5 studies" in first.stdout + first.stderr  # acdc_dev's training studies
    state = read_checkpoint(out / "model.pt")
    assert state["variant"] == "initializer" and state["roi"] == {"roi_size": 64, "roi_spacing": 1.5}
    assert state["training"]["params"]["dataset_weights"] == {"acdc_dev": 1.0}
    network = build_initializer_from_checkpoint(out / "model.pt")
    network.load_state_dict(state["model"])
    assert network.config == {"num_classes": 4, "filters": [4, 8, 16]}
    second = run_bundle(
        "training", "train_init.json", "--output_dir", str(out), "--max_epochs", "2", "--resume", "true", *SMALL
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "epoch 1 of 2 done" in second.stdout + second.stderr
    trainer = torch.load(out / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == 2 * trainer["epoch_length"]  # the second epoch ran after the resume
    probs = FrameInitializer(out / "model.pt").segment(torch.rand(2, 40, 30), (1.4, 1.4))
    assert probs.shape == (2, 4, 40, 30)
