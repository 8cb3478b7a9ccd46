"""MONAI Label's transforms (scripts.data.label_app): the annotation file as a second channel, and back to (H, W, T)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from scripts.data import AnnotationChanneld, CineSliceLabeld
from scripts.errors import CSTMInputError

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def request(tmp_path: Path, label: np.ndarray | None = None, **label_kw) -> dict:
    """A loaded image (1, 16, 16, 5) and the request's ``label`` path, as MONAI Label's pre-transforms see them."""
    image = np.random.default_rng(0).random((16, 16, 5)).astype(np.float32)
    d = {"image": write(tmp_path / "cine.nii.gz", image)}
    if label is not None:
        d["label"] = write(tmp_path / "annotation.nii.gz", label, **label_kw)
    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image", channel_dim="no_channel")])(d)


def annotation(shape: tuple = (16, 16, 5), phase: int = 2) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[4:8, 4:8, phase], a[8:12, 8:12, phase] = 1, 3
    return a


def test_annotation_becomes_the_second_channel(tmp_path: Path) -> None:
    d = request(tmp_path, annotation())
    out = AnnotationChanneld("image")(d)["image"]
    assert out.shape == (2, 16, 16, 5)
    torch.testing.assert_close(out[0], d["image"][0])
    np.testing.assert_array_equal(out[1].numpy(), annotation())
    np.testing.assert_allclose(out.affine.numpy(), AFFINE)  # the image's meta travels on


@pytest.mark.parametrize(
    "label, kw, message",
    [
        (None, {}, r"cine.nii.gz: the request has no annotation \('label'\)"),
        (annotation((16, 16, 4)), {}, r"annotation has shape \(16, 16, 4\); expected the image grid \(16, 16, 5\)"),
        (annotation(), {"affine": np.diag([1.0, 1.0, 8.0, 1.0])}, "annotation affine differs from the image affine"),
        (annotation() * 2, {}, r"annotation values \[0, 2, 6\] outside \[0, 1, 2, 3\]"),
        (np.zeros((16, 16, 5), np.uint8), {}, r"annotation is empty \(no labelled pixel\)"),
    ],
)
def test_bad_annotations_name_the_file_and_the_problem(tmp_path: Path, label, kw: dict, message: str) -> None:
    with pytest.raises(CSTMInputError, match=message):
        AnnotationChanneld("image")(request(tmp_path, label, **kw))


def test_missing_annotation_file_and_4d_image(tmp_path: Path) -> None:
    d = request(tmp_path)
    with pytest.raises(CSTMInputError, match="gone.nii.gz: annotation file not found"):
        AnnotationChanneld("image")({**d, "label": str(tmp_path / "gone.nii.gz")})
    with pytest.raises(CSTMInputError, match=r"image has shape \(16, 16, 2, 5\); expected a single-slice cine"):
        AnnotationChanneld("image")({"image": torch.zeros(1, 16, 16, 2, 5), "label": "x.nii.gz"})


def test_cine_slice_label_drops_the_slice_axis() -> None:
    pred = torch.arange(16 * 16 * 5).reshape(1, 16, 16, 1, 5)
    out = CineSliceLabeld("pred")({"pred": pred})["pred"]
    assert out.shape == (1, 16, 16, 5)
    torch.testing.assert_close(out, pred[:, :, :, 0])
    with pytest.raises(ValueError, match=r"\(1, H, W, 1, T\), got \(1, 16, 16, 2, 5\)"):
        CineSliceLabeld("pred")({"pred": torch.zeros(1, 16, 16, 2, 5)})
