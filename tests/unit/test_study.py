"""scripts.data.study: info.json read once, checked whole before any study is loaded; labels as a list or a dict."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data import StudyBatch
from scripts.data.study import drawn_classes, read_info
from scripts.data.transforms import read_annotation
from scripts.errors import CSTMInputError

SHAPE = (16, 16, 3, 4)  # (H, W, Z, T)
DECATHLON_LABELS = {"0": "background", "1": "RV cavity", "2": "myocardium", "3": "LV cavity"}


def write_study(folder: Path, info: dict, annotation: bool = False) -> Path:
    """A study of SHAPE: image, labels (RV 1, Myo 2, LV 3 on every slice) as label_ed or annotation.nii.gz, info."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random(SHAPE, dtype=np.float32), np.eye(4)), str(folder / "image.nii.gz"))
    labels = np.zeros(SHAPE[:3], np.uint8)
    labels[2:5, 2:5], labels[6:12, 6:12], labels[8:10, 8:10] = 1, 2, 3
    name = "annotation.nii.gz" if annotation else "label_ed.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / name))
    (folder / "info.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize(
    "labels, expected",
    [([3, 1, 2], [1, 2, 3]), (DECATHLON_LABELS, [1, 2, 3]), ({"0": "background", "3": "LV blood pool"}, [3])],
    ids=["list", "decathlon_dict", "dict_lv_only"],
)
def test_labels_list_and_dict_are_read_alike(labels: object, expected: list[int], tmp_path: Path) -> None:
    """Beside label_ed.nii.gz (which classes each phase draws) and beside annotation.nii.gz (its classes declared)."""
    study = write_study(tmp_path / "gt", {"ed": 0, "es": 2, "labels": labels, "labels_es": labels})
    info = read_info(study)
    assert info["labels"] == info["labels_es"] == expected
    assert drawn_classes(info, "ed", study) == set(expected)
    annotated = write_study(tmp_path / "ann", {"ed": 0, "es": 2, "annotated_phase": 1, "labels": labels}, True)
    info = read_info(annotated)
    if expected == [1, 2, 3]:
        assert read_annotation(annotated, info, SHAPE, np.eye(4))["annotation_phase"] == 1
    else:
        with pytest.raises(CSTMInputError, match=r"annotation.nii.gz: draws 1 RV, 2 Myo, which 'labels' of info"):
            read_annotation(annotated, info, SHAPE, np.eye(4))


@pytest.mark.parametrize(
    "body",
    [{"height_cm": 40, "weight_kg": 2}, {"height_cm": 250, "weight_kg": 350}, {"height_cm": None, "weight_kg": 70.5}],
    ids=["smallest", "largest", "null_height"],
)
def test_body_size_within_the_limits_is_read(body: dict, tmp_path: Path) -> None:
    study = write_study(tmp_path / "s", {"ed": 0, "es": 2, **body})
    assert read_info(study) == {"ed": 0, "es": 2, **body}


def test_every_info_check_runs_before_the_first_study_is_loaded(tmp_path: Path) -> None:
    """A batch of three: the bad ones (an ES beyond the last phase, read only by the clinical outputs; a height that
    is a string, read only by the report) are listed by the screening, before any study is loaded."""
    write_study(tmp_path / "data" / "a_good", {"ed": 0, "es": 2, "height_cm": 170, "weight_kg": 70})
    write_study(tmp_path / "data" / "b_es", {"ed": 0, "es": SHAPE[3]})
    write_study(tmp_path / "data" / "c_height", {"ed": 0, "es": 2, "height_cm": "170 cm"})
    studies = [
        {"image": str(p / "image.nii.gz"), "study": p.name, "study_dir": str(p)}
        for p in sorted((tmp_path / "data").iterdir())
    ]
    loaded = []
    batch = StudyBatch(studies, tmp_path / "data", transform=loaded.append)
    assert [s["study"] for s in batch.screen()] == ["a_good"]
    assert not loaded
    failed = {Path(k).name: v for k, v in batch.failed.items()}
    assert failed == {
        "b_es": "info.json: es=4 is outside the 4 phases; expected 0 <= es < 4.",
        "c_height": "info.json: 'height_cm' is '170 cm'; expected the patient's height in cm: a number in 40-250, or "
        "null.",
    }
