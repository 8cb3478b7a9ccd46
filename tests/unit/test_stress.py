"""The stress suite's conditions (scripts/metrics/stress.py): seeded, image-only where they should be, and geometry
conditions that move the labels, the affine and info.json with the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.metrics.stress import CONDITIONS, CineStudy, format_stress, read_study, summarize, write_study

GEOMETRY = {"pixel size x1.3", "mirrored", "apex first"}


@pytest.fixture(scope="module")
def study() -> CineStudy:
    rng = np.random.default_rng(0)
    image = (rng.random((40, 36, 5, 4)) * 300).astype(np.float32)
    label = np.zeros((40, 36, 5), np.uint8)
    label[10:20, 8:14, 1:4] = 3
    label[22:30, 20:30, 1:4] = 1
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    info = {"ed": 0, "es": 2, "annotated_slices_ed": [1, 2, 3], "annotated_slices_es": [1, 2, 3, 4]}
    return CineStudy(image, {"ed": label, "es": label.copy()}, affine, info)


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_every_condition_is_seeded_and_keeps_labels_with_the_image(name: str, study: CineStudy) -> None:
    first, again = CONDITIONS[name](study, 3), CONDITIONS[name](study, 3)
    assert np.array_equal(first.image, again.image)  # the same study under the same seed
    assert first.image.shape[2:] == study.image.shape[2:] and np.isfinite(first.image.astype(float)).all()
    for phase, label in first.labels.items():
        assert label.shape == first.image.shape[:3] and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 3}
        if name not in GEOMETRY:
            assert np.array_equal(label, study.labels[phase])
    if name not in GEOMETRY | {"clean"}:
        assert not np.array_equal(first.image.astype(np.float32), study.image)  # the condition changes something


def test_geometry_conditions(study: CineStudy) -> None:
    apex = CONDITIONS["apex first"](study, 0)
    assert np.array_equal(apex.image[:, :, 0], study.image[:, :, -1]) and apex.info["base_first"] is False
    assert apex.info["annotated_slices_ed"] == [1, 2, 3] and apex.info["annotated_slices_es"] == [0, 1, 2, 3]
    # every voxel keeps its world position: slice z of the flipped study lies where slice Z-1-z did
    assert np.allclose(apex.affine @ [0, 0, 0, 1], study.affine @ [0, 0, 4, 1])
    mirrored = CONDITIONS["mirrored"](study, 0)
    assert np.array_equal(mirrored.labels["ed"][:, ::-1], study.labels["ed"])
    coarse = CONDITIONS["pixel size x1.3"](study, 0)
    assert coarse.image.shape[:2] == (round(40 / 1.3), round(36 / 1.3))
    assert np.allclose(np.linalg.norm(coarse.affine[:3, :2], axis=0), 1.95)
    lv_area = (study.labels["ed"] == 3).sum() * 1.5**2
    assert (coarse.labels["ed"] == 3).sum() * 1.95**2 == pytest.approx(lv_area, rel=0.15)
    assert CONDITIONS["uint16 range"](study, 0).image.dtype == np.uint16


def test_a_study_round_trips_through_its_folder(study: CineStudy, tmp_path: Path) -> None:
    write_study(CONDITIONS["uint16 range"](study, 0), tmp_path / "s")
    back = read_study(tmp_path / "s")
    assert back.image.shape == study.image.shape and back.info == study.info
    assert np.array_equal(back.labels["es"], study.labels["es"]) and np.allclose(back.affine, study.affine)


def test_summary_table_against_clean() -> None:
    def metrics(es: float) -> dict:
        whole = {c: {"dice_2d": es} for c in ("mean", "LV", "Myo", "RV")}
        return {"ED": {"whole": {"mean": {"dice_2d": 0.9}}}, "ES": {"whole": whole}}

    summary = summarize({"clean": metrics(0.83), "blur": metrics(0.81)})
    assert summary["blur"]["es_change"] == pytest.approx(-0.02) and summary["clean"]["es_change"] == 0
    assert "| blur | 0.900 | 0.810 | 0.810 | 0.810 | 0.810 | -0.020 |" in format_stress(summary)
