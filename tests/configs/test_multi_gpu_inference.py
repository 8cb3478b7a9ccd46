"""``multi_gpu_inference.json`` under ``torchrun``: two processes (gloo on the CPU) share three studies (2 + 1, not
padded) and write, file for file, what one process writes; rank 0 alone writes ``cohort.csv``, listing all three."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from helpers import BUNDLE, CONFIGS, REPO, torchrun_command
from scripts.data import write_phantom_studies
from scripts.data.cohort import TIMING

pytestmark = pytest.mark.slow


def single_process(data: Path, out: Path) -> None:
    """``inference.json`` in this process, on one thread as each rank runs (the same arithmetic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workflow = ConfigWorkflow(
            config_file=str(CONFIGS / "inference.json"),
            meta_file=str(CONFIGS / "metadata.json"),
            workflow_type="infer",
            bundle_root=str(BUNDLE),
            dataset_dir=str(data),
            output_dir=str(out),
            clinical_pictures=False,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    finally:
        torch.set_num_threads(threads)


def assert_same_outputs(one: Path, two: Path) -> None:
    """Every file of ``one`` equals its twin in ``two``: label maps as arrays (and affines), JSON as parsed,
    ``cohort.csv`` row by row but for the timing columns, anything else byte for byte."""
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        a, b = one / name, two / name
        if name.name.endswith(".nii.gz"):
            x, y = nib.load(a), nib.load(b)
            np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj), err_msg=str(name))
            np.testing.assert_array_equal(x.affine, y.affine, err_msg=str(name))
        elif name.name == "outputs.json":  # the record: when, and the digests of (gzip-stamped) files, differ
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            assert (x["inputs"], x["settings"], sorted(x["outputs"])) == (
                y["inputs"],
                y["settings"],
                sorted(y["outputs"]),
            )
        elif name.suffix == ".json":
            assert json.loads(a.read_text()) == json.loads(b.read_text()), name
        elif name.name == "cohort.csv":
            rows = []
            for path in (a, b):
                with open(path, newline="") as f:
                    rows.append([{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)])
            assert rows[0] == rows[1]
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_two_gloo_ranks_write_what_one_process_writes(tmp_path: Path) -> None:
    data, one, two = tmp_path / "phantom", tmp_path / "one", tmp_path / "two"
    write_phantom_studies(str(data), num_studies=3, seed=7300, image_size=(96, 96), num_slices=4, num_phases=4)
    single_process(data, one)

    cmd = torchrun_command(
        "inference",
        [str(CONFIGS / "inference.json"), str(CONFIGS / "multi_gpu_inference.json")],
        *("--dataset_dir", str(data), "--output_dir", str(two), "--clinical_pictures", "false", "--progress", "true"),
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]

    assert "rank 0 of 2: 2 of the 3 studies" in log and "rank 1 of 2: 1 of the 3 studies" in log  # not padded
    segmented = sorted(
        line.split(": 16 frames")[0].rsplit(" ", 1)[-1] for line in log.splitlines() if ": 16 frames" in line
    )
    assert segmented == ["phantom_7300", "phantom_7301", "phantom_7302"]  # each study once
    assert "rank 0: study 2/2 (phantom_7302): done" in log and "rank 1: study 1/1 (phantom_7301): done" in log
    assert log.count("cohort table written") == 1 and "3 processed, 0 skipped as done, 0 failed (2 ranks)" in log
    assert_same_outputs(one, two)
    with open(two / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["study"], r["status"]) for r in rows] == [(f"phantom_730{i}", "processed") for i in range(3)]
    assert all(float(r["inference_s"]) > 0 for r in rows)  # every rank's timings reach rank 0
