"""End-to-end runs through ``python -m monai.bundle run`` in a subprocess, as a user runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from dicom_writer import retag, write_cine_dicom
from helpers import BUNDLE, SHARED_DATA, run_bundle
from scripts.data import scan_cine_dicom, write_phantom_studies
from scripts.networks import build_cstm_from_checkpoint

pytestmark = pytest.mark.slow


def test_training_runs_and_checkpoints(tmp_path: Path) -> None:
    out, extra = tmp_path / "train", tmp_path / "extra"
    write_phantom_studies(str(extra), num_studies=1, seed=6100, image_size=(96, 96), num_slices=5, num_phases=6)
    result = run_bundle(
        "training",
        "train.json",
        "--demo_dir",
        str(tmp_path / "phantom"),
        "--demo_studies",
        "3",
        "--num_val",
        "1",
        "--max_epochs",
        "2",
        "--val_interval",
        "2",
        "--samples_per_study",
        "2",
        "--num_workers",
        "0",
        "--output_dir",
        str(out),
        "--extra_train_datasets",
        f"[{{'dataset_dir': {str(extra)!r}, 'weight': 0.5}}]",
        "--grad_clip_norm",
        "1.0",
        "--init_checkpoint",
        str(BUNDLE / "models" / "model_phantom.pt"),
        "--encoder_norm",
        "frozen_batch",
        "--flip_prob",
        "0.5",
        "--elastic_prob",
        "0.5",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "initial weights from" in result.stdout + result.stderr
    assert "val_mean_dice" in result.stdout
    assert all(f"val_dice_{phase}_{c}" in result.stdout for phase in ("ed", "es") for c in ("lv", "myo", "rv"))
    assert "train_loss:" in result.stdout  # per-iteration loss is logged
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert set(last) == {"model", "optimizer", "trainer", "best"}
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] == 2 * 3  # 2 epochs, 2 + 1 studies
    best = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert best["variant"] == "small" and best["roi"] == {"roi_size": 192, "roi_spacing": 0.9}
    assert best["training"]["recipe"] == "train.json" and best["training"]["params"]["grad_clip_norm"] == 1.0
    build_cstm_from_checkpoint(out / "model.pt").load_state_dict(best["model"])  # what inference.json builds


def test_inference_writes_4d_label_maps(phantom_studies: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_bundle("inference", "inference.json", "--dataset_dir", str(phantom_studies), "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for study in sorted(p for p in phantom_studies.iterdir() if p.is_dir()):
        source = nib.load(study / "image.nii.gz")
        pred = nib.load(out / study.name / "label_4d.nii.gz")
        assert pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine)
        labels = np.asarray(pred.dataobj)
        assert labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert str(out / study.name / "label_4d.nii.gz") in result.stdout  # the user is told where it went

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for flags in ([], ["--overwrite", "false"], ["--overwrite", "False"], ["--overwrite", "0"]):
        again = run_bundle(
            "inference", "inference.json", "--dataset_dir", str(phantom_studies), "--output_dir", str(out), *flags
        )
        assert again.returncode != 0, flags
        assert "label_4d.nii.gz: output file exists" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    bad = run_bundle(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(phantom_studies),
        "--output_dir",
        str(out),
        "--overwrite",
        "maybe",
    )
    assert bad.returncode != 0 and "ERROR: --overwrite: got 'maybe'; expected true or false." in bad.stderr


def test_boolean_flags_do_what_they_say(phantom_studies: Path, tmp_path: Path) -> None:
    """``--clinical_outputs false --quality_report false`` writes the label map alone; ``--amp true`` runs (bfloat16
    on a CPU); ``--overwrite true`` replaces the earlier result."""
    study = sorted(p for p in phantom_studies.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    result = run_bundle(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(study),
        "--output_dir",
        str(out),
        "--clinical_outputs",
        "false",
        "--quality_report",
        "off",
        "--amp",
        "true",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (out / study.name).iterdir()) == ["label_4d.nii.gz", "outputs.json"]
    result = run_bundle(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(study),
        "--output_dir",
        str(out),
        "--overwrite",
        "true",
        "--clinical_outputs",
        "True",
        "--clinical_pictures",
        "false",
        "--amp",
        "false",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (out / study.name).iterdir()) == [
        "cardiac_function.json",
        "label_4d.nii.gz",
        "outputs.json",
        "qc.csv",
        "qc.json",
        "report.md",
        "volumes.csv",
    ]


def test_inference_generates_demo_when_missing(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    result = run_bundle(
        "inference",
        "inference.json",
        "--demo_dir",
        str(demo),
        "--demo_studies",
        "1",
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (demo / "phantom_1000" / "image.nii.gz").is_file()
    assert (tmp_path / "out" / "phantom_1000" / "label_4d.nii.gz").is_file()


def test_inference_on_a_dicom_series_matches_its_nifti(phantom_studies: Path, tmp_path: Path) -> None:
    """The same phantom study as NIfTI and as a DICOM series (one series per slice, shuffled file names): the DICOM
    study is sorted back into (H, W, Z, T) and segmented like the NIfTI one."""
    source = sorted(p for p in phantom_studies.iterdir() if p.is_dir())[0]
    image = nib.load(source / "image.nii.gz")
    data = tmp_path / "data"
    shutil.copytree(source, data / "as_nifti")
    (data / "as_dicom").mkdir()
    for name in ("label_ed.nii.gz", "label_es.nii.gz", "info.json"):
        shutil.copy(source / name, data / "as_dicom" / name)
    files = write_cine_dicom(
        np.asarray(image.dataobj), image.affine, data / "as_dicom" / "dicom", series_per_slice=True
    )
    uids = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}  # one study, as a scanner's
    for f in files:
        retag(f, lambda ds: [setattr(ds, name, uid) for name, uid in uids.items()])
    result = run_bundle(
        "inference", "inference.json", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from_nifti, from_dicom = (nib.load(tmp_path / "out" / s / "label_4d.nii.gz") for s in ("as_nifti", "as_dicom"))
    np.testing.assert_allclose(from_dicom.affine, image.affine, atol=1e-4)
    agree = (np.asarray(from_dicom.dataobj) == np.asarray(from_nifti.dataobj)).mean()
    assert agree > 0.995, agree  # the DICOM pixels are uint16-quantised copies of the NIfTI ones
    # DICOM out for DICOM in: the SEG's frames, by referenced source instance, are the label map; no SEG for NIfTI
    assert not (tmp_path / "out" / "as_nifti" / "segmentation.dcm").exists()
    seg = hd.seg.segread(tmp_path / "out" / "as_dicom" / "segmentation.dcm")
    series = scan_cine_dicom(data / "as_dicom" / "dicom")
    instances = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for row in series.files for p in row]
    pixels = seg.get_pixels_by_source_instance(instances, combine_segments=True)  # (Z*T, H, W), z-major
    labels = pixels.reshape(*series.shape[2:], *series.shape[:2]).transpose(2, 3, 0, 1)  # (H, W, Z, T)
    np.testing.assert_array_equal(labels, np.asarray(from_dicom.dataobj))


@pytest.mark.skipif(not (SHARED_DATA / "acdc_dev" / "patient001").is_dir(), reason="../shared/data/acdc_dev absent")
def test_inference_on_a_real_acdc_study(tmp_path: Path) -> None:
    study = SHARED_DATA / "acdc_dev" / "patient001"
    result = run_bundle("inference", "inference.json", "--dataset_dir", str(study), "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    source = nib.load(study / "image.nii.gz")
    pred = nib.load(tmp_path / "patient001" / "label_4d.nii.gz")
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine)
    labels = np.asarray(pred.dataobj)
    ed_truth = np.asarray(nib.load(study / "label_ed.nii.gz").dataobj)
    labelled = [z for z in range(ed_truth.shape[2]) if ed_truth[:, :, z].any()]
    z_a = labelled[len(labelled) // 2]  # the default annotated frame is copied, not predicted
    np.testing.assert_array_equal(labels[:, :, z_a, 0], ed_truth[:, :, z_a])
    assert all((labels[..., t] == 3).any() for t in range(labels.shape[3]))  # the LV is found at every phase
