"""4D propagation: padding, the inferer's output contract, memory bookkeeping, batching and a known-motion readout."""

from __future__ import annotations

from itertools import groupby

import pytest
import torch

from helpers import TINY_CSTM
from scripts.inferers import propagation
from scripts.inferers.memory import MemoryBank
from scripts.inferers.propagation import Propagation4DInferer, crop_padding, pad_to_multiple, propagate_4d
from scripts.inferers.schedule import dependency_levels, plan_propagation
from scripts.networks.cstm import CSTM
from scripts.networks.matching import dense_readout


@pytest.fixture(scope="module")
def net() -> CSTM:
    torch.manual_seed(0)
    return CSTM(**TINY_CSTM).eval()


def blocky_annotation(h: int, w: int) -> torch.Tensor:
    ann = torch.zeros(h, w, dtype=torch.long)
    ann[h // 5 : 4 * h // 5, w // 6 : w // 2] = 1
    ann[h // 4 : 3 * h // 4, w // 2 : 5 * w // 6] = 2
    ann[h // 3 : 2 * h // 3, 7 * w // 12 : 3 * w // 4] = 3
    return ann


@pytest.mark.parametrize(
    "shape, multiple", [((50, 70), 48), ((2, 3, 1, 1), 48), ((3, 47, 97), 16), ((96, 144), 48), ((2, 49, 95), 48)]
)
def test_pad_and_crop_round_trip(shape: tuple[int, ...], multiple: int) -> None:
    x = torch.rand(shape) + 1  # no zeros inside, so the padding is visible
    padded, pad = pad_to_multiple(x, multiple)
    h, w = shape[-2:]
    assert padded.shape[:-2] == x.shape[:-2]
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert h <= padded.shape[-2] < h + multiple and w <= padded.shape[-1] < w + multiple
    left, right, top, bottom = pad
    assert 0 <= right - left <= 1 and 0 <= bottom - top <= 1  # symmetric, odd remainder on the far side
    assert padded.eq(0).sum() == padded.numel() - x.numel()  # zeros are exactly the padding
    assert torch.equal(padded[..., top : top + h, left : left + w], x)
    assert torch.equal(crop_padding(padded, pad), x)


def test_inferer_output_contract(net: CSTM) -> None:
    torch.manual_seed(1)
    h, w, z, t = 50, 70, 3, 4
    image = torch.rand(1, 1, h, w, z, t)
    annotation = blocky_annotation(h, w)[None]
    inferer = Propagation4DInferer(roi_size=None, max_batch=8)
    labels = inferer(
        image, net, annotation=annotation, annotation_slice=torch.tensor([1]), annotation_phase=torch.tensor([2])
    )
    assert labels.shape == (1, 1, h, w, z, t) and labels.dtype == torch.uint8
    assert torch.equal(labels[0, 0, :, :, 1, 2], annotation[0].to(torch.uint8))
    assert int(labels.max()) < 4


def test_inferer_with_roi_keeps_the_input_grid(net: CSTM) -> None:
    torch.manual_seed(2)
    h, w, z, t = 50, 70, 2, 2
    image = torch.rand(1, 1, h, w, z, t)
    annotation = blocky_annotation(h, w)[None]
    inferer = Propagation4DInferer(roi_size=96, spacing=0.5, max_batch=8)
    labels = inferer(
        image,
        net,
        annotation=annotation,
        annotation_slice=0,
        annotation_phase=1,
        image_spacing=torch.tensor([[1.0, 1.0]]),
    )
    assert labels.shape == (1, 1, h, w, z, t) and labels.dtype == torch.uint8
    assert torch.equal(labels[0, 0, :, :, 0, 1], annotation[0].to(torch.uint8))
    assert int(labels.max()) < 4


def test_inferer_rejects_bad_input(net: CSTM) -> None:
    inferer = Propagation4DInferer(roi_size=None)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W, Z, T\)"):
        inferer(
            torch.rand(1, 50, 70, 3, 4), net, annotation=torch.zeros(1, 50, 70), annotation_slice=0, annotation_phase=0
        )
    with pytest.raises(ValueError, match="image_spacing"):
        Propagation4DInferer(roi_size=96)(
            torch.rand(1, 1, 50, 70, 3, 4),
            net,
            annotation=torch.zeros(1, 50, 70),
            annotation_slice=0,
            annotation_phase=0,
        )


def _frame_tensors(frames: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """Dummy keys/values whose every entry is the frame's id 10 z + t (4 tensors, (B, C, h, w), different sizes)."""
    ids = torch.tensor([10.0 * z + t for z, t in frames])
    return tuple(
        ids[:, None, None, None].expand(len(frames), c, s, s).clone() for c, s in ((3, 2), (3, 4), (5, 2), (2, 4))
    )


@pytest.mark.parametrize("continuity", ["both", "spatial", "temporal"])
def test_memory_bank_drops_frames_after_their_last_reader(continuity: str) -> None:
    annotated = (2, 1)
    plan = plan_propagation(5, 4, annotated, continuity)
    bank = MemoryBank(plan)
    readers = {f: sum(f in memory for memory in plan.values()) for f in [annotated, *plan]}
    assert all(bank.needed(f) == (n > 0) for f, n in readers.items())
    bank.add([annotated], *_frame_tensors([annotated]))
    stored = {annotated}
    pending = dict(readers)
    for level in dependency_levels(plan, annotated):
        for _, group in groupby(sorted(level, key=lambda f: len(plan[f])), key=lambda f: len(plan[f])):
            batch = list(group)
            memories = [plan[f] for f in batch]
            memory = bank.gather(memories)
            assert memory.key16.shape == (len(batch), 3, len(memories[0]), 2, 2)
            assert memory.value8.shape == (len(batch), 2, len(memories[0]), 4, 4)
            expected = torch.tensor([[10.0 * z + t for z, t in m] for m in memories])  # (B, T)
            for part in memory:
                torch.testing.assert_close(part.amax((1, 3, 4)), expected)
                torch.testing.assert_close(part.amin((1, 3, 4)), expected)
            bank.release(memories)
            for m in memories:
                for f in m:
                    pending[f] -= 1
            keep = [f for f in batch if bank.needed(f)]
            bank.add(keep, *_frame_tensors(keep))
            stored.update(keep)
            # held = exactly the stored frames that still have readers to come
            assert set(bank.frames) == {f for f in stored if pending[f] > 0}
    assert len(bank.frames) == 0
    assert all(n == 0 for n in bank.readers.values())


def test_memory_bank_is_empty_after_propagate_4d(net: CSTM, monkeypatch: pytest.MonkeyPatch) -> None:
    banks: list[MemoryBank] = []

    class SpyBank(MemoryBank):
        def __init__(self, plan):
            super().__init__(plan)
            self.largest = 0
            banks.append(self)

        def add(self, frames, *tensors):
            super().add(frames, *tensors)
            self.largest = max(self.largest, len(self.frames))

    monkeypatch.setattr(propagation, "MemoryBank", SpyBank)
    plan = plan_propagation(4, 3, (1, 0))
    propagate_4d(net, torch.rand(96, 96, 4, 3), {(1, 0): blocky_annotation(96, 96)}, plan, max_batch=4)
    (bank,) = banks
    assert bank.frames == {}
    assert all(n == 0 for n in bank.readers.values())
    assert 0 < bank.largest < 4 * 3 - 1  # never the whole study at once


def test_propagate_4d_keeps_the_annotation_and_fills_every_frame(net: CSTM) -> None:
    torch.manual_seed(3)
    plan = plan_propagation(3, 4, (2, 3))
    ann = blocky_annotation(96, 96)
    trace: list = []
    labels = propagate_4d(net, torch.rand(96, 96, 3, 4), {(2, 3): ann}, plan, max_batch=5, trace=trace)
    assert labels.shape == (96, 96, 3, 4) and labels.dtype == torch.uint8
    assert torch.equal(labels[..., 2, 3], ann.to(torch.uint8))
    assert sorted(f for _, f, _ in trace) == sorted(plan)


def test_max_batch_does_not_change_the_labels(net: CSTM) -> None:
    torch.manual_seed(4)
    image = torch.rand(96, 96, 3, 4)
    ann = blocky_annotation(96, 96)
    plan = plan_propagation(3, 4, (0, 1), "both", base_first=False)
    traces: list[list] = [[], []]
    one = propagate_4d(net, image, {(0, 1): ann}, plan, max_batch=1, trace=traces[0])
    many = propagate_4d(net, image, {(0, 1): ann}, plan, max_batch=64, trace=traces[1])
    assert torch.equal(one, many)
    assert sorted(traces[0]) == sorted(traces[1])  # same frames, same levels, same memory
    assert len({lv for lv, _, _ in traces[1]}) < len(traces[1])  # the large batch did share calls


def test_out_of_memory_halves_the_batch_and_gives_the_same_labels(net: CSTM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that holds 2 query frames per call: larger calls raise CUDA's out-of-memory error, the inferer retries
    in halves and the labels equal those of frame-by-frame propagation."""
    torch.manual_seed(6)
    image, ann = torch.rand(96, 96, 3, 4), blocky_annotation(96, 96)
    plan = plan_propagation(3, 4, (1, 0), "both", base_first=True)
    serial = propagate_4d(net, image, {(1, 0): ann}, plan, max_batch=1)
    segment, sizes = net.segment, []

    def small_device(key, memory):
        sizes.append(key.key16.shape[0])
        if sizes[-1] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return segment(key, memory)

    monkeypatch.setattr(net, "segment", small_device)
    chunked = propagate_4d(net, image, {(1, 0): ann}, plan, max_batch=8)
    assert torch.equal(chunked, serial)
    assert max(sizes) > 2 and 2 in sizes  # it did try large calls, then went on in halves


def test_dense_readout_follows_a_known_motion() -> None:
    """A bright square and a key texture that move 1 px per phase: the readout of phases 0, 1 at phase 2 is the square
    moved twice. Keys are a random texture carried with the content (as encoder features would be), so every query
    pixel has one exact match per memory frame."""
    g = torch.Generator().manual_seed(5)
    texture = 3 * torch.randn(1, 16, 12, 12, generator=g)
    square = torch.zeros(1, 1, 12, 12)
    square[..., 3:7, 2:6] = 1.0
    keys = torch.stack([texture.roll(t, -1) for t in (0, 1)], 2)  # (1, C_k, T=2, 12, 12)
    values = torch.stack([square.roll(t, -1) for t in (0, 1)], 2)  # (1, 1, T=2, 12, 12)
    readout = dense_readout(texture.roll(2, -1), keys, values)
    expected = square.roll(2, -1)
    torch.testing.assert_close(readout, expected, atol=1e-4, rtol=0)
    assert (expected - square.roll(1, -1)).abs().sum() == 8  # differs from copying the last mask
