"""A folder of studies through ``python -m monai.bundle run inference``: a bad study does not stop the good ones
(``--on_error continue``) unless ``--on_error stop``; ``--skip_done true`` reruns only what is not finished."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import run_bundle
from scripts.data import write_phantom_studies

pytestmark = pytest.mark.slow

OUTPUTS = ["cardiac_function.json", "label_4d.nii.gz", "volumes.csv"]
"""What a finished study has with ``--clinical_pictures false``."""


def phantoms(folder: Path, names: list[str], seed: int = 7000) -> None:
    """Small phantom studies (96 x 96, 5 slices, 6 phases) named ``names``."""
    write_phantom_studies(
        str(folder / ".src"), num_studies=len(names), seed=seed, image_size=(96, 96), num_slices=5, num_phases=6
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
    return run_bundle(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--clinical_pictures",
        "false",
        *flags,
    )


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
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "d_good"]
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
    assert {p: p.stat().st_mtime_ns for p in before} == before  # untouched
    assert sorted(p.name for p in (out / "f_new").iterdir()) == OUTPUTS


def test_on_error_stop_stops_at_the_first_bad_study(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    phantoms(data, ["a_good", "b_nan", "c_good"])
    with_nan(data / "b_nan")
    result = infer(data, out, "--on_error", "stop")
    assert result.returncode != 0
    assert result.stderr.rstrip().endswith(
        f"ERROR: {data / 'b_nan' / 'image.nii.gz'}: image contains NaN or Inf " "values; expected finite intensities."
    )
    assert sorted(p.name for p in out.iterdir()) == ["a_good"]  # nothing after the bad study
    assert "skipped as done" not in result.stdout  # no batch summary: the run stopped
