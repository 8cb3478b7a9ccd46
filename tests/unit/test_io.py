"""Atomic writes: a file is complete or absent, never half-written, never silently overwritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.errors import CSTMInputError
from scripts.io import save_json, write_atomic


def test_a_write_interrupted_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = save_json({"version": 1}, tmp_path / "summary.json")

    def interrupted(tmp: str) -> None:
        Path(tmp).write_text('{"version": 2, "metr')  # cut short, as by a kill during the save
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted, overwrite=True)
    assert path.read_text() == '{\n "version": 1\n}'
    assert os.listdir(tmp_path) == ["summary.json"]


def test_an_existing_file_is_replaced_only_when_asked(tmp_path: Path) -> None:
    path = save_json([1], tmp_path / "a.json")
    with pytest.raises(CSTMInputError, match="a.json: output file exists"):
        save_json([2], path)
    save_json([2], path, overwrite=True)
    assert path.read_text() == "[\n 2\n]"


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = save_json({}, tmp_path / "b.json")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_full_disk_during_torch_save_is_named_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reports a failed write as RuntimeError; a checkpoint on a full disk says so and leaves no file."""
    from collections import namedtuple

    import torch

    from scripts.io import save_torch

    def fail(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", fail)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10**9, 10**9, 0))
    with pytest.raises(CSTMInputError, match="checkpoint_last.pt: disk is full"):
        save_torch({"a": 1}, tmp_path / "checkpoint_last.pt", overwrite=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10**9, 0, 10**9))
    with pytest.raises(CSTMInputError, match="model.pt: cannot write the file .*PytorchStreamWriter"):
        save_torch({"a": 1}, tmp_path / "model.pt", overwrite=True)
