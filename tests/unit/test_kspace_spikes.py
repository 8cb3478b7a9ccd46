"""K-space spike suppression before inference (issue 29): spikes found and removed, clean frames untouched."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import KSpaceSpikeNoise

from helpers import SHARED_DATA
from scripts.data import SuppressKSpaceSpikesd, make_phantom_study, suppress_kspace_spikes


@pytest.fixture(scope="module")
def cine() -> torch.Tensor:
    """(H, W, Z, T) phantom cine."""
    return torch.from_numpy(make_phantom_study(seed=3, num_slices=3, num_phases=4).image)


def _spiked(frame: torch.Tensor, log_magnitude: float = 13.0) -> torch.Tensor:
    h, w = frame.shape
    return torch.as_tensor(KSpaceSpikeNoise(loc=(h // 2 + 21, w // 2 + 27), k_intensity=log_magnitude)(frame[None]))[0]


def test_clean_frames_pass_through_unchanged(cine: torch.Tensor) -> None:
    frames = cine.reshape(*cine.shape[:2], -1)
    out, counts = suppress_kspace_spikes(frames)
    assert int(counts.sum()) == 0 and torch.equal(out, frames)


def test_a_spike_is_found_in_its_frame_and_removed(cine: torch.Tensor) -> None:
    frames = cine.reshape(*cine.shape[:2], -1).clone()
    clean = frames[:, :, 5].clone()
    frames[:, :, 5] = _spiked(clean)
    scale = float(torch.quantile(clean, 0.99))
    assert (frames[:, :, 5] - clean).abs().mean() > 0.02 * scale  # a visible herringbone
    out, counts = suppress_kspace_spikes(frames)
    assert counts[5] > 0 and int(counts.sum()) == int(counts[5])
    assert (out[:, :, 5] - clean).abs().mean() < 0.002 * scale
    others = [i for i in range(frames.shape[2]) if i != 5]
    assert torch.equal(out[:, :, others], frames[:, :, others])


def test_the_transform_keeps_the_image_type_and_can_be_switched_off(cine: torch.Tensor) -> None:
    image = MetaTensor(cine[None].clone(), meta={"pixdim": [1.0, 1.8, 1.8, 8.0]})  # (1, H, W, Z, T)
    image[0, :, :, 1, 2] = _spiked(cine[:, :, 1, 2])
    out = SuppressKSpaceSpikesd("image")({"image": image, "study_dir": "s"})
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == image.shape
    assert out["kspace_spike_frames"] == 1
    error = (out["image"][0, :, :, 1, 2] - cine[:, :, 1, 2]).abs().mean()
    assert error < 0.1 * (image[0, :, :, 1, 2] - cine[:, :, 1, 2]).abs().mean()
    assert SuppressKSpaceSpikesd("image", enabled=False)({"image": image})["image"] is image
    stored = (image * 1000).round().to(torch.int16)  # an integer image: filtered in float, no wrap-around
    out = SuppressKSpaceSpikesd("image")({"image": stored})["image"]
    assert out.dtype == torch.float32 and out.min() > -100
    with pytest.raises(ValueError, match="ratio"):
        suppress_kspace_spikes(cine[:, :, 0], ratio=1.0)


def test_no_clean_frame_of_the_real_studies_is_changed() -> None:
    studies = sorted((SHARED_DATA / "acdc_frames").glob("*/image.nii.gz"))[:4]
    if not studies:
        pytest.skip(f"no studies under {SHARED_DATA / 'acdc_frames'}")
    for path in studies:
        image = torch.from_numpy(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))
        frames = image.reshape(*image.shape[:2], -1)
        assert int(suppress_kspace_spikes(frames)[1].sum()) == 0, path
