"""Training on mixed and partially labelled data: partial classes, sample drawing, dataset weights, per-phase
validation Dice, gradient clipping, initial weights and early stopping."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from scipy.ndimage import distance_transform_edt
from torch.utils.data import WeightedRandomSampler

from helpers import TINY_CSTM
from scripts.data import (
    UNLABELLED,
    LoadStudyd,
    RandTripletd,
    list_studies,
    mix_datalists,
    sample_weights,
    write_phantom_studies,
)
from scripts.engines import BootstrappedCE, CSTMTrainer, TripletStep, attach_early_stop, load_initial_weights
from scripts.errors import CSTMInputError
from scripts.metrics import PhaseClassDice
from scripts.networks.cstm import CSTM

SPACING_MM = 1.8  # the phantom's pixel spacing


@pytest.fixture(scope="module")
def lv_only_at_es(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A phantom study labelled like Sunnybrook: ES drawn with the LV blood pool only (``labels_es`` [3])."""
    root = tmp_path_factory.mktemp("partial")
    write_phantom_studies(str(root), num_studies=1, seed=7000, image_size=(96, 96), num_slices=6, num_phases=8)
    study = root / "phantom_7000"
    es_file = nib.load(study / "label_es.nii.gz")
    full_es = np.asarray(es_file.dataobj)
    nib.save(nib.Nifti1Image(np.where(full_es == 3, 3, 0).astype(np.uint8), es_file.affine), study / "label_es.nii.gz")
    info = json.loads((study / "info.json").read_text())
    (study / "info.json").write_text(json.dumps({**info, "labels_es": [3]}))
    return study, full_es


def load(study: Path, margin: float = 20.0) -> dict:
    return Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            LoadStudyd("image", with_labels=True, partial_margin_mm=margin),
        ]
    )({"image": str(study / "image.nii.gz"), "study_dir": str(study)})


def test_missing_class_becomes_unlabelled_near_the_drawn_structures(lv_only_at_es: tuple) -> None:
    study, full_es = lv_only_at_es
    d = load(study)
    es = d["label"][0, ..., d["es"]].numpy()  # (H, W, Z)
    ed = d["label"][0, ..., d["ed"]].numpy()
    assert not (ed == UNLABELLED).any()  # ED has every class: untouched
    assert (es[full_es == 3] == 3).all()  # the drawn LV stays
    assert (es[full_es == 2] == UNLABELLED).all()  # the myocardium (undrawn at ES) is out of the loss, not background
    for z in range(es.shape[2]):
        if (full_es[..., z] == 3).any():
            far = distance_transform_edt(full_es[..., z] != 3, sampling=SPACING_MM) > 20.0
            assert (es[..., z][far] == 0).all()  # far from the LV: still background
            assert (es[..., z] == UNLABELLED).mean() < 0.5
        else:
            assert (es[..., z] == UNLABELLED).all()  # nothing drawn: the undrawn class may be anywhere


def test_per_class_slice_lists_are_honoured_in_training(tmp_path: Path) -> None:
    """``annotated_slices_ed_myo`` (Sunnybrook): the myocardium is drawn on the listed ED slices only; on the others
    its absence is not background (the same rule the evaluation scores by), and the annotation is a slice with it."""
    write_phantom_studies(str(tmp_path), num_studies=1, seed=7001, image_size=(96, 96), num_slices=6, num_phases=8)
    study = tmp_path / "phantom_7001"
    ed_file = nib.load(study / "label_ed.nii.gz")
    full_ed = np.asarray(ed_file.dataobj)
    drawn = full_ed.copy()
    drawn[..., [0, 1, 4, 5]] = np.where(full_ed[..., [0, 1, 4, 5]] == 2, 0, full_ed[..., [0, 1, 4, 5]])
    nib.save(nib.Nifti1Image(drawn.astype(np.uint8), ed_file.affine), study / "label_ed.nii.gz")
    info = json.loads((study / "info.json").read_text())
    (study / "info.json").write_text(json.dumps({**info, "annotated_slices_ed_myo": [2, 3]}))
    d = load(study)
    ed = d["label"][0, ..., d["ed"]].numpy()  # (H, W, Z)
    for z in (2, 3):
        assert (ed[..., z] == full_ed[..., z]).all()  # every class drawn: as drawn
    for z in (0, 1, 4, 5):
        myo = full_ed[..., z] == 2
        assert myo.any() and (ed[..., z][myo] == UNLABELLED).all()  # undrawn myocardium: out of the loss
        assert (ed[..., z][full_ed[..., z] == 3] == 3).all()  # the drawn LV stays
    assert d["annotation_slice"] in (2, 3)  # the annotated frame draws the myocardium too
    samples = RandTripletd(num_samples=50)(d)
    assert all(not (s["masks"][0] == UNLABELLED).any() for s in samples)


def test_triplets_start_from_fully_labelled_frames_only(lv_only_at_es: tuple) -> None:
    d = load(lv_only_at_es[0])
    draw = RandTripletd(num_samples=200)
    draw.set_random_state(0)
    samples = draw(d)
    assert all(not (s["masks"][0] == UNLABELLED).any() for s in samples)  # frame 1 is the memory: fully labelled
    partial_targets = sum(bool((s["masks"][1:] == UNLABELLED).any()) for s in samples)
    assert partial_targets > 20  # the partly labelled ES frames are used as targets


