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
