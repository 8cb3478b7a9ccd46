"""Shared fixtures: fresh phantom studies."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fresh phantom studies (seeds 5000, 5001: never used for training)."""
    from scripts.data import write_phantom_studies

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_studies(str(root), num_studies=2, seed=5000)
    return root
