"""Several annotated frames: which frames ``annotation.nii.gz`` (3D or 4D) and the ground truth make anchors, and that
the inferer returns every one of them exactly."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import TINY_CSTM
from scripts.data import write_phantom_studies
from scripts.data.transforms import read_annotation
from scripts.inferers import Propagation4DInferer
from scripts.networks import build_cstm


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("anchors")
    (folder,) = write_phantom_studies(str(root), 1, seed=5, image_size=(64, 64), num_slices=6, num_phases=6)
    return Path(folder)


def _read(study: Path, **kwargs) -> dict:
    image = nib.load(str(study / "image.nii.gz"))
    return read_annotation(study, json.loads((study / "info.json").read_text()), image.shape, image.affine, **kwargs)


def _truth(study: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    info = json.loads((study / "info.json").read_text())
    gt = np.asarray(nib.load(str(study / "label_4d_gt.nii.gz")).dataobj)
    return gt, nib.load(str(study / "image.nii.gz")).affine, info


def _frames(d: dict) -> list[tuple[int, int]]:
    return [tuple(f) for f in d["anchor_frames"].tolist()]


def test_ground_truth_gives_the_reference_anchors(study: Path) -> None:
    _, _, info = _truth(study)
    ed, es = info["ed"], info["es"]
    one, two, three = (_read(study, reference_anchors=n) for n in (1, 2, 3))
    z_a = one["annotation_slice"]
    assert _frames(one) == [(z_a, ed)]
    assert _frames(two) == sorted([(z_a, ed), (z_a, es)])
    assert _frames(three) == sorted([(z_a, ed), (z_a, es), (5, ed)])  # 6 slices, base first: apex 4-5, [4, 5][1]
    assert _frames(_read(study, reference_anchors=3, base_first=False)) == sorted([(z_a, ed), (z_a, es), (1, ed)])
    gt, _, _ = _truth(study)
    for (z, t), lab in zip(_frames(three), three["anchor_labels"], strict=True):
        assert np.array_equal(lab.numpy(), gt[:, :, z, t])


def test_every_labelled_frame_of_annotation_file_is_an_anchor(study: Path, tmp_path: Path) -> None:
    gt, affine, info = _truth(study)
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("image.nii.gz",):
        (folder / name).symlink_to(study / name)
    three_d = np.zeros(gt.shape[:3], np.uint8)
    three_d[:, :, [1, 4]] = gt[:, :, [1, 4], 2]
    nib.save(nib.Nifti1Image(three_d, affine), str(folder / "annotation.nii.gz"))
    (folder / "info.json").write_text(json.dumps({"annotated_phase": 2}))
    d = _read(folder)
    assert _frames(d) == [(1, 2), (4, 2)] and (d["annotation_slice"], d["annotation_phase"]) == (4, 2)

    four_d = np.zeros(gt.shape, np.uint8)
    for z, t in [(2, 0), (2, 3), (5, 0)]:
        four_d[:, :, z, t] = gt[:, :, z, t]
    nib.save(nib.Nifti1Image(four_d, affine), str(folder / "annotation.nii.gz"))
    (folder / "info.json").write_text("{}")  # a 4D annotation needs no annotated_phase
    d = _read(folder)
    assert _frames(d) == [(2, 0), (2, 3), (5, 0)]
    assert (d["annotation_slice"], d["annotation_phase"]) == (5, 0)  # middle labelled slice of the first phase
    assert all(
        np.array_equal(lab.numpy(), four_d[:, :, z, t])
        for (z, t), lab in zip(_frames(d), d["anchor_labels"], strict=True)
    )


def test_inferer_returns_every_anchor_exactly_and_reads_them(study: Path) -> None:
    torch.manual_seed(0)
    network = build_cstm("small", **TINY_CSTM).eval()
    gt, affine, info = _truth(study)
    image = torch.as_tensor(np.asarray(nib.load(str(study / "image.nii.gz")).dataobj), dtype=torch.float32)
    frames = [(3, info["ed"]), (3, info["es"]), (5, info["ed"])]
    labels = torch.stack([torch.as_tensor(gt[:, :, z, t]) for z, t in frames])
    inferer = Propagation4DInferer(roi_size=96, spacing=1.2)
    # primary frame: the one the annotation channel's rule picks (first phase, middle labelled slice): (5, ED)
    kwargs = dict(annotation_slice=5, annotation_phase=info["ed"], image_spacing=torch.tensor([[1.8, 1.8]]))
    multi = inferer(
        image[None, None],
        network,
        annotation=labels[2:],
        anchor_frames=torch.tensor(frames)[None],
        anchor_labels=labels[None],
        **kwargs,
    )[0, 0]
    for (z, t), lab in zip(frames, labels, strict=True):
        assert torch.equal(multi[:, :, z, t], lab)
    single = inferer(image[None, None], network, annotation=labels[2:], **kwargs)[0, 0]
    assert not torch.equal(single[:, :, 3, info["es"]], labels[1])  # untrained: only an anchor comes back exactly
    channel = torch.zeros_like(image)
    for (z, t), lab in zip(frames, labels, strict=True):
        channel[:, :, z, t] = lab
    two_channel = inferer(torch.stack([image, channel])[None], network, image_spacing=kwargs["image_spacing"])[0, 0]
    assert torch.equal(two_channel, multi)  # MONAI Label's input: the same anchors from the annotation channel


def test_both_time_directions_fuse_forward_and_backward(study: Path) -> None:
    torch.manual_seed(0)
    network = build_cstm("small", **TINY_CSTM).eval()
    gt, _, info = _truth(study)
    image = torch.as_tensor(np.asarray(nib.load(str(study / "image.nii.gz")).dataobj), dtype=torch.float32)[None, None]
    ann = torch.as_tensor(gt[:, :, 3, info["ed"]])[None]
    kwargs = dict(
        annotation=ann, annotation_slice=3, annotation_phase=info["ed"], image_spacing=torch.tensor([[1.8] * 2])
    )
    forward = Propagation4DInferer(roi_size=96, spacing=1.2)(image, network, **kwargs)[0, 0]
    both = Propagation4DInferer(roi_size=96, spacing=1.2, time_direction="both")(image, network, **kwargs)[0, 0]
    assert torch.equal(both[:, :, 3, info["ed"]], ann[0]) and both.shape == forward.shape
    # the phase after the anchor is propagated 1 step forwards but 5 backwards: the fusion stays near forward there
    nxt = (info["ed"] + 1) % image.shape[-1]
    far = (info["ed"] + 3) % image.shape[-1]
    agree_next = (both[..., nxt] == forward[..., nxt]).float().mean()
    agree_far = (both[..., far] == forward[..., far]).float().mean()
    assert agree_next >= agree_far and not torch.equal(both, forward)


@pytest.mark.parametrize("anchor_memory, added", [(0, 1), (3, 3)])
def test_a_correction_predicts_only_the_frames_whose_memory_chain_changed(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anchor_memory: int, added: int
) -> None:
    """One anchor more than ``added``. With ``anchor_memory`` 3 every frame reads up to 3 anchors: a second anchor is
    read by every frame (all predicted again), a fourth only by the frames it is among the 3 nearest of (and those
    whose chain passes through them); the cache keeps the others."""
    import scripts.inferers.propagation as propagation
    from scripts.inferers.schedule import chain_signatures, plan_propagation

    torch.manual_seed(0)
    network = build_cstm("small", **TINY_CSTM).eval()
    gt, _, info = _truth(study)
    image = torch.as_tensor(np.asarray(nib.load(str(study / "image.nii.gz")).dataobj), dtype=torch.float32)[None, None]
    ed, es = info["ed"], info["es"]
    first = [(3, ed), (3, es), (5, ed)][:added]
    second = [*first, (3, es) if added == 1 else (0, es)]
    predicted: list = []
    real_predict = propagation._predict
    monkeypatch.setattr(
        propagation,
        "_predict",
        lambda net, batch, *a, **k: predicted.extend(batch) or real_predict(net, batch, *a, **k),
    )

    def run(frames: list, cache_dir: Path | None) -> torch.Tensor:
        labels = torch.stack([torch.as_tensor(gt[:, :, z, t]) for z, t in frames])
        inferer = Propagation4DInferer(roi_size=96, spacing=1.2, anchor_memory=anchor_memory, cache_dir=cache_dir)
        predicted.clear()
        return inferer(
            image,
            network,
            annotation=labels[:1],
            annotation_slice=3,
            annotation_phase=ed,
            image_spacing=torch.tensor([[1.8, 1.8]]),
            anchor_frames=torch.tensor(frames)[None],
            anchor_labels=labels[None],
        )[0, 0]

    full = run(first, tmp_path)
    assert len(predicted) == 6 * 6 - len(first)
    assert torch.equal(run(first, tmp_path), full) and not predicted  # the same input again: nothing predicted
    corrected = run(second, tmp_path)
    before, after = (
        chain_signatures(plan_propagation(6, 6, a, anchor_memory=anchor_memory), dict.fromkeys(a, "x"))
        for a in (first, second)
    )
    changed = {f for f in after if f not in second and before.get(f) != after[f]}
    assert set(predicted) == changed and 0 < len(changed) < 6 * 6 - len(second)
    uncached = run(second, None)
    assert (corrected == uncached).float().mean() > 0.999  # kept frames re-encoded from float16 probabilities
