"""evaluate.json and the clinical outputs of inference.json, end to end through ``python -m monai.bundle run``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import BUNDLE, EVALUATE, SHARED_DATA, run_bundle

pytestmark = pytest.mark.slow

SUNNYBROOK = SHARED_DATA / "sunnybrook" / "SCD0000101"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_on_phantom_studies(phantom_studies: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_bundle("evaluate", EVALUATE, "--dataset_dir", str(phantom_studies), "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_rows(out / "metrics.csv")
    studies = sorted(p.name for p in phantom_studies.iterdir() if p.is_dir())
    model = [r for r in rows if r["method"] == "model" and r["slices"] == "every"]
    # one row per study × phase × region × class (LV, Myo, RV, mean), for every slice and for the labelled slices
    assert len(model) == len(studies) * 2 * 4 * 4
    labelled = [r for r in rows if r["method"] == "model" and r["slices"] == "labelled"]
    assert [{**r, "slices": "every"} for r in labelled] == model  # labels not stated complete: the same slices
    assert {(r["phase"], r["region"], r["class"]) for r in model} == {
        (p, g, c)
        for p in ("ED", "ES")
        for g in ("basal", "middle", "apex", "whole")
        for c in ("LV", "Myo", "RV", "mean")
    }
    assert {r["phase"] for r in rows if r["method"] == "copy_ed"} == {"ES"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["studies"] == studies
    whole = summary["metrics"]["model"]["all"]["whole"]["mean"]
    floor = summary["metrics"]["copy_ed"]["ES"]["whole"]["mean"]
    assert summary["metrics"]["model"]["ES"]["whole"]["mean"]["dice_2d"] > floor["dice_2d"] + 0.1
    assert 0 <= whole["hd95_2d"] < 50 and whole["dice_3d"] > 0.8
    assert [t["study"] for t in summary["timing"]] == studies and all(t["fps"] > 0 for t in summary["timing"])
    assert str(out / "metrics.csv") in result.stdout and str(out / "summary.json") in result.stdout
    assert "Whole heart" in result.stdout and "frames/s" in result.stdout
    # cardiac function against the ground truth: every quantity per study for the model, ESV/EF for copy-ED (EF 0)
    function = [r for r in read_rows(out / "function.csv") if r["slices"] == "every"]
    quantities = ("lv_ef_percent", "rv_ef_percent", "lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "rv_esv_ml", "lv_mass_g")
    assert sorted((r["study"], r["quantity"]) for r in function if r["method"] == "model") == sorted(
        (s, q) for s in studies for q in quantities
    )
    copy_ef = [r for r in function if r["method"] == "copy_ed" and r["quantity"].endswith("_ef_percent")]
    assert len(copy_ef) == 2 * len(studies) and all(float(r["ours"]) == 0.0 for r in copy_ef)
    assert all(
        float(r["difference"]) == pytest.approx(float(r["ours"]) - float(r["reference"]), abs=1e-3) for r in function
    )
    lv_ef = summary["agreement"]["model"]["lv_ef_percent"]
    model_ef = [float(r["difference"]) for r in function if (r["method"], r["quantity"]) == ("model", "lv_ef_percent")]
    assert lv_ef["n"] == len(studies) and lv_ef["mae"] == pytest.approx(
        sum(map(abs, model_ef)) / len(studies), abs=1e-3
    )
    assert lv_ef["mae"] < 15 and summary["agreement"]["copy_ed"]["lv_ef_percent"]["mae"] > 20
    with Image.open(out / "bland_altman.png") as png:
        assert png.format == "PNG"
    assert str(out / "function.csv") in result.stdout and str(out / "bland_altman.png") in result.stdout
    assert "| all (2) | model |" in result.stdout and "LV EF %" in result.stdout
    # the quality score ranks the scored frames: every one has a row, and low scores go with low Dice
    quality = read_rows(out / "quality.csv")
    assert len(quality) == summary["quality"]["num_frames"] > 10 and {r["study"] for r in quality} == set(studies)
    assert summary["quality"]["spearman_score_dice"] > 0.3

    again = run_bundle("evaluate", EVALUATE, "--dataset_dir", str(phantom_studies), "--output_dir", str(out))
    assert again.returncode != 0
    assert "metrics.csv: output file exists" in again.stdout + again.stderr


@pytest.mark.skipif(not SUNNYBROOK.is_dir(), reason="../shared/data/sunnybrook absent")
def test_evaluate_on_sunnybrook_scores_only_annotated_classes(tmp_path: Path) -> None:
    result = run_bundle("evaluate", EVALUATE, "--dataset_dir", str(SUNNYBROOK), "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_rows(tmp_path / "metrics.csv")
    classes = {(r["phase"], r["class"]) for r in rows}
    assert ("ED", "LV") in classes and ("ES", "LV") in classes and ("ED", "Myo") in classes
    assert not any(r["class"] == "RV" for r in rows)  # RV not annotated: no row, not a 0
    assert ("ES", "Myo") not in classes  # no myocardium at ES in Sunnybrook
    assert all(r["dice_2d"] != "nan" for r in rows if r["class"] == "LV")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "RV" not in summary["metrics"]["model"]["all"]["whole"]
    function = {(r["method"], r["quantity"]) for r in read_rows(tmp_path / "function.csv")}
    assert ("model", "lv_ef_percent") in function and ("model", "lv_mass_g") in function
    assert not any(q.startswith("rv_") for _, q in function)  # RV not annotated: no function row either


def test_inference_writes_clinical_outputs(phantom_studies: Path, tmp_path: Path) -> None:
    study = sorted(p for p in phantom_studies.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    result = run_bundle("inference", "inference.json", "--dataset_dir", str(study), "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / study.name
    for name in (
        "label_4d.nii.gz",
        "volumes.csv",
        "cardiac_function.json",
        "volume_curve.png",
        "montage.png",
        "middle_slice.gif",
    ):
        assert (folder / name).is_file(), name
        assert str(folder / name) in result.stdout  # the user is told where it went
    function = json.loads((folder / "cardiac_function.json").read_text())
    truth_ef = json.loads((study / "info.json").read_text())
    assert function["ed_phase"] == truth_ef["ed"] and function["es_phase"] == truth_ef["es"]
    assert 20 < function["lv"]["ef_percent"] < 90 and function["lv_mass_g"] > 0
    assert len(read_rows(folder / "volumes.csv")) == len(function["volumes_ml"]["lv"])
    assert Image.open(folder / "middle_slice.gif").n_frames == len(function["volumes_ml"]["lv"])
    assert "frames/s" in result.stdout and "EF" in result.stdout


ACDC_HELD_OUT = ("patient008", "patient009", "patient010")  # train_real.json's validation split: never trained on


@pytest.mark.skipif(not (SHARED_DATA / "acdc_dev").is_dir(), reason="../shared/data/acdc_dev absent")
def test_shipped_weights_beat_copy_ed_and_dense_runs_on_held_out_acdc(tmp_path: Path) -> None:
    """The real-data weights (models/model.pt) against the copy-ED floor at ES on the held-out ACDC studies, with the
    dense-matching weights (models/model_dense.pt) scored in the same run."""
    studies = tmp_path / "acdc_held_out"
    studies.mkdir()
    for name in ACDC_HELD_OUT:
        (studies / name).symlink_to(SHARED_DATA / "acdc_dev" / name)
    out = tmp_path / "eval"
    result = run_bundle("evaluate", EVALUATE, "--dataset_dir", str(studies), "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    es = {method: m["ES"]["whole"] for method, m in json.loads((out / "summary.json").read_text())["metrics"].items()}
    assert set(es) == {"model", "copy_ed", "initializer", "dense"}
    print(
        "\nES whole-heart 2D Dice, LV/Myo/RV/mean: "
        + "; ".join(
            f"{method} " + "/".join(f"{es[method][c]['dice_2d']:.3f}" for c in ("LV", "Myo", "RV", "mean"))
            for method in es
        )
    )
    # measured (0.5.0): model 0.881 (HD95 7.01 mm; 0.4.0: 0.877, 4.71), dense 0.880 (4.12), copy-ED 0.812 (9.15):
    # bounds near them
    assert es["model"]["mean"]["dice_2d"] > max(0.865, es["copy_ed"]["mean"]["dice_2d"] + 0.05)
    assert es["model"]["mean"]["hd95_2d"] < min(8.0, es["copy_ed"]["mean"]["hd95_2d"] - 1.0)
    assert es["dense"]["mean"]["dice_2d"] > max(0.865, es["copy_ed"]["mean"]["dice_2d"] + 0.05)


def test_evaluate_on_a_split_reports_each_group(phantom_studies: Path, tmp_path: Path) -> None:
    """evaluate_acdc.json reads one split of a datalist (as the bundle's datalist_acdc.json) and scores per group."""
    studies = sorted(p.name for p in phantom_studies.iterdir() if p.is_dir())
    entry = [
        {"study_dir": f"{phantom_studies.name}/{s}", "dataset": "phantom", "patient": s, "group": g}
        for s, g in zip(studies, ("HCM", "NOR"), strict=True)
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": entry[:1], "test": entry}))
    out = tmp_path / "eval"
    result = run_bundle(
        "evaluate",
        [*EVALUATE, "evaluate_acdc.json"],
        "--datalist_file",
        str(datalist),
        "--data_root",
        str(phantom_studies.parent),
        "--split",
        "test",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_rows(out / "metrics.csv")
    assert {(r["study"], r["group"]) for r in rows} == {
        (f"phantom_{s}", g) for s, g in zip(studies, ("HCM", "NOR"), strict=True)
    }
    summary = json.loads((out / "summary.json").read_text())
    assert {g: b["studies"] for g, b in summary["groups"].items()} == {"HCM": 1, "NOR": 1}
    hcm = summary["groups"]["HCM"]["metrics"]["model"]["ES"]["whole"]["mean"]["dice_2d"]
    expected = [
        float(r["dice_2d"])
        for r in rows
        if r["group"] == "HCM"
        and (r["method"], r["phase"], r["region"], r["class"]) == ("model", "ES", "whole", "mean")
    ]
    assert hcm == pytest.approx(expected[0], abs=1e-4)
    assert "| HCM (1) | ES | copy_ed |" in result.stdout and "| all (2) | ED | model |" in result.stdout
    hcm_ef = summary["groups"]["HCM"]["agreement"]["model"]["lv_ef_percent"]
    function = read_rows(out / "function.csv")
    expected_ef = [
        float(r["difference"])
        for r in function
        if r["group"] == "HCM" and (r["method"], r["quantity"]) == ("model", "lv_ef_percent")
    ]
    assert hcm_ef["n"] == 1 and hcm_ef["bias"] == pytest.approx(expected_ef[0], abs=1e-4)
    report = subprocess.run(
        [sys.executable, "-m", "scripts.metrics.report", str(out / "summary.json")],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| HCM (1) | copy_ed |" in report.stdout and "| all (2) | model |" in report.stdout  # agreement table
