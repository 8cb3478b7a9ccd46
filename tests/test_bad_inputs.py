"""Bad inputs (SPEC "Bad input"): one short error that names the file (or config key / argument) and the problem.

Each row of :data:`CASES` builds one bad input from a tiny synthetic study in ``tmp_path`` and returns the action that
must fail: mostly the inference config's loading path, run in-process as ``bundle run inference`` runs it
(``check_outputs``, which lists the studies, then ``preprocessing`` on every study), else a network constructor or
function. The test asserts a ``ValueError`` (``CSTMInputError`` for files) raised from the bundle's own code, not from
deep inside torch/nibabel/MONAI, whose one-line message contains the expected text. Three rows also run through
``python -m monai.bundle run`` in a subprocess. A study of one slice (Z = 1) or one phase (T = 1) is not an error.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from dicom_writer import retag, write_cine_dicom
from helpers import BUNDLE, TINY_CSTM, run_bundle
from scripts.data import LoadStudyd
from scripts.errors import CSTMInputError, check_overrides, error_summary, install_error_summary
from scripts.inferers import Propagation4DInferer
from scripts.io import save_nifti
from scripts.networks import build_cstm, plm_readout, save_weights, weights_record

INFERENCE_CONFIG = BUNDLE / "configs" / "inference.json"
SCRIPTS = BUNDLE / "scripts"
SHAPE = (32, 32, 4, 5)  # (H, W, Z, T)
INFO = {"ed": 0, "es": 2}


# ---------------------------------------------------------------- synthetic studies


def heart_labels(h: int, w: int, z: int) -> np.ndarray:
    """(H, W, Z) uint8: LV disk (3) in a Myo ring (2), RV (1) beside it, on every slice."""
    rows, cols = np.mgrid[:h, :w]
    r = np.hypot(rows - h / 2, cols - w / 2)
    frame = np.where(r < h / 8, 3, np.where(r < h / 5, 2, 0)).astype(np.uint8)
    frame[(np.hypot(rows - h / 2, cols - w / 2 + h / 3.5) < h / 7) & (frame == 0)] = 1
    return np.repeat(frame[:, :, None], z, axis=2)


def heart_image(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """(H, W, Z, T) float32: the labels as intensities plus noise."""
    labels = heart_labels(*shape[:3]).astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 0.1, shape).astype(np.float32)
    return labels[..., None] * np.float32(0.3) + noise


def save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_study(
    study: Path,
    shape: tuple[int, ...] = SHAPE,
    image: np.ndarray | None = None,
    info: dict | None = INFO,
    label_ed: bool = True,
) -> Path:
    """``<study>/image.nii.gz``, ``label_ed.nii.gz``, ``label_es.nii.gz``, ``info.json`` (SPEC "Interfaces")."""
    save(heart_image(shape) if image is None else image, study / "image.nii.gz")
    if label_ed:
        save(heart_labels(*shape[:3]), study / "label_ed.nii.gz")
        save(heart_labels(*shape[:3]), study / "label_es.nii.gz")
    if info is not None:
        (study / "info.json").write_text(json.dumps(info))
    return study


def inference_parser(dataset_dir: Path, output_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update(
        {"bundle_root": str(BUNDLE), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir), **overrides}
    )
    return parser


@dataclass
class Inference:
    """The loading path of ``inference.json`` in-process: ``check_settings`` (output folder, cache folder, device),
    ``check_outputs`` (lists and screens the studies), then ``preprocessing`` on each study, in the order
    ``bundle run inference`` runs them. No network is built."""

    dataset_dir: Path
    output_dir: Path
    overrides: dict = field(default_factory=dict)

    def __call__(self) -> list[dict]:
        parser = inference_parser(self.dataset_dir, self.output_dir, **self.overrides)
        parser.get_parsed_content("check_settings")
        parser.get_parsed_content("check_outputs")
        preprocessing = parser.get_parsed_content("preprocessing")
        return [preprocessing(item) for item in parser.get_parsed_content("datalist")]


def inference_on(tmp: Path, output_dir: Path | None = None) -> Inference:
    return Inference(tmp / "data", output_dir or tmp / "out")


def study_with(tmp: Path, **kwargs) -> Inference:
    write_study(tmp / "data" / "study", **kwargs)
    return inference_on(tmp)


def network_from_config(tmp: Path, **overrides) -> Callable[[], object]:
    """Build ``network_def`` of train.json with named-id overrides, as ``--patch_size 5`` would (inference.json
    builds what its checkpoint records: see the ``checkpoint_*`` rows)."""

    def build() -> object:
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "train.json"))
        parser.update({"variant": "small", **overrides})
        return parser.get_parsed_content("network_def")

    return build


# ---------------------------------------------------------------- builders: image


def image_3d(tmp: Path) -> Inference:
    return study_with(tmp, image=heart_image()[..., 0])


def image_5d(tmp: Path) -> Inference:
    return study_with(tmp, image=np.stack([heart_image()] * 2, axis=-1))


def image_nan(tmp: Path) -> Inference:
    image = heart_image()
    image[3, 4, 1, 2] = np.nan
    return study_with(tmp, image=image)


def with_image_header(
    tmp: Path, affine: np.ndarray | None = None, units: str | None = None, image: np.ndarray | None = None
) -> Inference:
    """A study whose image has the given affine, NIfTI spatial unit or pixel array."""
    action = study_with(tmp)
    path = tmp / "data" / "study" / "image.nii.gz"
    img = nib.Nifti1Image(heart_image() if image is None else image, np.eye(4))
    if affine is not None:  # as the sform (a qform cannot hold a zero spacing)
        img.set_qform(None, code=0)
        img.set_sform(affine, code=1)
    if units:
        img.header.set_xyzt_units(units)
    nib.save(img, str(path))
    return action


def image_zero_spacing(tmp: Path) -> Inference:
    return with_image_header(tmp, affine=np.diag([1.0, 1.0, 0.0, 1.0]))


def image_in_metres(tmp: Path) -> Inference:
    return with_image_header(tmp, units="meter")


def image_spacing_in_metres(tmp: Path) -> Inference:
    return with_image_header(tmp, affine=np.diag([0.0014, 0.0014, 0.008, 1.0]))  # mm values written as metres


def image_slice_axis_second(tmp: Path) -> Inference:
    return with_image_header(tmp, affine=np.diag([1.4, 5.0, 1.4, 1.0]))  # (H, Z, W, T): slices along the 2nd axis


def image_complex(tmp: Path) -> Inference:
    return with_image_header(tmp, image=heart_image().astype(np.complex64))


def image_inf(tmp: Path) -> Inference:
    image = heart_image()
    image[3, 4, 1, 2] = np.inf
    return study_with(tmp, image=image)


def image_constant(tmp: Path) -> Inference:
    return study_with(tmp, image=np.full(SHAPE, 7.0, dtype=np.float32))


def image_truncated(tmp: Path) -> Inference:
    action = study_with(tmp)
    path = tmp / "data" / "study" / "image.nii.gz"
    path.write_bytes(path.read_bytes()[:-2000])
    return action


def image_garbage(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "data" / "study" / "image.nii.gz").write_bytes(np.random.default_rng(1).bytes(5000))
    return action


def image_not_nifti(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "data" / "study" / "image.nii.gz").write_bytes(gzip.compress(b"patient,ed,es\n001,0,9\n" * 50))
    return action


def dicom_study(tmp: Path) -> tuple[Path, list[Path]]:
    """A study whose image is the cine DICOM series ``study/dicom`` (no image.nii.gz): the folder and its files."""
    study = write_study(tmp / "data" / "study")
    (study / "image.nii.gz").unlink()
    return study / "dicom", write_cine_dicom(heart_image(), np.eye(4), study / "dicom")


def dicom_mixed_series(tmp: Path) -> Inference:
    series, _ = dicom_study(tmp)
    write_cine_dicom(np.ones((16, 16, 1, 1), np.float32), np.eye(4), series / "localiser", description="loc")
    return inference_on(tmp)


def dicom_duplicate_file(tmp: Path) -> Inference:
    series, files = dicom_study(tmp)
    shutil.copy(files[0], series / "IM_copy")
    return inference_on(tmp)


def dicom_series_copied_twice(tmp: Path) -> Inference:
    """Every phase twice: read naively, a study of 10 phases whose 'cycle' repeats."""
    series, _ = dicom_study(tmp)
    shutil.copytree(series, series / "copy")
    return inference_on(tmp)


def dicom_repeat_acquisition(tmp: Path) -> Inference:
    """The cine acquired again (another series, the same geometry) beside the first."""
    series, _ = dicom_study(tmp)
    write_cine_dicom(heart_image(seed=1), np.eye(4), series / "repeat", seed=1)
    return inference_on(tmp)


def dicom_trigger_time_missing(tmp: Path) -> Inference:
    """One image without TriggerTime: its InstanceNumber (1..5) would be sorted among trigger times in ms."""
    _, files = dicom_study(tmp)
    retag(files[0], lambda ds: ds.pop("TriggerTime"))
    return inference_on(tmp)


def dicom_multi_frame(tmp: Path) -> Inference:
    def two_frames(ds: pydicom.Dataset) -> None:
        ds.NumberOfFrames, ds.PixelData = 2, ds.PixelData * 2

    _, files = dicom_study(tmp)
    retag(files[0], two_frames)
    return inference_on(tmp)


def dicom_pixel_data_truncated(tmp: Path) -> Inference:
    """Header intact (the study passes the up-front scan), pixel data cut short: read by LoadImaged, where MONAI
    tries its other readers when one fails (its PydicomReader read the folder and raised a numpy error)."""
    _, files = dicom_study(tmp)
    files[0].write_bytes(files[0].read_bytes()[:-500])
    return inference_on(tmp)


# ---------------------------------------------------------------- builders: dataset and output folders


def dataset_missing(tmp: Path) -> Inference:
    return inference_on(tmp)  # tmp/data is never created


def dataset_without_studies(tmp: Path) -> Inference:
    (tmp / "data" / "notes").mkdir(parents=True)
    return inference_on(tmp)


def study_name_not_utf8(tmp: Path) -> Inference:
    write_study(tmp / "data" / os.fsdecode(b"bad\xffname"))  # a Latin-1 name, as os.listdir returns it
    return inference_on(tmp)


def study_folder_name_not_utf8(tmp: Path) -> Inference:
    study = write_study(tmp / "data" / os.fsdecode(b"bad\xffname"))
    return Inference(study, tmp / "out")  # --dataset_dir the study itself


def study_without_image(tmp: Path) -> Inference:
    write_study(tmp / "data")
    (tmp / "data" / "image.nii.gz").unlink()
    return inference_on(tmp)


def output_exists(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "out" / "study").mkdir(parents=True)
    (tmp / "out" / "study" / "label_4d.nii.gz").write_bytes(b"an earlier result")
    return action


def output_disk_full(tmp: Path) -> Callable[[], object]:
    """The disk fills up halfway through writing a label map: nibabel writes part of the file, then ENOSPC."""

    def half_written(img: nib.Nifti1Image, filename: str) -> None:
        Path(filename).write_bytes(b"\x1f\x8b half a label map")
        raise OSError(errno.ENOSPC, "No space left on device")

    def write() -> None:
        with mock.patch.object(nib, "save", half_written):
            save_nifti(heart_labels(*SHAPE[:3]), np.eye(4), tmp / "out" / "study" / "label_4d.nii.gz")

    return write


def output_not_writable(tmp: Path) -> Inference:
    write_study(tmp / "data" / "study")
    (tmp / "file.txt").write_text("a file, not a folder")
    return inference_on(tmp, tmp / "file.txt" / "out")  # chmod does not stop root; a path under a file does


# ---------------------------------------------------------------- builders: annotation and info.json


def label_other_grid(tmp: Path) -> Inference:
    action = study_with(tmp)
    save(heart_labels(16, 16, 4), tmp / "data" / "study" / "label_ed.nii.gz")
    return action


def label_other_affine(tmp: Path) -> Inference:
    action = study_with(tmp)
    save(heart_labels(*SHAPE[:3]), tmp / "data" / "study" / "label_ed.nii.gz", np.diag([1.5, 1.5, 8.0, 1.0]))
    return action


def label_empty(tmp: Path) -> Inference:
    action = study_with(tmp)
    save(np.zeros(SHAPE[:3], np.uint8), tmp / "data" / "study" / "label_ed.nii.gz")
    return action


def label_values_outside(tmp: Path) -> Inference:
    action = study_with(tmp)
    labels = heart_labels(*SHAPE[:3])
    labels[0, 0, 0] = 7
    save(labels, tmp / "data" / "study" / "label_ed.nii.gz")
    return action


def label_truncated(tmp: Path) -> Inference:
    action = study_with(tmp)
    path = tmp / "data" / "study" / "label_ed.nii.gz"
    path.write_bytes(path.read_bytes()[:-30])  # header intact, data cut short
    return action


def annotation_missing(tmp: Path) -> Inference:
    action = study_with(tmp, label_ed=False)
    action.overrides["annotation"] = "required"
    return action


def initializer_missing(tmp: Path) -> Inference:
    action = study_with(tmp, label_ed=False)  # --annotation if_missing (the default): the initialiser is needed
    action.overrides["initializer_checkpoint"] = str(tmp / "init.pt")
    return action


def annotation_without_phase(tmp: Path) -> Inference:
    action = study_with(tmp, label_ed=False)
    save(heart_labels(*SHAPE[:3]), tmp / "data" / "study" / "annotation.nii.gz")
    return action


def info_missing(tmp: Path) -> Inference:
    return study_with(tmp, info=None)


def info_not_json(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "data" / "study" / "info.json").write_text("ed: 0\nes: 2\n")
    return action


def info_ed_not_int(tmp: Path) -> Inference:
    return study_with(tmp, info={"ed": "0", "es": 2})


def info_ed_out_of_range(tmp: Path) -> Inference:
    return study_with(tmp, info={"ed": 99, "es": 2})


def info_slices_out_of_range(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "annotated_slices_ed": [1, 9]})


def info_misspelt_key(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "annotated_slice_ed": [1, 2]})


def info_negative_phase(tmp: Path) -> Inference:
    return study_with(tmp, info={"ed": -1, "es": 2})  # never an index from the end


def info_empty_slice_list(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "annotated_slices_ed": []})


def info_not_utf8(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "data" / "study" / "info.json").write_bytes('{"ed": 0, "es": 2, "note": "gr\xfc\xdfe"}'.encode("latin-1"))
    return action


def training_study(tmp: Path, info: dict) -> Callable[[], object]:
    write_study(tmp / "study", info=info)
    load = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            LoadStudyd("image", with_labels=True),
        ]
    )
    item = {"image": str(tmp / "study" / "image.nii.gz"), "study": "study", "study_dir": str(tmp / "study")}
    return lambda: load(item)


def ed_equals_es_training(tmp: Path) -> Callable[[], object]:
    return training_study(tmp, {"ed": 2, "es": 2})


def es_out_of_range_training(tmp: Path) -> Callable[[], object]:
    """Training/evaluation load the ED and ES labels too (LoadStudyd with_labels)."""
    return training_study(tmp, {"ed": 0, "es": 5})


def info_es_beyond_last_phase(tmp: Path) -> Inference:
    """Read only by the clinical outputs, after segmentation: checked up front all the same."""
    return study_with(tmp, info={"ed": 0, "es": 5})


def info_height_string(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "height_cm": "180 cm"})


def info_height_negative(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "height_cm": -175})


def info_weight_zero(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "weight_kg": 0})


def info_weight_nan(tmp: Path) -> Inference:
    action = study_with(tmp)
    (tmp / "data" / "study" / "info.json").write_text('{"ed": 0, "es": 2, "weight_kg": NaN}')  # Python's json reads it
    return action


def info_height_in_metres(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "height_cm": 1.75, "weight_kg": 80})


def info_height_in_inches(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "height_cm": 69, "weight_kg": 80})  # BMI 168


def info_labels_other_order(tmp: Path) -> Inference:
    """M&Ms numbers its classes 1 LV, 2 Myo, 3 RV: read here as 1 RV, the labels would swap ventricles."""
    return study_with(tmp, info={**INFO, "labels": {"0": "background", "1": "LV", "2": "MYO", "3": "RV"}})


def info_labels_other_structure(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "labels": {"0": "background", "1": "left atrium"}})  # Decathlon Task02


def info_base_first_string(tmp: Path) -> Inference:
    return study_with(tmp, info={**INFO, "base_first": "false"})  # a non-empty string is true


def annotation_class_not_declared(tmp: Path) -> Inference:
    action = study_with(tmp, label_ed=False, info={"ed": 0, "es": 2, "annotated_phase": 0, "labels": [2, 3]})
    save(heart_labels(*SHAPE[:3]), tmp / "data" / "study" / "annotation.nii.gz")  # draws RV too
    return action


def image_pixdim_zero(tmp: Path) -> Inference:
    """No qform/sform and pixdim[2] = 0 in the file: nibabel reads the zero as 1 (a 1 mm pixel), silently."""
    action = study_with(tmp)
    path = tmp / "data" / "study" / "image.nii.gz"
    img = nib.Nifti1Image(heart_image(), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(path))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[84:88] = np.float32(0).tobytes()  # pixdim[2] (nibabel fixes it on save, so the bytes are written here)
    path.write_bytes(gzip.compress(bytes(raw)))
    return action


def with_setting(tmp: Path, **overrides) -> Inference:
    action = study_with(tmp)
    action.overrides.update(overrides)
    return action


def cache_dir_is_file(tmp: Path) -> Inference:
    (tmp / "cache").write_text("not a folder")
    return with_setting(tmp, cache_dir=str(tmp / "cache"))


def cache_dir_under_file(tmp: Path) -> Inference:
    (tmp / "file.txt").write_text("a file, not a folder")
    return with_setting(tmp, cache_dir=str(tmp / "file.txt" / "cache"))


def cache_dir_folder_for_a_file(tmp: Path) -> Inference:
    (tmp / "cache" / "0123456789abcdef0123456789abcdef.pt").mkdir(parents=True)
    return with_setting(tmp, cache_dir=str(tmp / "cache"))


def device_cuda_without_cuda(tmp: Path) -> Callable[[], object]:
    action = with_setting(tmp, device="cuda:0")

    def run() -> object:
        with mock.patch("torch.cuda.is_available", lambda: False):
            return action()

    return run


def device_unknown(tmp: Path) -> Inference:
    return with_setting(tmp, device="gpu")


# ---------------------------------------------------------------- builders: network arguments and checkpoint


def top_k_above_memory_patches(tmp: Path) -> Callable[[], object]:
    query, memory_key, memory_value = torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 1, 4, 4), torch.zeros(1, 8, 1, 4, 4)
    return lambda: plm_readout(query, memory_key, memory_value, patch_size=2, top_k=100)  # 9 memory patches


def top_k_zero(tmp: Path) -> Callable[[], object]:
    return network_from_config(tmp, top_k=0)


def patch_size_odd(tmp: Path) -> Callable[[], object]:
    return network_from_config(tmp, patch_size=5)


def patch_size_below_2(tmp: Path) -> Callable[[], object]:
    return network_from_config(tmp, patch_size=0)


def matching_mode_unknown(tmp: Path) -> Callable[[], object]:
    return network_from_config(tmp, matching_mode="sparse")


def matching_strides_unknown(tmp: Path) -> Callable[[], object]:
    return network_from_config(tmp, matching_strides=[4])


def override_mistyped(tmp: Path) -> Callable[[], object]:
    argv = ["run", "training", "--config_file", str(BUNDLE / "configs" / "train.json"), "--max_epoch", "5"]
    return lambda: check_overrides(argv)


def override_unknown_section(tmp: Path) -> Callable[[], object]:
    argv = [
        "run",
        "inference",
        "--config_file",
        f"[{str(INFERENCE_CONFIG)!r}]",
        "--inferer#max_batch",
        "4",
        "--preprocess#transforms",
        "[]",
    ]
    return lambda: check_overrides(argv)


def variant_unknown(tmp: Path) -> Callable[[], object]:
    return lambda: build_cstm("tiny")


def annotated_slice_outside_study(tmp: Path) -> Callable[[], object]:
    inferer, network = Propagation4DInferer(roi_size=None), build_cstm("small").eval()
    image, annotation = torch.rand(1, 1, 96, 96, 4, 5), torch.zeros(1, 96, 96, dtype=torch.uint8)
    return lambda: inferer(image, network, annotation, annotation_slice=9, annotation_phase=0)


def annotation_values_above_classes(tmp: Path) -> Callable[[], object]:
    inferer, network = Propagation4DInferer(roi_size=None), build_cstm("small").eval()
    image, annotation = torch.rand(1, 1, 96, 96, 2, 2), torch.full((1, 96, 96), 7, dtype=torch.uint8)
    return lambda: inferer(image, network, annotation, annotation_slice=0, annotation_phase=0)


def load_checkpoint(tmp: Path, **overrides) -> Callable[[], object]:
    """Build inference.json's network from ``tmp/model.pt`` and load it, as the evaluator does when it starts."""
    parser = inference_parser(
        tmp, tmp / "out", checkpoint=str(tmp / "model.pt"), device="$torch.device('cpu')", **overrides
    )
    return lambda: parser.get_parsed_content("checkpoint_loader")(Engine(lambda engine, batch: None))


