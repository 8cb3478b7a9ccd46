"""scripts.data.readers (image geometry checks): rectangular pixels as the rest of the bundle uses them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from scripts.data import LoadStudyd
from scripts.data.readers import check_image_file
from scripts.data.roi import heart_box
from scripts.metrics import voxel_volume_ml


def test_rectangular_pixels_are_accepted_and_used_per_axis(tmp_path: Path) -> None:
    """1.0 x 1.5 mm pixels (within the 2:1 limit): each step uses each axis' spacing, none assumes square pixels."""
    affine = np.diag([1.0, 1.5, 8.0, 1.0])
    shape = (24, 16, 2, 3)
    study = tmp_path / "study"
    study.mkdir()
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(study / "image.nii.gz"))
    labels = np.zeros(shape[:3], np.uint8)
    labels[8:12, 6:10] = 3
    nib.save(nib.Nifti1Image(labels, affine), str(study / "label_ed.nii.gz"))
    (study / "info.json").write_text(json.dumps({"ed": 0, "es": 1}))
    assert check_image_file(study / "image.nii.gz") == shape
    load = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image", channel_dim="no_channel"), LoadStudyd()]
    )
    item = load({"image": str(study / "image.nii.gz"), "study": "study", "study_dir": str(study)})
    assert item["image_spacing"].tolist() == [1.0, 1.5]
    top, left, height, width = heart_box((12.0, 8.0), (1.0, 1.5), roi_size=48, spacing=1.0)  # a 48 mm square
    assert (height, width) == (48, 32)
    assert voxel_volume_ml(affine) == pytest.approx(1.0 * 1.5 * 8.0 / 1000)
