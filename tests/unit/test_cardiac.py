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

from dicom_writer import retag, write_cine_dicom
from scripts.data.dicom import CineTags, read_cine_tags
from scripts.errors import CSTMInputError
from scripts.metrics import CardiacOutputsd, cardiac_function, voxel_volume_ml
from scripts.metrics.clinical_report import body_size, ed_es_source, heart_rate, indexed_function, rr_from_trigger_times
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
    assert function["ed_es_source"] == "info.json"
    assert function["heart_rate_bpm"] is None and function["lv"]["co_l_per_min"] is None  # NIfTI: no timing
    assert function["body"]["bsa_m2"] is None and function["indexed"]["lv"]["edv_ml_per_m2"] is None
    assert function["conventions"]["slice_spacing_mm"] == 8.0 and function["conventions"]["slice_thickness_mm"] is None
    report = (folder / "report.md").read_text()
    for name in ("volume_curve.png", "montage.png", "middle_slice.gif"):
        assert f"]({name})" in report

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
    writer = CardiacOutputsd("pred", out, pictures=False)
    writer(study_item)
    written = sorted(p.name for p in (out / "study").iterdir())
    assert written == ["cardiac_function.json", "report.md", "volumes.csv"]
    assert sorted(p.name for p in writer.output_files("study")) == written  # what --skip_done checks
    assert "](volume_curve.png)" not in (out / "study" / "report.md").read_text()  # no links without pictures
    assert CardiacOutputsd("pred", out, enabled=False).output_files("study") == []
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


def no_tags(**values: object) -> CineTags:
    return CineTags(**{**dict.fromkeys(CineTags._fields), **values})


def test_bsa_and_indexed_values_equal_hand_computed_ones(tmp_path: Path) -> None:
    """Mosteller: sqrt(180 cm * 80 kg / 3600) = 2.0 m²; height index per m (power 1)."""
    body, flags = body_size({"height_cm": 180, "weight_kg": 80}, no_tags(patient_size_m=1.6), tmp_path)
    assert body == {
        "height_cm": 180.0,
        "height_source": "info.json",
        "weight_kg": 80.0,
        "weight_source": "info.json",
        "bsa_m2": 2.0,
        "bmi_kg_per_m2": 24.7,
        "size_plausible": True,
    }
    assert flags == []
    function = {
        "lv": {"edv_ml": 150.0, "esv_ml": 60.0, "sv_ml": 90.0, "co_l_per_min": 6.3},
        "rv": {"edv_ml": 160.0, "esv_ml": 70.0, "sv_ml": 90.0, "co_l_per_min": None},
        "lv_mass_g": 120.0,
    }
    indexed = indexed_function(function, body)
    assert indexed["lv"] == {
        "edv_ml_per_m2": 75.0,
        "esv_ml_per_m2": 30.0,
        "sv_ml_per_m2": 45.0,
        "ci_l_per_min_per_m2": 3.15,
        "edv_ml_per_m": 83.33,
        "esv_ml_per_m": 33.33,
        "sv_ml_per_m": 50.0,
    }
    assert indexed["rv"]["edv_ml_per_m2"] == 80.0 and indexed["rv"]["ci_l_per_min_per_m2"] is None
    assert (indexed["lv_mass_g_per_m2"], indexed["lv_mass_g_per_m"]) == (60.0, 66.67)

    # DICOM where info.json has none: PatientSize in m; sqrt(160 * 90 / 3600) = 2.0; height alone indexes per m
    body, _ = body_size({}, no_tags(patient_size_m=1.6, patient_weight_kg=90.0), tmp_path)
    assert (body["height_cm"], body["height_source"], body["bsa_m2"]) == (160.0, "DICOM PatientSize", 2.0)
    body, flags = body_size({"height_cm": 160}, no_tags(patient_weight_kg=900.0), tmp_path)
    assert body["weight_kg"] is None and body["bsa_m2"] is None
    assert flags == ["weight 900 kg (DICOM PatientWeight) outside 2-350 kg: not used for indexing"]
    assert indexed_function(function, body)["lv"]["edv_ml_per_m"] == 93.75
    with pytest.raises(CSTMInputError, match=r"info.json: 'height_cm' is '180 cm'; expected a positive number"):
        body_size({"height_cm": "180 cm"}, None, tmp_path)


