"""The real-data recipe: the fixed split by patient, static-frame samples, per-frame jitter, normalising encoders,
records from before ``encoder_norm``, and the validation that ends every run."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import ValidationHandler
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from torch import nn

from helpers import CONFIGS, SHARED_DATA, TINY_CSTM
from scripts.data import UNLABELLED, LoadStudyd, RandFrameJitterd, RandTripletd, load_split, make_split
from scripts.data.splits import SPLITS
from scripts.engines.trainer import attach_final_validation
from scripts.errors import CSTMInputError
from scripts.networks.cstm import CSTM
from scripts.networks.weights import build_cstm_from_checkpoint, check_recorded_network

SPLIT_FILE = CONFIGS / "datalist_acdc.json"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "acdc_frames").is_dir(), reason="../shared/data not present")


def _split() -> dict:
    return json.loads(SPLIT_FILE.read_text())


def test_every_patient_is_in_one_split_with_all_its_studies() -> None:
    split = _split()
    where = defaultdict(set)
    for name in ("training", "validation", "test"):
        for item in split[name]:
            where[item["patient"]].add(name)
    assert len(where) == 75  # 70 ACDC patients + 5 Sunnybrook cases
    assert all(len(names) == 1 for names in where.values()), {p: n for p, n in where.items() if len(n) > 1}
    for patient in ("patient008", "patient009", "patient010"):  # never trained on by the 0.4 weights
        assert where[patient] == {"test"}


def test_split_is_stratified_by_group() -> None:
    split = _split()
    for group in ("HCM", "MINF", "NOR", "RV"):
        counts = {name: len({s["patient"] for s in split[name] if s["group"] == group}) for name in SPLITS}
        assert counts == {"training": 8, "validation": 3, "test": 4}, (group, counts)


@needs_data
def test_the_split_file_is_what_make_split_draws(tmp_path: Path) -> None:
    drawn = make_split(SHARED_DATA, tmp_path / "split.json")
    written = json.loads((tmp_path / "split.json").read_text())
    assert written == _split() and {k: v for k, v in written.items() if k in SPLITS} == drawn


@needs_data
def test_the_split_says_which_datasets_label_every_slice() -> None:
    """ACDC's truth draws every slice that holds a structure (a slice it leaves out is background); Sunnybrook's is
    partial. load_split carries the statement to every study; LoadStudyd fills the complete stacks with background."""
    studies = {s["dataset"]: s for s in load_split(SPLIT_FILE, "validation", SHARED_DATA)}
    assert studies["acdc_frames"]["labels_complete"] and not studies["sunnybrook"]["labels_complete"]
    frames = next(
        s
        for s in load_split(SPLIT_FILE, "validation", SHARED_DATA)
        if s["study_dir"].endswith("acdc_frames/patient033")
    )
    load = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            LoadStudyd(with_labels=True),
        ]
    )
    complete = load(frames)
    assert complete["labels_complete"]
    label = complete["label"][0]  # (H, W, Z, T); ES labels slices 2-8 of 10
    assert (label[:, :, :, complete["es"]] != UNLABELLED).all() and (label[:, :, 0, complete["es"]] == 0).all()
    partial = load({**frames, "labels_complete": False})
    assert (partial["label"][0][:, :, 0, partial["es"]] == UNLABELLED).all()


@needs_data
def test_load_split_weights_datasets_not_studies() -> None:
    weights = {"acdc_cine": 0.6, "acdc_frames": 0.4}
    studies = load_split(SPLIT_FILE, "training", SHARED_DATA, weights)
    assert {s["dataset"] for s in studies} == {"acdc_cine", "acdc_frames"}  # weight absent: left out
    share = Counter()
    for s in studies:
        share[s["dataset"]] += s["sample_weight"]
        assert Path(s["image"]).is_file() and s["study"] == f"{s['dataset']}_{Path(s['study_dir']).name}"
    assert share["acdc_cine"] == pytest.approx(0.6) and share["acdc_frames"] == pytest.approx(0.4)


def test_load_split_refuses_unknown_split_and_missing_studies(tmp_path: Path) -> None:
    with pytest.raises(CSTMInputError, match="has no split 'train'"):
        load_split(SPLIT_FILE, "train", tmp_path)
    (tmp_path / "split.json").write_text(
        json.dumps({"training": [{"study_dir": "acdc_cine/patient999", "dataset": "acdc_cine"}]})
    )
    with pytest.raises(CSTMInputError, match="patient999.*study of split 'training' not found"):
        load_split(tmp_path / "split.json", "training", tmp_path)


def _study(num_slices: int = 5) -> dict:
    label = torch.zeros(1, 32, 32, num_slices, 2, dtype=torch.uint8)
    label[:, 8:20, 8:20] = 3
    image = torch.arange(32 * 32 * num_slices * 2, dtype=torch.float32).reshape(1, 32, 32, num_slices, 2)
    return {"image": image, "label": label, "image_spacing": torch.tensor([1.0, 1.0]), "study_dir": "s"}


def test_static_samples_repeat_one_labelled_frame() -> None:
    sampler = RandTripletd(num_samples=20, static_prob=1.0)
    sampler.set_random_state(0)
    seen = set()
    for sample in sampler(_study()):
        assert torch.equal(sample["frames"][0], sample["frames"][1]) and torch.equal(
            sample["frames"][0], sample["frames"][2]
        )
        seen.add(float(sample["frames"][0, 0, 0]))
    assert len(seen) > 3  # drawn from different frames
    moving = RandTripletd(num_samples=20, static_prob=0.0)
    moving.set_random_state(0)
    assert all(not torch.equal(s["frames"][0], s["frames"][1]) for s in moving(_study()))


def test_frame_jitter_moves_each_frame_on_its_own_and_keeps_masks_on_images() -> None:
    frames = torch.zeros(3, 64, 64)
    frames[:, 20:44, 24:40] = 1.0
    masks = (frames > 0).to(torch.uint8) * 3
    jitter = RandFrameJitterd(prob=1.0, rotate_range=0.4, scale_range=0.1, translate_range=6, elastic_magnitude=(1, 2))
    jitter.set_random_state(3)
    out = jitter({"frames": frames, "masks": masks})
    assert out["masks"].dtype == torch.uint8 and set(out["masks"].unique().tolist()) <= {0, 3}
    assert not torch.equal(out["frames"][0], out["frames"][1]) and not torch.equal(out["frames"][1], out["frames"][2])
    for i in range(3):  # the mask followed its own frame's deformation
        inside = out["frames"][i][out["masks"][i] == 3]
        assert inside.mean() > 0.9 and out["frames"][i][out["masks"][i] == 0].mean() < 0.1
    still = RandFrameJitterd(prob=0.0)({"frames": frames, "masks": masks})
    assert torch.equal(still["frames"], frames) and torch.equal(still["masks"], masks)


def test_group_norm_encoders_normalise_from_the_first_iteration() -> None:
    torch.manual_seed(0)
    image = 100.0 + 50.0 * torch.randn(2, 1, 96, 96)  # raw scanner intensities, far from unit scale
    for norm, normalises in (("group", True), ("frozen_batch", False)):  # every norm layer of the encoders
        net = CSTM(**TINY_CSTM, encoder_norm=norm).train()
        feat = net.key_encoder.stem[:2](image)  # conv1 + its norm
        std = float(feat.detach().std())
        assert (abs(std - 1.0) < 0.5) is normalises, (norm, std)
        kinds = {type(m) for m in net.key_encoder.modules()}
        assert (nn.GroupNorm in kinds) is normalises and (nn.BatchNorm2d in kinds) is not normalises


def test_records_without_encoder_norm_are_frozen_batch_networks(tmp_path: Path) -> None:
    old = CSTM(**TINY_CSTM, encoder_norm="frozen_batch")
    record = {k: v for k, v in old.config.items() if k != "encoder_norm"}  # a 0.4.0 record
    torch.save({"model": old.state_dict(), "network": record, "variant": None}, tmp_path / "model.pt")
    rebuilt = build_cstm_from_checkpoint(tmp_path / "model.pt")
    assert rebuilt.config["encoder_norm"] == "frozen_batch"
    rebuilt.load_state_dict(old.state_dict())
    with pytest.raises(CSTMInputError, match="encoder_norm 'frozen_batch', the network here has 'group'"):
        check_recorded_network(CSTM(**TINY_CSTM), {"network": record}, tmp_path / "model.pt")


@pytest.mark.parametrize("max_epochs, validated", [(3, [2, 3]), (4, [2, 4])])
def test_the_last_epoch_is_always_validated(max_epochs: int, validated: list[int]) -> None:
    trainer, runs = Engine(lambda e, b: None), []

    class Validator:
        def run(self, epoch: int) -> None:
            runs.append(epoch)

    handler = ValidationHandler(interval=2, epoch_level=True)
    handler.validator = Validator()
    handler.attach(trainer)
    attach_final_validation(trainer, [handler])
    trainer.run(np.zeros(2), max_epochs=max_epochs)
    assert runs == validated
