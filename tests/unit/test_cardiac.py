"""scripts.metrics.cardiac / pictures: volumes, EF and mass on a phantom of known volumes; the written files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from monai.data import MetaTensor
from PIL import Image

from scripts.metrics import CardiacOutputsd, cardiac_function, voxel_volume_ml
from scripts.metrics.pictures import ALPHA, COLOURS, CURVE_DPI, CURVE_SIZE, GAP, montage_phases, overlay

SPACING = (0.5, 0.5, 8.0)  # mm
SHAPE = (260, 260, 6)
LV_RADIUS = [25.0, 22.0, 18.0, 17.0, 20.0, 23.0]  # mm per phase: ED t=0, ES t=3
WALL = 8.0
RV_RADIUS = [20.0, 18.0, 15.0, 14.0, 16.0, 19.0]


def cylinder_phantom() -> np.ndarray:
    """(H, W, Z, T) labels: LV blood discs in a myocardial ring and an RV disc, on every slice: volumes are known."""
    rows, cols = np.meshgrid(np.arange(SHAPE[0]) * SPACING[0], np.arange(SHAPE[1]) * SPACING[1], indexing="ij")
    labels = np.zeros((*SHAPE, len(LV_RADIUS)), dtype=np.uint8)
    for t, (r_lv, r_rv) in enumerate(zip(LV_RADIUS, RV_RADIUS, strict=True)):
        d_lv = np.hypot(rows - 60, cols - 50)
        d_rv = np.hypot(rows - 60, cols - 50 - r_lv - WALL - r_rv - 1)
        frame = np.zeros(SHAPE[:2], np.uint8)
        frame[d_rv < r_rv] = 1
        frame[d_lv < r_lv + WALL] = 2
        frame[d_lv < r_lv] = 3
        labels[..., t] = frame[..., None]
    return labels


def disc_ml(radius: float) -> float:
    return math.pi * radius**2 * SPACING[2] * SHAPE[2] / 1000


def test_volumes_ef_mass_within_2_percent_of_known() -> None:
    labels = cylinder_phantom()
    voxel_ml = voxel_volume_ml(np.diag([*SPACING, 1.0]))
    assert voxel_ml == pytest.approx(0.5 * 0.5 * 8.0 / 1000)
    result = cardiac_function(labels, voxel_ml)  # ED/ES from the curve
    assert (result["ed_phase"], result["es_phase"]) == (0, 3)
    lv, rv = result["lv"], result["rv"]
    assert lv["edv_ml"] == pytest.approx(disc_ml(25), rel=0.02)
    assert lv["esv_ml"] == pytest.approx(disc_ml(17), rel=0.02)
    assert lv["sv_ml"] == pytest.approx(disc_ml(25) - disc_ml(17), rel=0.02)
    assert lv["ef_percent"] == pytest.approx(100 * (1 - (17 / 25) ** 2), rel=0.02)
    assert rv["ef_percent"] == pytest.approx(100 * (1 - (14 / 20) ** 2), rel=0.02)
    myo_ml = disc_ml(25 + WALL) - disc_ml(25)
    assert result["lv_mass_g"] == pytest.approx(1.05 * myo_ml, rel=0.02)
    assert len(result["volumes_ml"]["lv"]) == len(LV_RADIUS)


def test_given_phases_and_absent_structure() -> None:
    labels = cylinder_phantom()
    labels[labels == 1] = 0  # no RV
    result = cardiac_function(labels, 0.002, ed=1, es=2)
    assert (result["ed_phase"], result["es_phase"], result["ed_source"]) == (1, 2, "info.json")
    assert result["rv"]["ef_percent"] is None  # documented: EF undefined when EDV is 0, never NaN or an error
    assert result["rv"]["edv_ml"] == 0.0


def test_overlay_blends_each_class_colour_over_the_grey_image() -> None:
    """The same colour per class in every frame (not rescaled to the labels a frame holds), background left grey."""
    image = np.array([[0.0, 50.0, 100.0, 150.0, 200.0]])  # grey 0 .. 127.5 in the window 0..400
    for labels in (np.array([[0, 1, 2, 3, 0]]), np.array([[0, 0, 2, 0, 0]])):
        rgb = overlay(image, labels, 0.0, 400.0).astype(float)
        want = np.stack(
            [
                np.full(3, g) if v == 0 else (1 - ALPHA) * g + ALPHA * np.asarray(COLOURS[v])
                for g, v in zip(image[0] / 400 * 255, labels[0], strict=True)
            ]
        )
        np.testing.assert_allclose(rgb[0], want, atol=1)


@pytest.fixture
def study_item(tmp_path: Path) -> dict:
    labels = cylinder_phantom()[::4, ::4]  # (65, 65, 6, 6): small pictures
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, labels.shape) + 200 * (labels == 3)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "info.json").write_text(json.dumps({"ed": 0, "es": 3}))
    affine = np.diag([2.0, 2.0, 8.0, 1.0])
    return {
        "pred": labels[None],
        "image": MetaTensor(image[None], affine=affine),
        "study": "study",
        "study_dir": str(study_dir),
    }


def test_cardiac_outputs_files_and_pictures(study_item: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    CardiacOutputsd("pred", out)(study_item)
    folder = out / "study"
    rows = list(csv.DictReader(open(folder / "volumes.csv")))
    assert len(rows) == 6 and rows[0]["is_ed"] == "1" and rows[3]["is_es"] == "1"
    function = json.loads((folder / "cardiac_function.json").read_text())
    assert function["ed_source"] == "info.json" and function["lv"]["ef_percent"] > 40

    curve = Image.open(folder / "volume_curve.png")
    assert curve.size == (CURVE_SIZE[0] * CURVE_DPI, CURVE_SIZE[1] * CURVE_DPI)
    assert np.asarray(curve.convert("L")).std() > 5  # not blank

    phases = montage_phases(6, 0, 3)
    assert phases == [0, 1, 3, 4]
    montage = Image.open(folder / "montage.png")
    assert montage.size == (len(phases) * (65 + GAP) - GAP, 6 * (65 + GAP) - GAP)  # (width, height)
    pixels = np.asarray(montage.convert("RGB")).astype(int)
    assert pixels.std() > 5
    assert ((pixels[..., 0] - pixels[..., 2]) > 60).any()  # the red LV overlay is there

    gif = Image.open(folder / "middle_slice.gif")
    assert gif.n_frames == 6
    assert gif.size[0] >= 256 and gif.size[0] % 65 == 0
    assert np.asarray(gif.convert("L")).std() > 5


def test_cardiac_outputs_switch_off_and_no_overwrite(study_item: dict, tmp_path: Path) -> None:
    out = tmp_path / "off"
    CardiacOutputsd("pred", out, enabled=False)(study_item)
    assert not out.exists()
    CardiacOutputsd("pred", out, pictures=False)(study_item)
    assert sorted(p.name for p in (out / "study").iterdir()) == ["cardiac_function.json", "volumes.csv"]
    with pytest.raises(ValueError, match="volumes.csv: output file exists"):
        CardiacOutputsd("pred", out, pictures=False)(study_item)


def test_suspect_results_are_flagged() -> None:
    from scripts.metrics.cardiac import sanity_flags

    labels = np.zeros((4, 4, 1, 4), np.uint8)
    labels[..., 0] = 3  # LV at one phase only, RV never
    result = {
        "lv": {"edv_ml": 0.016, "esv_ml": 0.0, "ef_percent": 100.0},
        "rv": {"edv_ml": 0.0, "esv_ml": 0.0, "ef_percent": None},
        "lv_mass_g": 0.0,
    }
    assert sanity_flags(result, labels) == ["LV EDV 0.0 mL outside 10-600 mL", "LV absent from 3 of 4 phases"]
    result = {
        "lv": {"edv_ml": 120.0, "esv_ml": 150.0, "ef_percent": -25.0},
        "rv": {"edv_ml": 130.0, "esv_ml": 60.0, "ef_percent": 53.8},
        "lv_mass_g": 110.0,
    }
    labels[...] = 3
    labels[0, 0] = 1
    labels[0, 1] = 2
    assert sanity_flags(result, labels) == ["LV EF -25.0 % outside [0, 100] %", "LV ESV 150.0 mL above EDV 120.0 mL"]
