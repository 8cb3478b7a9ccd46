"""Finding the studies of a dataset folder (scripts/data/readers.py ``list_studies``, ``skipped_folders``): a study
folder whose name is not UTF-8 and a folder of studies one level down are named, never passed over or crashing the
run (issue 31, items 7 and 8)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from test_bad_inputs import write_study

from scripts.data import list_studies, skipped_folders
from scripts.errors import CSTMInputError

BAD_NAME = os.fsdecode(b"bad\xffname")
"""A folder name made on a system with another encoding (Latin-1 ``ÿ``), as ``os.listdir`` returns it."""


def test_a_study_folder_name_that_is_not_utf8_is_a_bad_study(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_study(tmp_path / "good")
    write_study(tmp_path / BAD_NAME)
    studies = list_studies(tmp_path, check=False)
    assert [s["study"] for s in studies] == ["good"]
    ((folder, problem),) = skipped_folders(tmp_path, [Path(s["study_dir"]) for s in studies])
    assert folder == tmp_path / BAD_NAME
    assert problem.startswith("folder name b'bad\\xffname' is not UTF-8 text") and "rename the folder" in problem
    with caplog.at_level(logging.WARNING):
        list_studies(tmp_path)  # training: logged as skipped
    assert f"{tmp_path / BAD_NAME}: skipped, folder name b'bad\\xffname' is not UTF-8" in caplog.text


def test_one_study_whose_name_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    study = write_study(tmp_path / BAD_NAME)
    for dataset in (study, [study]):
        with pytest.raises(CSTMInputError, match=re.escape(": folder name b'bad\\xffname' is not UTF-8 text")):
            list_studies(dataset)


def test_studies_one_folder_down_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_study(tmp_path / "a_study")
    for name in ("p1", "p2"):
        write_study(tmp_path / "group" / name)
    (tmp_path / "empty").mkdir()
    assert [s["study"] for s in list_studies(tmp_path, check=False)] == ["a_study"]
    ((folder, problem),) = skipped_folders(tmp_path, [tmp_path / "a_study"])
    assert folder == tmp_path / "group"
    assert problem.startswith("not a study: it holds 2 study folders one level down (p1, p2), not searched")
    (tmp_path / "a_study" / "image.nii.gz").unlink()
    (tmp_path / "a_study" / "label_ed.nii.gz").unlink()
    (tmp_path / "a_study" / "label_es.nii.gz").unlink()
    (tmp_path / "a_study" / "info.json").unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(
        CSTMInputError, match=r"found; sub-folder group is not a study \(why: logged above\)"
    ):
        list_studies(tmp_path, check=False)  # only the group: the warning says where the studies are
    assert f"{tmp_path / 'group'}: skipped, not a study: it holds 2 study folders one level down" in caplog.text