def checkpoint_corrupt(tmp: Path) -> Callable[[], object]:
    (tmp / "model.pt").write_bytes(b"not a checkpoint")
    return load_checkpoint(tmp)


def checkpoint_bare_state_dict(tmp: Path) -> Callable[[], object]:
    torch.save(build_cstm("full").state_dict(), tmp / "model.pt")
    return load_checkpoint(tmp)


def checkpoint_other_variant(tmp: Path) -> Callable[[], object]:
    torch.save(build_cstm("full").state_dict(), tmp / "model.pt")  # records nothing: --variant small is believed
    return load_checkpoint(tmp, variant="small")


def checkpoint_contradicts_variant(tmp: Path) -> Callable[[], object]:
    network = build_cstm("small", **TINY_CSTM)
    save_weights(network, tmp / "model.pt", weights_record(network, "tiny", 96, 1.8))
    return load_checkpoint(tmp, variant="small")


def checkpoint_contradicts_matching(tmp: Path) -> Callable[[], object]:
    network = build_cstm("small", **TINY_CSTM)
    save_weights(network, tmp / "model.pt", weights_record(network, "tiny", 96, 1.8))
    return load_checkpoint(tmp, matching_mode="dense")


CASES = [
    # (case id, builder, expected text: the file (or argument) and the problem)
    ("image_3d", image_3d, "image.nii.gz: image has shape (32, 32, 4); expected a 4D image"),
    ("image_5d", image_5d, "image.nii.gz: image has shape (32, 32, 4, 5, 2); expected a 4D image"),
    ("image_nan", image_nan, "image.nii.gz: image contains NaN or Inf values"),
    (
        "image_zero_spacing",
        image_zero_spacing,
        "image.nii.gz: voxel spacing [1.0, 1.0, 0.0] mm (affine not invertible)",
    ),
    ("image_in_metres", image_in_metres, "image.nii.gz: spatial unit is 'meter' (NIfTI xyzt_units); expected mm"),
    ("image_spacing_in_metres", image_spacing_in_metres, "image.nii.gz: in-plane spacing 0.0014 x 0.0014 mm"),
    (
        "image_slice_axis_second",
        image_slice_axis_second,
        "image.nii.gz: in-plane spacing 1.4 x 5 mm: the slice axis seems not to be the third",
    ),
    ("image_complex", image_complex, "image.nii.gz: pixels of type complex64 (complex or RGB)"),
    ("image_inf", image_inf, "image.nii.gz: image contains NaN or Inf values"),
    ("image_constant", image_constant, "image.nii.gz: image is constant (7.0)"),
    ("image_truncated", image_truncated, "image.nii.gz: file is truncated"),
    ("image_garbage", image_garbage, "image.nii.gz: cannot be read as NIfTI (not a gzip file)"),
    ("image_not_nifti", image_not_nifti, "image.nii.gz: cannot be read as NIfTI"),
    (
        "dicom_mixed_series",
        dicom_mixed_series,
        "study/dicom: mixed series: 2 different row counts among 21 images (series cine SAX, loc)",
    ),
    (
        "dicom_duplicate_file",
        dicom_duplicate_file,
        "study/dicom: duplicate frame: IM00004 and IM_copy have the same slice position (0.00 mm) and trigger time 0 ms",
    ),
    ("dicom_series_copied_twice", dicom_series_copied_twice, "study/dicom: duplicate frame: IM00004 and copy/IM00004"),
    (
        "dicom_repeat_acquisition",
        dicom_repeat_acquisition,
        "study/dicom: 2 acquisitions at slice position 0.00 mm (IM00004 and repeat/",
    ),
    (
        "dicom_trigger_time_missing",
        dicom_trigger_time_missing,
        "dicom/IM00004: DICOM image without TriggerTime, while 19 of the 20 images of the folder have one",
    ),
    ("dicom_multi_frame", dicom_multi_frame, "dicom/IM00004: multi-frame DICOM image (2 frames in one file)"),
    ("dicom_pixel_data_truncated", dicom_pixel_data_truncated, "dicom/IM00004: cannot read the DICOM pixel data"),
    ("dataset_missing", dataset_missing, "data: dataset folder does not exist"),
    (
        "dataset_without_studies",
        dataset_without_studies,
        "data: no study folder (a folder with image.nii.gz or dicom/) found",
    ),
    (
        "study_name_not_utf8",
        study_name_not_utf8,
        "data: no study folder (a folder with image.nii.gz or dicom/) found; sub-folder bad\udcffname is not a study",
    ),
    (
        "study_folder_name_not_utf8",
        study_folder_name_not_utf8,
        "bad\udcffname: folder name b'bad\\xffname' is not UTF-8 text, so it cannot name the study's outputs",
    ),
    ("study_without_image", study_without_image, "data/image.nii.gz: study image not found"),
    ("output_exists", output_exists, "study/label_4d.nii.gz: output file exists; expected a new --output_dir"),
    ("output_not_writable", output_not_writable, "file.txt/out: cannot create the output folder (Not a directory)"),
    ("output_disk_full", output_disk_full, "study/label_4d.nii.gz: disk is full, the file was not written"),
    ("label_other_grid", label_other_grid, "label_ed.nii.gz: label shape (16, 16, 4) is not on the image grid"),
    ("label_other_affine", label_other_affine, "label_ed.nii.gz: label affine differs from the image affine"),
    ("label_empty", label_empty, "label_ed.nii.gz: annotation is empty"),
    ("label_values_outside", label_values_outside, "label_ed.nii.gz: label values [0, 1, 2, 3, 7] outside [0, 1, 2"),
    ("label_truncated", label_truncated, "label_ed.nii.gz: cannot be read as NIfTI (Compressed file ended"),
    ("annotation_missing", annotation_missing, "study: no annotation: neither annotation.nii.gz nor label_ed.nii.gz"),
    ("initializer_missing", initializer_missing, "init.pt: no initialiser weights; expected models/init.pt"),
    ("annotation_without_phase", annotation_without_phase, "info.json: missing 'annotated_phase' for annotation.nii"),
    ("info_missing", info_missing, "info.json: missing 'ed' for label_ed.nii.gz"),
    ("info_not_json", info_not_json, "info.json: cannot be read as JSON"),
    ("info_ed_not_int", info_ed_not_int, "info.json: 'ed' is '0'; expected a 0-based integer phase"),
    ("info_ed_out_of_range", info_ed_out_of_range, "info.json: ed=99 is outside the 5 phases"),
    ("info_slices_out_of_range", info_slices_out_of_range, "info.json: 'annotated_slices_ed' lists slices [9] outside"),
    (
        "info_misspelt_key",
        info_misspelt_key,
        "info.json: unknown key 'annotated_slice_ed'; expected 'annotated_slices_ed' (the key this bundle reads).",
    ),
    ("info_negative_phase", info_negative_phase, "info.json: 'ed' is -1; expected a 0-based integer phase"),
    (
        "info_empty_slice_list",
        info_empty_slice_list,
        "info.json: 'annotated_slices_ed' is []; expected a non-empty list",
    ),
    ("info_not_utf8", info_not_utf8, "info.json: is not UTF-8 text"),
    (
        "ed_equals_es_training",
        ed_equals_es_training,
        "info.json: 'ed' and 'es' are both 2; expected the ED and ES phases",
    ),
    ("es_out_of_range_training", es_out_of_range_training, "info.json: es=5 is outside the 5 phases"),
    ("info_es_beyond_last_phase", info_es_beyond_last_phase, "info.json: es=5 is outside the 5 phases"),
    ("info_height_string", info_height_string, "info.json: 'height_cm' is '180 cm'; expected the patient's height"),
    ("info_height_negative", info_height_negative, "info.json: 'height_cm' is -175, outside 40-250 cm"),
    ("info_weight_zero", info_weight_zero, "info.json: 'weight_kg' is 0, outside 2-350 kg"),
    ("info_weight_nan", info_weight_nan, "info.json: 'weight_kg' is nan; expected the patient's weight in kg"),
    ("info_height_in_metres", info_height_in_metres, "info.json: 'height_cm' is 1.75, outside 40-250 cm"),
    (
        "info_height_in_inches",
        info_height_in_inches,
        "info.json: 'height_cm' 69 and 'weight_kg' 80 give a BMI of 168 kg/m², outside 10-80",
    ),
    (
        "info_labels_other_order",
        info_labels_other_order,
        "info.json: 'labels' names class 1 'LV', which is not RV here; expected label values 1 RV, 2 Myo, 3 LV",
    ),
    ("info_labels_other_structure", info_labels_other_structure, "info.json: 'labels' names class 1 'left atrium'"),
    ("info_base_first_string", info_base_first_string, "info.json: 'base_first' is 'false'; expected true or false"),
    ("annotation_class_not_declared", annotation_class_not_declared, "annotation.nii.gz: draws 1 RV, which"),
    ("image_pixdim_zero", image_pixdim_zero, "image.nii.gz: voxel size pixdim[1:4] = [1.0, 0.0, 1.0] in the NIfTI"),
    ("cache_dir_is_file", cache_dir_is_file, "cache: cache folder is a file; expected a folder (--cache_dir)"),
    ("cache_dir_under_file", cache_dir_under_file, "file.txt/cache: cannot create the cache folder (Not a directory)"),
    (
        "cache_dir_folder_for_a_file",
        cache_dir_folder_for_a_file,
        "cache/0123456789abcdef0123456789abcdef.pt: a folder where a cache file goes",
    ),
    ("device_cuda_without_cuda", device_cuda_without_cuda, "--device: got 'cuda:0', but"),
    ("device_unknown", device_unknown, "--device: got 'gpu'; expected cpu, cuda or cuda:N"),
    ("top_k_above_memory_patches", top_k_above_memory_patches, "top_k must be in [1, 9] (memory patches T*N), got 100"),
    ("top_k_zero", top_k_zero, "--top_k: got 0; expected an integer >= 1"),
    ("patch_size_odd", patch_size_odd, "patch_size must be even and >= 2, got 5"),
    ("patch_size_below_2", patch_size_below_2, "--patch_size: got 0; expected an integer >= 1"),
    ("matching_mode_unknown", matching_mode_unknown, "--matching_mode: got 'sparse'; expected one of plm, dense"),
    ("matching_strides_unknown", matching_strides_unknown, "--matching_strides: got [4]; expected a list of strides"),
    ("override_mistyped", override_mistyped, "--max_epoch: no such option in /"),
    ("override_unknown_section", override_unknown_section, "--preprocess#transforms: no such option in /"),
    ("variant_unknown", variant_unknown, "unknown CSTM variant 'tiny'"),
    ("annotated_slice_outside_study", annotated_slice_outside_study, "annotated frame (9, 0) lies outside a study"),
    ("annotation_values_above_classes", annotation_values_above_classes, "annotation values [7] outside 0..3"),
    ("checkpoint_corrupt", checkpoint_corrupt, "model.pt: cannot be read as a checkpoint"),
    (
        "checkpoint_bare_state_dict",
        checkpoint_bare_state_dict,
        "model.pt: is a bare state dict that records no architecture",
    ),
    ("checkpoint_other_variant", checkpoint_other_variant, "model.pt: does not fit the network"),
    (
        "checkpoint_contradicts_variant",
        checkpoint_contradicts_variant,
        "model.pt: was trained as variant 'tiny', not --variant small",
    ),
    (
        "checkpoint_contradicts_matching",
        checkpoint_contradicts_matching,
        "model.pt: was trained with matching_mode 'plm', not --matching_mode 'dense'",
    ),
]