def test_dicom_body_size_beyond_any_patient_is_flagged_and_not_used(tmp_path: Path) -> None:
    """PatientSize in inches (0.69 "m") with 80 kg: BMI 168, no BSA; info.json's own values are refused up front
    (tests/test_bad_inputs.py, info_height_in_inches)."""
    body, flags = body_size({}, no_tags(patient_size_m=0.69, patient_weight_kg=80.0), tmp_path)
    assert (body["height_cm"], body["weight_kg"], body["bsa_m2"], body["size_plausible"]) == (None, None, None, None)
    assert flags == [
        "height 69 cm (DICOM PatientSize) and weight 80 kg (DICOM PatientWeight) give a BMI of 168 kg/m², outside "
        "10-80: not used for indexing"
    ]


@pytest.mark.parametrize(
    "height, weight, plausible, expected",
    [
        (180, 80, True, []),
        (171, 176, False, ["implausible body size: BMI 60.2 kg/m² outside 12-50 kg/m², BSA 2.89 m² outside 0.2-2.7"]),
        (
            40,
            2,
            False,
            [
                "implausible body size: BSA 0.15 m² outside 0.2-2.7 m² (height 40 cm from info.json",
                "body size does not fit the heart: LV EDV / BSA 630 mL/m² outside 20-250 mL/m², RV EDV / BSA 393 "
                "mL/m² outside 20-250 mL/m², LV mass / BSA 503 g/m² outside 20-250 g/m² (BSA 0.15 m²",
            ],
        ),
    ],
    ids=["adult", "weight_in_pounds", "neonate_size_adult_heart"],
)
def test_implausible_body_size_is_flagged_in_report_json_and_cohort(
    study_item: dict, tmp_path: Path, height: float, weight: float, plausible: bool, expected: list[str]
) -> None:
    """Units that pass the up-front limits still give a BMI, BSA or indexed values no patient has: flagged in
    report.md, in cardiac_function.json (``flags`` and ``body.size_plausible``) and so in cohort.csv."""
    from scripts.data.cohort import flatten_report

    (Path(study_item["study_dir"]) / "info.json").write_text(
        json.dumps({"ed": 0, "es": 3, "height_cm": height, "weight_kg": weight})
    )
    out = tmp_path / "out"
    CardiacOutputsd("pred", out, pictures=False)(study_item)
    function = json.loads((out / "study" / "cardiac_function.json").read_text())
    report = (out / "study" / "report.md").read_text()
    assert function["body"]["size_plausible"] is plausible
    assert flatten_report(function)["body_size_plausible"] is plausible
    assert function["body"]["bsa_m2"] is not None  # still used for indexing, with the flag beside it
    assert len(function["flags"]) == len(expected)
    for flag, start in zip(function["flags"], expected, strict=True):
        assert flag.startswith(start), flag
        assert f"- {flag}" in report
    assert ("## Sanity flags\n\nNone." in report) is plausible


def test_heart_rate_sources_and_trigger_time_estimate() -> None:
    times = np.array([[0.0, 100, 200, 300], [0.0, 110, 220, 330], [5.0, 105, 205, 305]])  # (Z, T)
    assert rr_from_trigger_times(times) == 405.0  # per slice 400, 440, 405: the median
    assert rr_from_trigger_times(times[:, :1]) is None
    rhythm, flags = heart_rate(no_tags(trigger_times_ms=times * 2, nominal_interval_ms=1000.0, heart_rate_bpm=70.0))
    assert rhythm == {"heart_rate_bpm": 60.0, "rr_interval_ms": 1000.0, "heart_rate_source": "DICOM NominalInterval"}
    rhythm, flags = heart_rate(no_tags(trigger_times_ms=times * 2, nominal_interval_ms=500.0, heart_rate_bpm=75.0))
    assert rhythm["heart_rate_source"] == "DICOM HeartRate" and rhythm["rr_interval_ms"] == 800.0
    assert flags == ["DICOM NominalInterval (RR 500 ms) not above the last trigger time 660 ms: ignored"]
    rhythm, flags = heart_rate(no_tags(trigger_times_ms=times))
    assert rhythm["heart_rate_bpm"] == pytest.approx(60000 / 405, abs=0.05) and flags == []
    rhythm, flags = heart_rate(no_tags(trigger_times_ms=times / 4))  # RR 101 ms: a unit error, not a heart
    assert flags == ["heart rate 593 bpm (DICOM TriggerTime (estimate)) outside 25-220 bpm"]
    assert heart_rate(None) == ({"heart_rate_bpm": None, "rr_interval_ms": None, "heart_rate_source": None}, [])
    assert ed_es_source("info.json", "smallest LV volume") == "info.json and volume curve"
    assert ed_es_source("largest LV volume", "smallest LV volume") == "volume curve"


