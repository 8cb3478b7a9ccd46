"""The 3D entry that MONAI Label can drive: a single-slice cine (H, W, T) plus an annotation file, called as
``inferer(inputs, network)`` with the annotation as a second channel, with the shipped weights."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, ConcatItemsd, EnsureChannelFirstd, LoadImaged, ScaleIntensityRangePercentilesd

from helpers import BUNDLE, CONFIGS
from scripts.data import AsCineStudyd, make_phantom_study
from scripts.errors import CSTMInputError

CLASSES = (1, 2, 3)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice of RV, Myo, LV between two label arrays."""
    return float(
        np.mean([2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in CLASSES])
    )


@pytest.fixture(scope="module")
def shipped() -> tuple:
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    return network.eval(), parser.get_parsed_content("inferer")


def preprocessing() -> Compose:
    """What a 3D tool runs before calling the inferer: image and annotation as the two input channels."""
    return Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"),
            ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True),
            ConcatItemsd(["image", "label"], "image"),
            AsCineStudyd("image"),
        ]
    )


def write_cine_slice(folder: Path) -> tuple:
    """A phantom's middle slice as a cine (H, W, T) ``cine.nii.gz`` and its ED label as ``annotation.nii.gz``
    (H, W, T), 0 except at ED. Returns the study, the slice index and the annotation."""
    study = make_phantom_study(seed=5002)
    z = study.image.shape[2] // 2
    annotation = np.zeros(study.label.shape[:2] + study.label.shape[3:], np.uint8)  # (H, W, T)
    annotation[..., study.ed] = study.label[:, :, z, study.ed]
    nib.save(nib.Nifti1Image(study.image[:, :, z], study.affine), folder / "cine.nii.gz")
    nib.save(nib.Nifti1Image(annotation, study.affine), folder / "annotation.nii.gz")
    return study, z, annotation


def test_single_slice_cine_with_annotation_channel(shipped: tuple, tmp_path: Path) -> None:
    network, inferer = shipped
    study, z, annotation = write_cine_slice(tmp_path)

    d = preprocessing()({"image": str(tmp_path / "cine.nii.gz"), "label": str(tmp_path / "annotation.nii.gz")})
    assert d["image"].shape == (2, *study.image.shape[:2], 1, study.image.shape[3])
    with torch.no_grad():
        labels = inferer(d["image"][None], network)  # MONAI Label's call: no keyword arguments
    labels = labels[0, 0, :, :, 0].numpy()  # (H, W, T)

    np.testing.assert_array_equal(labels[..., study.ed], annotation[..., study.ed])
    truth_es = study.label[:, :, z, study.es]
    model, copy_ed = dice(labels[..., study.es], truth_es), dice(annotation[..., study.ed], truth_es)
    print(f"\nsingle-slice ES Dice: shipped model {model:.3f}, copy-ED {copy_ed:.3f}")
    assert model > copy_ed + 0.05

    with torch.no_grad():  # the same frames through the study path (explicit annotation arguments) agree
        explicit = inferer(
            d["image"][None, :1],
            network,
            annotation=torch.as_tensor(annotation[None, ..., study.ed]),
            annotation_slice=0,
            annotation_phase=study.ed,
            image_spacing=torch.tensor([[1.8, 1.8]]),
        )
    np.testing.assert_array_equal(explicit[0, 0, :, :, 0].numpy(), labels)


def test_monai_label_chain_of_inference_json(shipped: tuple, tmp_path: Path) -> None:
    """``pre_transforms``/``post_transforms``, which MONAI Label's BundleInferTask takes over ``preprocessing``/
    ``postprocessing``, called as it calls them (tests/monailabel runs them in MONAI Label itself)."""
    network, inferer = shipped
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    study, z, annotation = write_cine_slice(tmp_path)

    request = {"image": str(tmp_path / "cine.nii.gz"), "label": str(tmp_path / "annotation.nii.gz"), "device": "cpu"}
    d = parser.get_parsed_content("pre_transforms")(request)
    with torch.no_grad():
        d["pred"] = inferer(d["image"][None], network)[0]
    pred = parser.get_parsed_content("post_transforms")(d)["pred"]
    assert pred.shape == (1, *annotation.shape)  # (1, H, W, T): MONAI Label's Restored and writer take it from here
    labels = pred[0].numpy()
    np.testing.assert_array_equal(labels[..., study.ed], annotation[..., study.ed])
    truth_es = study.label[:, :, z, study.es]
    assert dice(labels[..., study.es], truth_es) > dice(annotation[..., study.ed], truth_es) + 0.05


def test_inferer_without_annotation_channel_says_what_it_expects(shipped: tuple) -> None:
    network, inferer = shipped
    with pytest.raises(ValueError, match=r"expected inputs \(B, 2, H, W, Z, T\)"):
        inferer(torch.rand(1, 1, 96, 96, 1, 4), network)
    with pytest.raises(ValueError, match="annotation channel holds no labelled pixel"):
        inferer(torch.rand(1, 2, 96, 96, 1, 4).round() * 0, network)


def test_a_2d_image_is_neither_cine_nor_study() -> None:
    with pytest.raises(CSTMInputError, match=r"image has shape \(8, 8\); expected a cine slice"):
        AsCineStudyd("image")({"image": torch.zeros(1, 8, 8)})
