"""A folder of studies through ``python -m monai.bundle run inference``: a bad study does not stop the good ones
(``--on_error continue``) unless ``--on_error stop``; ``--skip_done true`` reruns only what is not finished, also after
the run was killed; ``cohort.csv`` lists every study."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_writer import retag, write_cine_dicom
from helpers import kill_bundle_at, run_bundle
from scripts.data import MANIFEST_FILE, SaveStudyLabeld, write_phantom_studies
from scripts.metrics import CardiacOutputsd, QualityReportd

pytestmark = pytest.mark.slow

OUTPUTS = sorted(
    [
        MANIFEST_FILE,
        *(
            p.name
            for w in (
                SaveStudyLabeld("pred", "."),
                CardiacOutputsd("pred", ".", pictures=False),
                QualityReportd("pred", "."),
            )
            for p in w.output_files("s")
        ),
    ]
)
"""What a finished study has with ``--clinical_pictures false`` (NIfTI input: no DICOM SEG), and its record."""


def phantoms(folder: Path, names: list[str], seed: int = 7000, num_slices: int = 5, num_phases: int = 6) -> None:
    """Small phantom studies (96 x 96, 5 slices, 6 phases) named ``names``."""
    write_phantom_studies(
        str(folder / ".src"),
        num_studies=len(names),
        seed=seed,
        image_size=(96, 96),
        num_slices=num_slices,
        num_phases=num_phases,
    )
    for i, name in enumerate(names):
        shutil.move(folder / ".src" / f"phantom_{seed + i:03d}", folder / name)
    shutil.rmtree(folder / ".src")


def with_nan(study: Path) -> None:
    """Make the image hold a NaN: found only when the study is loaded, during the run."""
    img = nib.load(study / "image.nii.gz")
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), study / "image.nii.gz")


def infer(data: Path, out: Path, *flags: str):
    return run_bundle("inference", "inference.json", *inference_flags(data, out, *flags))


def inference_flags(data: Path, out: Path, *flags: str) -> list[str]:
    return ["--dataset_dir", str(data), "--output_dir", str(out), "--clinical_pictures", "false", *flags]


def read_cohort(out: Path) -> dict[str, dict[str, str]]:
    """``<out>/cohort.csv`` by study."""
    with open(out / "cohort.csv", newline="") as f:
        return {row["study"]: row for row in csv.DictReader(f)}


def reported_ef(out: Path, study: str) -> str:
    """The LV EF of ``cardiac_function.json``, as the CSV writes it."""
    return str(json.loads((out / study / "cardiac_function.json").read_text())["lv"]["ef_percent"])


def test_bad_studies_are_reported_and_the_good_ones_processed(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    phantoms(data, ["a_good", "b_corrupt", "c_nan", "d_good"])
    (data / "b_corrupt" / "image.nii.gz").write_bytes(b"\x1f\x8b not really gzip" * 50)
    with_nan(data / "c_nan")
    shutil.copytree(data / "a_good", data / "e_unzipped")
    nib.save(nib.load(data / "e_unzipped" / "image.nii.gz"), data / "e_unzipped" / "image.nii")
    (data / "e_unzipped" / "image.nii.gz").unlink()
    shutil.copytree(data / "a_good", data / ".snapshot")  # hidden: not a study

    result = infer(data, out)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "cohort.csv", "d_good"]
    assert all(sorted(p.name for p in (out / s).iterdir()) == OUTPUTS for s in ("a_good", "d_good"))
    first_write = log.index("4D label map written")
    for name in ("b_corrupt", "e_unzipped"):  # listed up front, before any study is processed
        assert log.index(f"bad study {data / name}: ") < first_write, name
    assert f"study {data / 'c_nan'} failed: image.nii.gz: image contains NaN or Inf values" in log
    assert "2 processed, 0 skipped as done, 3 failed" in log
    for name in ("b_corrupt", "c_nan", "e_unzipped"):
        assert f"failed: {data / name}: " in log, name
    assert f"ERROR: {data}: 3 of 5 studies failed (b_corrupt, c_nan, e_unzipped)" in result.stderr
    assert ".snapshot" not in log
    cohort = read_cohort(out)  # written although the run failed: every study, with its problem or its numbers
    assert {s: r["status"] for s, r in cohort.items()} == {
        "a_good": "processed",
        "b_corrupt": "failed",
        "c_nan": "failed",
        "d_good": "processed",
        "e_unzipped": "failed",
    }
    assert cohort["c_nan"]["error"] == "image.nii.gz: image contains NaN or Inf values; expected finite intensities."
    assert cohort["c_nan"]["lv_ef_percent"] == "" and "not a study" in cohort["e_unzipped"]["error"]
    for name in ("a_good", "d_good"):
        assert cohort[name]["lv_ef_percent"] == reported_ef(out, name) != "", name
        assert float(cohort[name]["inference_s"]) > 0 and int(cohort[name]["frames"]) == 30, name

    # rerun: the bad studies fixed (removed), one new study; the finished ones are left alone
    for name in ("b_corrupt", "c_nan", "e_unzipped"):
        shutil.rmtree(data / name)
    phantoms(data, ["f_new"], seed=7100)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = infer(data, out)
    assert again.returncode != 0 and "label_4d.nii.gz: output file exists" in again.stderr  # not without the flag
    result = infer(data, out, "--skip_done", "true")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "a_good: skipped, done already" in log and "d_good: skipped, done already" in log
    assert "1 processed, 2 skipped as done, 0 failed" in log
    before.pop(out / "cohort.csv")  # the summary, rewritten; the studies' files are untouched
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted(p.name for p in (out / "f_new").iterdir()) == OUTPUTS
    again = read_cohort(out)  # the finished studies read back from their files, beside the new one
    assert {s: r["status"] for s, r in again.items()} == {
        "a_good": "skipped_done",
        "d_good": "skipped_done",
        "f_new": "processed",
    }
    for name in ("a_good", "d_good"):
        timing = ("frames", "load_s", "inference_s", "postprocessing_s", "fps")
        assert {k: v for k, v in again[name].items() if k not in timing} == {
            **{k: v for k, v in cohort[name].items() if k not in timing},
            "status": "skipped_done",
        }
        assert again[name]["inference_s"] == "", name  # not timed: not processed in this run
    assert again["f_new"]["lv_ef_percent"] == reported_ef(out, "f_new")


def test_a_killed_cohort_run_resumes_without_redoing_finished_studies(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    names = ["s1", "s2", "s3"]
    phantoms(data, names, seed=7200, num_slices=4, num_phases=4)
    # killed when s1 is finished and s2 is being loaded
    kill_bundle_at(
        "study 1/3 (s1): done; elapsed ",
        "inference",
        "inference.json",
        *inference_flags(data, out, "--progress", "true"),
    )
    assert sorted(p.name for p in out.iterdir()) == ["s1"] and not (out / "cohort.csv").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "s1").iterdir()}

    result = infer(data, out, "--skip_done", "true", "--progress", "true")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "s1: skipped, done already" in log and "1 processed" not in log
    propagated = re.findall(r" - (\w+): 16 frames, load ", log)  # StudyTimer: one line per segmented study
    assert propagated == ["s2", "s3"], propagated
    assert [line.split(";")[0] for line in re.findall(r"study \d/\d \(\w+\): \w+;", log)] == [
        "study 1/2 (s2): done",
        "study 2/2 (s3): done",
    ]
    assert "2 processed, 1 skipped as done, 0 failed" in log
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # s1 untouched
    cohort = read_cohort(out)
    assert {s: r["status"] for s, r in cohort.items()} == {"s1": "skipped_done", "s2": "processed", "s3": "processed"}
    assert all(cohort[s]["lv_ef_percent"] == reported_ef(out, s) for s in names)


def test_on_error_stop_stops_at_the_first_bad_study(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    phantoms(data, ["a_good", "b_nan", "c_good"])
    with_nan(data / "b_nan")
    result = infer(data, out, "--on_error", "stop")
    assert result.returncode != 0
    assert result.stderr.rstrip().endswith(
        f"ERROR: {data / 'b_nan' / 'image.nii.gz'}: image contains NaN or Inf " "values; expected finite intensities."
    )
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "cohort.csv"]  # nothing after the bad study
    assert "skipped as done" not in result.stdout  # no batch summary: the run stopped
    assert {s: r["status"] for s, r in read_cohort(out).items()} == {  # but the table of what became of each
        "a_good": "processed",
        "b_nan": "failed",
        "c_good": "not_run",
    }


def test_a_failed_overwrite_rerun_keeps_the_earlier_outputs_whole(tmp_path: Path) -> None:
    """Issue 31: a rerun with --overwrite true that failed after label_4d.nii.gz (a DICOM file without
    FrameOfReferenceUID, which only the DICOM SEG needs) left the new label map beside the old report and SEG; a
    --skip_done rerun then took the mixed set as done."""
    data, out = tmp_path / "data", tmp_path / "out"
    phantoms(data, ["s1"], seed=7300, num_slices=4, num_phases=4)
    image = nib.load(data / "s1" / "image.nii.gz")
    files = write_cine_dicom(np.asarray(image.dataobj), image.affine, data / "s1" / "dicom")
    uids = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}
    for f in files:
        retag(f, lambda ds: [setattr(ds, name, uid) for name, uid in uids.items()])
    (data / "s1" / "image.nii.gz").unlink()
    first = infer(data, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in (out / "s1").iterdir()}
    assert {"segmentation.dcm", "label_4d.nii.gz", MANIFEST_FILE} <= set(before)

    retag(files[0], lambda ds: ds.__delattr__("FrameOfReferenceUID"))
    rerun = infer(data, out, "--overwrite", "true", "--skip_done", "true")
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode != 0, log[-3000:]
    assert f"s1: not done, inputs changed since its outputs were made: dicom/{files[0].name} changed" in log
    assert f"dicom/{files[0].name}: DICOM image without FrameOfReferenceUID" in log
    assert "4D label map written" in log  # it failed after the label map ...
    assert {p.name: p.read_bytes() for p in (out / "s1").iterdir()} == before  # ... which left the old set whole
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv", "s1"]  # and no staging folder
    assert read_cohort(out)["s1"]["status"] == "failed"
