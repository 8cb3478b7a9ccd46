"""scripts.settings: output folder, cache folder and device checked before any study, creating nothing."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from scripts.errors import CSTMInputError
from scripts.settings import check_device, check_settings


def test_usable_settings_pass_and_create_nothing(tmp_path: Path) -> None:
    check_settings(tmp_path / "out" / "run1", tmp_path / "cache", "cpu")
    check_settings(tmp_path, None, torch.device("cpu"))
    assert not list(tmp_path.iterdir())


def test_read_only_output_folder_is_refused(tmp_path: Path) -> None:
    """(chmod does not stop root: the access check is mocked.)"""
    with mock.patch("os.access", lambda path, mode: Path(path) != tmp_path):
        with pytest.raises(CSTMInputError, match=r"out: output folder cannot be created in .* \(not writable\)"):
            check_settings(tmp_path / "out")


@pytest.mark.parametrize(
    "device, available, count, expected",
    [
        ("cuda:2", True, 2, "--device: got 'cuda:2', but this machine has 2 CUDA GPU(s); expected cuda:0 to cuda:1."),
        ("cuda", False, 0, "--device: got 'cuda', but "),
        ("tpu", False, 0, "--device: got 'tpu'"),
    ],
    ids=["index_beyond_gpus", "no_cuda", "unknown_type"],
)
def test_unusable_device_is_one_line(device: str, available: bool, count: int, expected: str) -> None:
    with mock.patch("torch.cuda.is_available", lambda: available), mock.patch("torch.cuda.device_count", lambda: count):
        with pytest.raises(CSTMInputError) as raised:
            check_device(device)
    assert str(raised.value).startswith(expected)