def user_error(error: BaseException) -> BaseException:
    """The error the user should read: the first ValueError along the cause chain (MONAI's ConfigParser wraps errors
    in RuntimeError('Failed to instantiate component ...') from the original), else ``error`` itself."""
    seen = error
    while seen is not None:
        if isinstance(seen, ValueError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


def row(case: str) -> tuple:
    """(case id, builder, expected) of a row of :data:`CASES`, marked or not."""
    return next(r for r in (getattr(c, "values", c) for c in CASES) if r[0] == case)


@pytest.mark.parametrize("case, build, expected", CASES, ids=[getattr(c, "id", None) or c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(case: str, build: Callable, expected: str, tmp_path: Path) -> None:
    action = build(tmp_path)
    with pytest.raises(Exception) as raised:
        action()
    error = user_error(raised.value)
    message = str(error)
    assert isinstance(
        error, CSTMInputError if isinstance(action, Inference) else ValueError
    ), f"{type(error).__name__}: {message}"
    assert expected in message
    assert "\n" not in message and len(message) < 400, message  # one short line
    origin = Path(traceback.extract_tb(error.__traceback__)[-1].filename)
    assert SCRIPTS in origin.parents, f"raised in {origin}, not by the bundle's own checks"
    if isinstance(action, Inference) and action.output_dir.is_dir():  # never a partial or overwritten output
        assert all(p.read_bytes() == b"an earlier result" for p in action.output_dir.rglob("label_4d.nii.gz"))


# ---------------------------------------------------------------- through the bundle runner


@pytest.mark.parametrize(
    "case, expected",
    [
        ("image_truncated", "image.nii.gz: file is truncated"),  # list_studies, before the network is built
        ("image_nan", "image.nii.gz: image contains NaN or Inf values"),  # LoadStudyd inside the evaluator's run
        ("output_not_writable", "file.txt/out: cannot create the output folder"),  # check_outputs
        ("dicom_pixel_data_truncated", "dicom/IM00004: cannot read the DICOM pixel data"),  # LoadImaged's reader chain
    ],
)
def test_bundle_runner_shows_the_short_message(case: str, expected: str, tmp_path: Path) -> None:
    action = row(case)[1](tmp_path)
    result = run_bundle(
        "inference",
        "inference.json",
        "--dataset_dir",
        str(action.dataset_dir),
        "--output_dir",
        str(action.output_dir),
        timeout=120,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output, output[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: "), output[-3000:]  # the one-line summary last
    assert "Traceback" not in output, output[-3000:]  # only with --debug true, and then in <output_dir>/debug.log
    assert "unable to load" not in output and "nvImageCodec" not in output  # no library noise
    assert not list(tmp_path.rglob("label_4d.nii.gz"))


def test_run_settings_are_checked_before_any_study(tmp_path: Path) -> None:
    """``inference`` as ``bundle run`` runs it: an unusable --device stops the run before the studies are screened
    (this study's own error, an ES beyond the last phase, is not reached) and before the output folder is made."""
    write_study(tmp_path / "data" / "study", info={"ed": 0, "es": 9})
    parser = inference_parser(tmp_path / "data", tmp_path / "out", device="cuda:0")
    with mock.patch("torch.cuda.is_available", lambda: False), mock.patch.object(sys, "excepthook", sys.excepthook):
        with pytest.raises(Exception) as raised:
            parser.get_parsed_content("inference")
    assert str(user_error(raised.value)).startswith("--device: got 'cuda:0', but"), str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(CSTMInputError, match="label_4d.nii.gz: disk is full"):
        output_disk_full(tmp_path)()
    assert [p.name for p in (tmp_path / "out").rglob("*")] == ["study"]  # no temporary, no half a label map


def wrapped(error: BaseException) -> BaseException:
    """``error`` as MONAI hands it on: RuntimeError("Failed to evaluate ...") from it."""
    try:
        raise RuntimeError("Failed to evaluate ConfigExpression") from error
    except RuntimeError as e:
        return e


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            wrapped(OSError(errno.ENOSPC, "No space left on device", "/out/model.pt")),
            "ERROR: /out/model.pt: disk is full (No space left on device); expected free disk space.",
        ),
        (
            wrapped(PermissionError(errno.EACCES, "Permission denied", "/data/s1/image.nii.gz")),
            "ERROR: /data/s1/image.nii.gz: Permission denied.",
        ),
        (
            wrapped(torch.OutOfMemoryError("CUDA out of memory")),
            "ERROR: out of memory (OutOfMemoryError); expected a smaller --max_batch, or a device with more memory.",
        ),
        (KeyboardInterrupt(), "ERROR: interrupted; every output already written is complete, none is half-written."),
        (wrapped(ZeroDivisionError("a bug")), None),  # a bug: its traceback is the report
    ],
    ids=["disk_full", "permission", "out_of_memory", "ctrl_c", "bug"],
)
def test_errors_of_the_machine_end_in_one_error_line(
    error: BaseException, expected: str | None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The last line ``bundle run`` prints for errors that are no CSTMInputError, but still the user's to fix."""
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: print("Traceback ...", file=sys.stderr))
    install_error_summary()
    sys.excepthook(type(error), error, None)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (expected or "Traceback ...")


def test_a_device_this_machine_lacks_is_one_error_line() -> None:
    """``--device cuda:0`` without CUDA (``cuda:99`` on a GPU machine), should it pass the up-front device check:
    torch's own error (an ``AssertionError`` on a CPU build) names ``--device``, with no traceback."""
    device = "cuda:99" if torch.cuda.is_available() else "cuda:0"
    with pytest.raises(Exception) as raised:
        torch.zeros(1).to(torch.device(device))
    summary = error_summary(wrapped(raised.value))
    assert summary is not None and summary.startswith("--device: the device is not available ("), summary
    assert "\n" not in summary and summary.endswith(".")


@pytest.mark.parametrize("debug", [False, True])
def test_a_refused_input_shows_one_line_and_debug_logs_its_traceback(
    debug: bool, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    """No traceback on the console for a user's error (before: one or two, MONAI's wrappers included, above the
    ``ERROR:`` line); ``--debug true`` appends it to ``<output_dir>/debug.log``, with the run's log."""
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: print("Traceback ...", file=sys.stderr))
    root_handlers = list(logging.getLogger().handlers)
    try:
        install_error_summary(debug=str(debug).lower(), output_dir=tmp_path)
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression") from CSTMInputError("image.nii.gz", "bad")
        except RuntimeError as e:
            sys.excepthook(type(e), e, e.__traceback__)
    finally:
        for handler in set(logging.getLogger().handlers) - set(root_handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "ERROR: image.nii.gz: bad."
    log = tmp_path / "debug.log"
    assert log.is_file() is debug
    if debug:
        assert f"the traceback of the error below is in {log}" in err
        assert "Traceback" in log.read_text() and "CSTMInputError: image.nii.gz: bad." in log.read_text()
    with pytest.raises(CSTMInputError, match=r"--debug: got 'maybe'; expected true or false\."):
        install_error_summary(debug="maybe")


@pytest.mark.parametrize(
    "error, traceback_logged", [(CSTMInputError("image.nii.gz", "bad"), False), (ZeroDivisionError(), True)]
)
def test_monai_stats_handler_logs_no_traceback_of_a_user_error(
    error: BaseException, traceback_logged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MONAI's ``StatsHandler`` logged the traceback of every exception that stopped an engine (``--on_error stop``,
    training), once per event level, before the ``ERROR:`` line; a bug's traceback is still logged."""
    from monai.handlers import StatsHandler

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_error_summary()

    def fail(engine: Engine, batch: object) -> None:
        raise error

    engine = Engine(fail)
    StatsHandler(iteration_log=False).attach(engine)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("monai.handlers.StatsHandler")
    logger.addHandler(handler)
    try:
        with pytest.raises(type(error)):
            engine.run([0])
    finally:
        logger.removeHandler(handler)
    assert any(r.exc_info for r in records) is traceback_logged


# ---------------------------------------------------------------- not errors: one slice, one phase


@pytest.mark.parametrize("shape", [(96, 96, 1, 5), (96, 96, 4, 1)], ids=["one_slice_z1", "one_phase_t1"])
def test_single_slice_or_phase_is_propagated(shape: tuple[int, ...], tmp_path: Path) -> None:
    """Z = 1 propagates along t only, T = 1 along z only; the label map covers the whole study."""
    write_study(tmp_path / "data" / "study", shape=shape, info={"ed": 0, "es": 0})
    (item,) = inference_on(tmp_path)()
    assert item["image"].shape == (1, *shape)
    network = build_cstm("small").eval()
    labels = Propagation4DInferer(roi_size=None)(
        item["image"][None],
        network,
        item["annotation"][None],
        annotation_slice=item["annotation_slice"],
        annotation_phase=item["annotation_phase"],
        image_spacing=item["image_spacing"][None],
    )
    assert labels.shape == (1, 1, *shape) and labels.dtype == torch.uint8
    annotated = labels[0, 0, :, :, item["annotation_slice"], item["annotation_phase"]]
    assert torch.equal(annotated, item["annotation"].to(torch.uint8))
    assert int(labels.max()) < network.num_classes


def test_frames_smaller_than_the_network_minimum_are_padded(tmp_path: Path) -> None:
    network = build_cstm("small").eval()
    image, annotation = torch.rand(1, 1, *SHAPE[:2], 2, 2), torch.as_tensor(heart_labels(*SHAPE[:3])[None, :, :, 0])
    labels = Propagation4DInferer(roi_size=None)(image, network, annotation, annotation_slice=0, annotation_phase=0)
    assert labels.shape == image.shape