def test_dicom_study_gets_heart_rate_cardiac_output_and_report(study_item: dict, tmp_path: Path) -> None:
    """A DICOM study (6 slices x 6 phases, trigger times 0, 150, ... 750 ms: RR 900 ms, 66.7 bpm), patient tags in
    the headers (180 cm, 80 kg: BSA 2.0 m²) and none in info.json: HR, CO = SV x HR, BSA-indexed values and the report follow.
    """
    study_dir = Path(study_item["study_dir"])
    (study_dir / "info.json").write_text(json.dumps({"ed": 0, "es": 3}))
    files = write_cine_dicom(np.ones((8, 8, 6, 6), np.float32), np.diag([2.0, 2.0, 8.0, 1.0]), study_dir / "dicom")

    def tags(ds: object) -> None:
        ds.TriggerTime = 150.0 * (ds.InstanceNumber - 1)
        ds.PatientSize, ds.PatientWeight, ds.SliceThickness = 1.8, 80.0, 6.0  # a 2 mm gap

    for path in files:
        retag(path, tags)
    read = read_cine_tags(study_dir / "dicom")
    assert (read.patient_size_m, read.patient_weight_kg, read.slice_thickness_mm) == (1.8, 80.0, 6.0)
    assert read.trigger_times_ms.shape == (6, 6) and read.nominal_interval_ms is None

    out = tmp_path / "out"
    CardiacOutputsd("pred", out, phases="volume")(study_item)
    function = json.loads((out / "study" / "cardiac_function.json").read_text())
    assert function["ed_es_source"] == "volume curve" and function["ed_source"] == "largest LV volume"
    assert (function["heart_rate_bpm"], function["rr_interval_ms"]) == (66.7, 900.0)
    assert function["heart_rate_source"] == "DICOM TriggerTime (estimate)"
    lv = function["lv"]
    assert lv["co_l_per_min"] == pytest.approx(lv["sv_ml"] * 66.7 / 1000, abs=1e-3)
    assert function["body"]["bsa_m2"] == 2.0 and function["body"]["weight_source"] == "DICOM PatientWeight"
    assert function["indexed"]["lv"]["edv_ml_per_m2"] == pytest.approx(lv["edv_ml"] / 2, abs=0.01)
    assert function["indexed"]["lv_mass_g_per_m"] == pytest.approx(function["lv_mass_g"] / 1.8, abs=0.01)
    assert (function["conventions"]["slice_thickness_mm"], function["conventions"]["slice_spacing_mm"]) == (6.0, 8.0)

    report = (out / "study" / "report.md").read_text()
    assert report.startswith("# Cardiac function: study\n")
    assert f"| EDV | mL | {lv['edv_ml']:.1f} | {function['rv']['edv_ml']:.1f} |" in report
    assert f"| EDV / BSA | mL/m² | {function['indexed']['lv']['edv_ml_per_m2']:.1f} |" in report
    assert f"| Cardiac output | L/min | {lv['co_l_per_min']:.2f} |" in report
    assert "Heart rate: 67 bpm (RR 900 ms, DICOM TriggerTime (estimate))" in report
    assert "from volume curve" in report and "Slice spacing 8 mm, slice thickness 6 mm" in report
    assert "Papillary muscles and trabeculae: counted as the labels have them; the training labels (ACDC)" in report
    assert "## Sanity flags\n\nNone." in report and "![LV and RV volume over the cycle](volume_curve.png)" in report
