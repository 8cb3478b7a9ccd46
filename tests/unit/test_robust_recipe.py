"""The 0.7 recipe (train_robust.json): samples that reach the empty slices beyond the heart, samples along t then z,
frame 2 read as a second annotated frame, and appearance randomised along the stress suite's axes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from helpers import CONFIGS, TINY_CSTM
from scripts.data import UNLABELLED, RandTripletd, sample_weights
from scripts.data.splits import lv_contraction
from scripts.engines.trainer import annotated_second_frames, propagate_triplet
from scripts.networks.cstm import CSTM

HEART = range(2, 11)  # slices 2-10 of 13 hold the heart at both phases


def _stack(complete: bool, contracted: int | None = None) -> dict:
    """A 2-phase stack of 13 slices: a square "LV" on slices 2-10 (smaller at phase ``contracted``); the others empty
    (complete) or unlabelled."""
    label = torch.full((1, 24, 24, 13, 2), 0 if complete else UNLABELLED, dtype=torch.uint8)
    for z in HEART:
        label[0, :, :, z] = 0
        label[0, 8:16, 8:16, z] = 3
        if contracted is not None:
            label[0, 8:16, 8:16, z, contracted] = 0
            label[0, 10:14, 10:14, z, contracted] = 3
    image = torch.rand((1, 24, 24, 13, 2)) + (label == 3).float()
    return {"image": image, "label": label, "image_spacing": torch.tensor([1.5, 1.5]), "study_dir": "stack"}


def _draws(d: dict, **kwargs) -> list[tuple[list[int], list[int]]]:
    """(slices, phases) of 300 samples: read back from the frames drawn."""
    draw = RandTripletd(num_samples=300, **kwargs)
    draw.set_random_state(0)
    image = d["image"][0]
    out = []
    for s in draw(d):
        frames = s["frames"]  # (3, H, W)
        where = [
            next((z, t) for z in range(13) for t in range(2) if torch.equal(image[:, :, z, t], frames[i]))
            for i in range(3)
        ]
        out.append(([z for z, _ in where], [t for _, t in where]))
    return out


def test_samples_start_on_the_heart_and_reach_the_empty_slices_of_a_complete_stack() -> None:
    draws = _draws(_stack(complete=True), temporal_prob=0.0, edge_prob=1.0)
    assert all(zs[0] in HEART for zs, _ in draws)  # frame 1 is the memory: it holds a structure
    beyond = sum(any(z not in HEART for z in zs[1:]) for zs, _ in draws)
    assert beyond > 150  # drawn towards an end: past it most of the time
    inside = _draws(_stack(complete=True), temporal_prob=0.0, edge_prob=0.0)
    assert sum(any(z not in HEART for z in zs[1:]) for zs, _ in inside) < beyond
    partial = _draws(_stack(complete=False), temporal_prob=0.0, edge_prob=1.0)
    assert all(z in HEART for zs, _ in partial for z in zs)  # unknown slices are never drawn


def test_es_prob_spends_the_samples_on_the_contracted_phase() -> None:
    for contracted in (0, 1):
        stack = _stack(complete=True, contracted=contracted)
        at_es = _draws(stack, temporal_prob=0.3, mixed_prob=0.3, es_prob=1.0)
        assert all(ts[1] == contracted for _, ts in at_es)  # along z at ES; along t, ES predicted from ED
        uniform = _draws(stack, temporal_prob=0.3, mixed_prob=0.3, es_prob=0.0)
        assert 90 < sum(ts[1] == contracted for _, ts in uniform) < 210


def test_contraction_power_draws_strongly_contracting_hearts_more_often_within_their_dataset(tmp_path) -> None:
    def study(name: str, es_side: int) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        for phase, side in (("ed", 8), ("es", es_side)):
            label = np.zeros((16, 16, 3), dtype=np.uint8)
            label[:side, :side] = 3
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(folder / f"label_{phase}.nii.gz"))
        return {"study_dir": str(folder), "dataset": "a", "sample_weight": 0.25}

    strong, weak = study("strong", 4), study("weak", 8)  # EDV/ESV 4 and 1
    other = {"study_dir": str(tmp_path / "none"), "dataset": "b", "sample_weight": 0.5}  # no labels: factor 1
    (tmp_path / "none").mkdir()
    assert lv_contraction(strong["study_dir"]) == 4.0 and lv_contraction(other["study_dir"]) == 1.0
    datalist = [strong, weak, other]
    assert sample_weights(datalist) == [0.25, 0.25, 0.5]
    weights = sample_weights(datalist, contraction_power=1.0)
    assert np.allclose(weights, [0.4, 0.1, 0.5])  # dataset "a" keeps its share, 4:1 within it


def test_mixed_samples_go_along_t_then_along_z() -> None:
    draws = _draws(_stack(complete=True), temporal_prob=0.0, mixed_prob=1.0)
    for zs, ts in draws:
        assert zs[0] == zs[1] != zs[2] and ts[0] != ts[1] == ts[2]


def test_frame_2_is_read_as_annotated_only_where_it_is_fully_labelled() -> None:
    masks = torch.zeros((4, 3, 8, 8), dtype=torch.long)
    masks[:, 1, 2:5, 2:5] = 3
    masks[1, 1, 0, 0] = UNLABELLED  # a partial frame 2: never read as annotated
    assert annotated_second_frames(masks, 0.0) is None
    second = annotated_second_frames(masks, 1.0)
    assert (second[1] == -1).all()
    assert torch.equal(second[[0, 2, 3]], masks[[0, 2, 3], 1])


def test_an_annotated_frame_2_changes_frame_3_only() -> None:
    torch.manual_seed(0)
    network = CSTM(**TINY_CSTM).eval()
    frames = torch.rand((2, 3, 1, 96, 96))
    first = torch.zeros((2, 96, 96), dtype=torch.long)
    first[:, 20:40, 20:40] = 3
    second = torch.full((2, 96, 96), -1, dtype=torch.long)
    second[0] = 0
    second[0, 10:30, 10:30] = 1
    with torch.no_grad():
        plain2, plain3 = propagate_triplet(network, frames, first)
        read2, read3 = propagate_triplet(network, frames, first, second)
    assert torch.allclose(plain2, read2)
    assert not torch.allclose(plain3[0], read3[0])  # sample 0 reads frame 2's labels
    assert torch.allclose(plain3[1], read3[1])  # sample 1 reads its prediction, as before


def test_the_robust_recipe_builds_its_appearance_transforms() -> None:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ("train.json", "train_acdc.json", "train_robust.json")])
    appearance = parser.get_parsed_content("train#appearance")
    names = [type(t).__name__ for t in appearance]
    assert {"RandAdjustContrastd", "RandBiasFieldd", "RandRicianNoised", "RandKSpaceSpikeNoised"} <= set(names)
    frames = {"frames": torch.rand((3, 64, 64)), "masks": torch.zeros((3, 64, 64), dtype=torch.uint8)}
    for transform in appearance:
        transform.set_random_state(0)
        out = transform({**frames})
        assert out["frames"].shape == (3, 64, 64) and torch.isfinite(torch.as_tensor(out["frames"])).all()
    assert parser.get_parsed_content("dataset_weights").get("sunnybrook", 0) == 0  # a vendor set, not training