def test_study_without_a_fully_labelled_frame_is_refused(lv_only_at_es: tuple) -> None:
    d = load(lv_only_at_es[0])
    d["label"][0, ..., d["ed"]] = UNLABELLED  # ED gone: only the partial ES frames remain
    with pytest.raises(CSTMInputError, match="no fully labelled frame"):
        RandTripletd(num_samples=1)(d)


def test_dataset_weights_set_sampling_frequencies(tmp_path: Path) -> None:
    small = dict(image_size=(48, 48), num_slices=3, num_phases=4)
    write_phantom_studies(str(tmp_path / "a"), num_studies=3, seed=7100, **small)
    write_phantom_studies(str(tmp_path / "b"), num_studies=1, seed=7200, **small)
    mixed = mix_datalists(list_studies(tmp_path / "a"), [{"dataset_dir": str(tmp_path / "b"), "weight": 3.0}])
    assert [s["study"] for s in mixed] == ["phantom_7100", "phantom_7101", "phantom_7102", "phantom_7200"]
    weights = sample_weights(mixed)
    assert weights == pytest.approx([1 / 3, 1 / 3, 1 / 3, 3.0])
    draws = Counter(list(WeightedRandomSampler(weights, 40_000, generator=torch.Generator().manual_seed(0))))
    assert draws[3] / 40_000 == pytest.approx(0.75, abs=0.01)  # weight 3 of 4, though it is 1 study of 4
    with pytest.raises(CSTMInputError, match=r"extra_train_datasets\[0\]"):
        mix_datalists(mixed, [{"dataset_dir": str(tmp_path / "b"), "wieght": 1.0}])
    with pytest.raises(CSTMInputError, match="weight is -1"):
        mix_datalists(mixed, [{"dataset_dir": str(tmp_path / "b"), "weight": -1}])


def onehot(labels: np.ndarray) -> torch.Tensor:
    """(H, W, N) labels -> (4, H, W, N) one-hot."""
    return torch.as_tensor(np.stack([labels == c for c in range(4)]).astype(np.float32))


def test_phase_class_dice_by_hand() -> None:
    truth = np.zeros((4, 4, 2), np.uint8)
    truth[:2, :2] = 3  # LV: 4 px per frame
    truth[2:, 2:, 1] = 2  # Myo only in the ES frame
    pred = truth.copy()
    pred[0, :2, 1] = 0  # ES frame: 2 of 4 LV pixels missed
    metric = PhaseClassDice()
    metric.update([{"pred": onehot(pred), "label": onehot(truth), "frame_phase": ["ED", "ES"]}])
    result = metric.compute()
    assert result == pytest.approx({"val_dice_ed_lv": 1.0, "val_dice_es_lv": 2 * 2 / (2 + 4), "val_dice_es_myo": 1.0})
    assert "val_dice_ed_rv" not in result  # no truth anywhere: not scored, not 0


def test_gradient_clipping_bounds_the_update() -> None:
    torch.manual_seed(0)
    network = CSTM(**TINY_CSTM)
    before = [p.detach().clone() for p in network.parameters()]
    trainer = CSTMTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{}],
        network=TripletStep(network),
        optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
        loss_function=BootstrappedCE(0, 0, 1.0),
        grad_clip_norm=1e-3,
    )
    batch = {"frames": torch.rand(1, 3, 96, 96), "masks": torch.randint(0, 4, (1, 3, 96, 96))}
    trainer._iteration(trainer, batch)
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(network.parameters(), before, strict=True)))
    assert 0 < float(step) <= 1e-3 * 1.0001  # SGD with lr 1 moves by the clipped gradient
    with pytest.raises(ValueError, match="grad_clip_norm"):
        CSTMTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[{}],
            network=TripletStep(network),
            optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
            loss_function=BootstrappedCE(0, 0, 1.0),
            grad_clip_norm=-1,
        )


def test_initial_weights_load_or_fail_naming_the_file(tmp_path: Path) -> None:
    source, target, trainer = CSTM(**TINY_CSTM), CSTM(**TINY_CSTM), Engine(lambda e, b: None)
    torch.save(source.state_dict(), tmp_path / "init.pt")
    load_initial_weights(target, tmp_path / "init.pt", trainer)
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    load_initial_weights(target, None, trainer)  # no checkpoint: nothing happens
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CSTMInputError, match=r"other\.pt: does not fit the network"):
        load_initial_weights(target, tmp_path / "other.pt", trainer)


@pytest.mark.parametrize("patience, epochs_run", [(0, 6), (2, 3)])
def test_early_stop_after_patience_validations_without_gain(patience: int, epochs_run: int) -> None:
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)  # before the handler attached below, as MONAI's evaluator computes metrics
    def constant_metric(engine: Engine) -> None:
        engine.state.key_metric_name = "val_mean_dice"
        engine.state.metrics = {"val_mean_dice": 0.5}  # never improves after the first validation

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    attach_early_stop(evaluator, trainer, patience=patience)
    trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == epochs_run
