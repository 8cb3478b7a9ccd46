"""Tests for scripts/data/phantom.py: determinism, geometry, cardiac motion, difficulty and the study-folder writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scripts.data.phantom import PhantomStudy, make_phantom_study, write_phantom_studies
from scripts.errors import CSTMInputError

BUNDLE_ROOT = Path(__file__).resolve().parents[2] / "cstm_bundle"
SEEDS = (0, 1, 2, 3)
SMALL = {"image_size": (64, 72), "num_slices": 4, "num_phases": 8}


@pytest.fixture(scope="module")
def studies() -> dict[int, PhantomStudy]:
    return {seed: make_phantom_study(seed) for seed in SEEDS}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _thickness(label: np.ndarray) -> float:
    """Mean LV wall thickness (pixels) of one slice from areas: epicardial minus endocardial equivalent radius."""
    lv, myo = float((label == 3).sum()), float((label == 2).sum())
    return np.sqrt((lv + myo) / np.pi) - np.sqrt(lv / np.pi)


def test_deterministic_by_seed(studies):
    again = make_phantom_study(0)
    for a, b in zip(again, studies[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(studies[0].image, studies[1].image)
    assert not np.array_equal(studies[0].label, studies[1].label)


def test_shapes_dtypes_affine(studies):
    study = studies[0]
    assert study.image.shape == study.label.shape == (128, 128, 9, 20)
    assert study.image.dtype == np.float32 and study.label.dtype == np.uint8
    assert study.affine.shape == (4, 4) and study.affine.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(study.affine[:3, :3], axis=0), (1.8, 1.8, 8.0))
    assert study.ed == 0 and 0.3 * 20 <= study.es <= 0.42 * 20
    assert 0.0 <= study.image.min() and study.image.max() < 2.5
    small = make_phantom_study(7, pixel_spacing=2.0, slice_spacing=10.0, **SMALL)
    assert small.image.shape == (64, 72, 4, 8) and 1 <= small.es < 8
    np.testing.assert_allclose(np.linalg.norm(small.affine[:3, :3], axis=0), (2.0, 2.0, 10.0))


def test_bad_arguments():
    with pytest.raises(CSTMInputError, match="num_phases"):
        make_phantom_study(0, num_phases=2)
    with pytest.raises(CSTMInputError, match="image_size"):
        make_phantom_study(0, image_size=(8, 8))


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_present_and_consistent(studies, seed):
    study = studies[seed]
    assert set(np.unique(study.label).tolist()) <= {0, 1, 2, 3}
    middle = study.label[:, :, study.label.shape[2] // 2, study.ed]
    assert set(np.unique(middle).tolist()) == {0, 1, 2, 3}
    lv_ed = study.label[..., study.ed] == 3
    blood = study.image[..., study.ed][ndimage.binary_erosion(lv_ed)].mean()
    myo = study.image[..., study.ed][ndimage.binary_erosion(study.label[..., study.ed] == 2)].mean()
    assert blood > 2.0 * myo  # the label is the tissue drawn: bright blood pool, dark myocardium


@pytest.mark.parametrize("seed", SEEDS)
def test_contraction_and_wall_thickening(studies, seed):
    study = studies[seed]
    ed, es, middle = study.label[..., study.ed], study.label[..., study.es], study.label.shape[2] // 2
    ef = 1.0 - (es == 3).sum() / (ed == 3).sum()  # from the labels, as the bundle measures it
    assert 0.4 <= ef <= 0.75
    assert _thickness(es[:, :, middle]) > 1.2 * _thickness(ed[:, :, middle])


@pytest.mark.parametrize("seed", SEEDS)
def test_through_plane_motion(studies, seed):
    study = studies[seed]
    lv = (study.label == 3).sum(axis=(0, 1))  # (Z, T)
    middle = lv.shape[0] // 2
    basal_ratio, middle_ratio = lv[0, study.es] / lv[0, study.ed], lv[middle, study.es] / lv[middle, study.ed]
    assert basal_ratio < middle_ratio - 0.3  # the base descends: the basal slice leaves the LV near ES
    heart = (study.label > 0).sum(axis=(0, 1))
    assert heart[-1, study.es] <= heart[-1, study.ed]  # the apex shrinks


@pytest.mark.parametrize("seed", SEEDS)
def test_bright_distractors_outside_heart(studies, seed):
    study = studies[seed]
    image, label = study.image[..., study.ed], study.label[..., study.ed]
    threshold = np.percentile(image[label == 3], 80)
    near_heart = ndimage.binary_dilation(label > 0, np.ones((5, 5, 1), bool))
    bright = (image > threshold) & ~near_heart
    assert bright.sum() > 100
    assert bright[:, :, label.shape[2] // 2].sum() > 10  # the aorta is on every slice


def test_copy_ed_baseline_is_clearly_wrong(studies):
    names = {3: "LV", 2: "Myo", 1: "RV"}
    dice = {
        name: np.mean([_dice(s.label[..., s.ed] == c, s.label[..., s.es] == c) for s in studies.values()])
        for c, name in names.items()
    }
    print("copy-ED Dice (ED label vs ES label, seeds 0-3): " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    assert np.mean(list(dice.values())) < 0.80
    assert dice["LV"] < 0.90


def test_write_round_trip_and_overwrite(tmp_path):
    folders = write_phantom_studies(str(tmp_path), num_studies=2, seed=5, **SMALL)
    assert folders == [str(tmp_path / "phantom_005"), str(tmp_path / "phantom_006")]
    assert json.loads((tmp_path / "datalist.json").read_text()) == {"studies": ["phantom_005", "phantom_006"]}
    study = make_phantom_study(5, **SMALL)
    folder = Path(folders[0])
    image = nib.load(folder / "image.nii.gz")
    assert image.shape == (64, 72, 4, 8) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, study.affine)
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), study.image)
    label_ed, label_es = nib.load(folder / "label_ed.nii.gz"), nib.load(folder / "label_es.nii.gz")
    assert label_ed.get_data_dtype() == np.uint8 and label_ed.shape == (64, 72, 4)
    np.testing.assert_array_equal(np.asarray(label_ed.dataobj), study.label[..., study.ed])
    np.testing.assert_array_equal(np.asarray(label_es.dataobj), study.label[..., study.es])
    np.testing.assert_array_equal(np.asarray(nib.load(folder / "label_4d_gt.nii.gz").dataobj), study.label)
    info = json.loads((folder / "info.json").read_text())
    assert info == {"ed": 0, "es": study.es, "spacing": [1.8, 1.8, 8.0], "phantom_seed": 5, "base_first": True}

    before = (folder / "image.nii.gz").stat().st_mtime_ns
    with pytest.raises(CSTMInputError, match="exists"):
        write_phantom_studies(str(tmp_path), num_studies=2, seed=5, **SMALL)
    assert (folder / "image.nii.gz").stat().st_mtime_ns == before
    write_phantom_studies(str(tmp_path), num_studies=2, seed=5, overwrite=True, **SMALL)


def test_cli(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.phantom", str(out), "--num_studies", "1"],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "phantom_000" / "image.nii.gz").is_file()
    assert json.loads((out / "datalist.json").read_text()) == {"studies": ["phantom_000"]}
