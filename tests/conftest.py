"""Shared fixtures: paths, phantom studies and the small network of the shipped model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "cstm_bundle"
CONFIGS = BUNDLE / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"


def run_bundle(run_id: str, config: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run <run_id> --config_file cstm_bundle/configs/<config>`` from the repo root."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", f"cstm_bundle/configs/{config}", *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fresh phantom studies (seeds 5000, 5001: never used for training)."""
    from scripts.data import write_phantom_studies

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_studies(str(root), num_studies=2, seed=5000)
    return root
