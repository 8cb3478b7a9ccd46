"""The propagation cache: what its key holds, that the heart ROI (and so the cache) survives a correction whichever
frame becomes the primary one, and that the folder stays bounded (least recently used evicted first)."""

from __future__ import annotations

import inspect
import os
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from helpers import TINY_CSTM
from scripts.data.phantom import make_phantom_study
from scripts.inferers import QC_CONFIDENCE, Propagation4DInferer
from scripts.inferers import propagation as propagation_module
from scripts.inferers.cache import PropagationCache
from scripts.inferers.propagation import annotated_frame
from scripts.inferers.schedule import chain_signatures, plan_propagation
from scripts.networks import build_cstm
from scripts.settings import check_cache_dir

ALTERNATIVES = {
    "continuity": "spatial",
    "time_memory_size": 3,
    "slice_memory_size": 3,
    "anchor_memory": 0,
    "base_first": False,
    "roi_size": 144,
    "spacing": 1.0,
    "amp": True,
}
"""A second value of every constructor argument of the inferer that changes a frame's probabilities."""

NEUTRAL_ALTERNATIVES = {
    "max_batch": 3,
    "progress": True,
    "largest_component": True,
    "fill_holes": True,
    "time_direction": "both",
    "cache_max_gb": 50.0,
}
"""A second value of the arguments that :data:`Propagation4DInferer.CACHE_NEUTRAL` leaves out of the key (``cache_dir``
is varied by the test itself)."""

SPACING = torch.tensor([[1.8, 1.8]])


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_cstm("small", **TINY_CSTM).eval()


@pytest.fixture(scope="module")
def study() -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, 1, H, W, Z, T) and labels (H, W, Z, T) of a 6-slice, 6-phase phantom."""
    s = make_phantom_study(5, image_size=(64, 64), num_slices=6, num_phases=6)
    return torch.as_tensor(s.image)[None, None], torch.as_tensor(s.label)


def _run(
    inferer: Propagation4DInferer, network: torch.nn.Module, study: tuple, frames: list, primary: tuple | None = None
) -> torch.Tensor:
    """The inferer on the phantom with ``frames`` (z, t) annotated from its labels; ``primary`` is passed as the
    ``annotation`` (default: the first frame)."""
    image, label = study
    labels = torch.stack([label[:, :, z, t] for z, t in frames])
    z, t = primary or frames[0]
    return inferer(
        image,
        network,
        annotation=label[:, :, z, t][None],
        annotation_slice=z,
        annotation_phase=t,
        image_spacing=SPACING,
        anchor_frames=torch.tensor(frames)[None],
        anchor_labels=labels[None],
    )


def _entry_files(folder: Path) -> list[Path]:
    """The cache entries of a folder (not the hidden temporary files of a write)."""
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith("."))


def _entries(folder: Path) -> dict[str, torch.Tensor]:
    """Entry file name -> its probabilities."""
    return {p.name: torch.load(p, weights_only=True)["probabilities"] for p in _entry_files(folder)}


def test_every_constructor_argument_is_in_the_key_or_declared_neutral(
    network: torch.nn.Module, study: tuple, tmp_path: Path
) -> None:
    params = set(inspect.signature(Propagation4DInferer.__init__).parameters) - {"self"}
    neutral = set(Propagation4DInferer.CACHE_NEUTRAL)
    # a new argument fails here until it is given an alternative value below (it is then in the key by default) or
    # declared neutral with a reason
    assert set(ALTERNATIVES) == params - neutral and set(NEUTRAL_ALTERNATIVES) | {"cache_dir"} == neutral
    cache = PropagationCache(tmp_path)
    frames = torch.rand(2, 3, 48, 48)

    def key(inferer: Propagation4DInferer, device: str = "cpu", net: torch.nn.Module = network) -> str:
        return cache.key(net, frames, inferer.cache_settings(torch.device(device)), False)

    base = key(Propagation4DInferer())
    for name, value in ALTERNATIVES.items():
        assert key(Propagation4DInferer(**{name: value})) != base, name
    for name, value in NEUTRAL_ALTERNATIVES.items():
        assert key(Propagation4DInferer(**{name: value})) == base, name
    assert key(Propagation4DInferer(), device="cuda") != base  # device type: other kernels, amp float16
    assert key(Propagation4DInferer(amp=True), device="cuda") != key(Propagation4DInferer(amp=True))
    other_k = build_cstm("small", **TINY_CSTM, top_k=1).eval()
    other_k.load_state_dict(network.state_dict())  # the same weights, another recorded top_k
    assert key(Propagation4DInferer(), net=other_k) != base
    changed = build_cstm("small", **TINY_CSTM).eval()
    changed.load_state_dict(network.state_dict())
    before = key(Propagation4DInferer(), net=changed)
    assert before == base
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)  # weights changed in place, after a key was computed
    assert key(Propagation4DInferer(), net=changed) != base
    assert cache.key(network, frames + 1e-3, Propagation4DInferer().cache_settings(torch.device("cpu")), False) != base
    assert cache.key(network, frames, Propagation4DInferer().cache_settings(torch.device("cpu")), True) != base


def test_neutral_arguments_leave_the_stored_entry_unchanged(
    network: torch.nn.Module, study: tuple, tmp_path: Path
) -> None:
    frames = [(3, 0)]
    _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path / "base"), network, study, frames)
    (name, base), *_ = _entries(tmp_path / "base").items()
    for arg, value in NEUTRAL_ALTERNATIVES.items():
        inferer = Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path / arg, **{arg: value})
        _run(inferer, network, study, frames)
        entries = _entries(tmp_path / arg)
        assert name in entries and torch.allclose(entries[name].float(), base.float(), atol=2e-3), arg


def test_an_fp32_run_does_not_return_the_cached_bf16_result(
    network: torch.nn.Module, study: tuple, tmp_path: Path
) -> None:
    """Issue 31 item 5: the key left out ``amp``, so an fp32 run after an amp (bfloat16 on CPU) run returned the
    amp probabilities."""
    frames = [(3, 0)]
    amp = _run(Propagation4DInferer(roi_size=96, spacing=1.2, amp=True, cache_dir=tmp_path), network, study, frames)
    fp32 = _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), network, study, frames)
    fresh = _run(Propagation4DInferer(roi_size=96, spacing=1.2), network, study, frames)
    assert not torch.equal(amp.meta[QC_CONFIDENCE], fresh.meta[QC_CONFIDENCE])  # bf16 differs: the test can fail
    assert torch.equal(fp32.meta[QC_CONFIDENCE], fresh.meta[QC_CONFIDENCE]) and torch.equal(fp32, fresh)
    assert len(_entry_files(tmp_path)) == 2


def test_the_network_recorded_arguments_are_in_the_key(network: torch.nn.Module, study: tuple, tmp_path: Path) -> None:
    """Two networks with the same weights but another recorded top-K must not share entries."""
    other = build_cstm("small", **TINY_CSTM, top_k=1).eval()
    other.load_state_dict(network.state_dict())
    frames = [(3, 0)]
    first = _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), network, study, frames)
    second = _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), other, study, frames)
    fresh = _run(Propagation4DInferer(roi_size=96, spacing=1.2), other, study, frames)
    assert not torch.equal(first.meta[QC_CONFIDENCE], fresh.meta[QC_CONFIDENCE])
    assert torch.equal(second.meta[QC_CONFIDENCE], fresh.meta[QC_CONFIDENCE])


def test_a_correction_on_another_slice_that_becomes_the_primary_keeps_the_roi_and_the_cache(
    network: torch.nn.Module, study: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31 item 5: an ED frame added on another slice became the primary frame (the middle labelled slice of the
    first phase, :func:`annotated_frame`), moved the ROI, and every frame was predicted again. ``anchor_memory=0``:
    with more, every frame reads the added anchor and is predicted again anyway (tests/unit/test_anchors.py)."""
    predicted: list = []
    real = propagation_module._predict
    monkeypatch.setattr(
        propagation_module, "_predict", lambda net, batch, *a, **k: predicted.extend(batch) or real(net, batch, *a, **k)
    )
    first, second = [(3, 0)], [(3, 0), (5, 0)]
    channel = torch.zeros_like(study[1])
    for z, t in second:
        channel[:, :, z, t] = study[1][:, :, z, t]
    assert annotated_frame(channel)[1:] == (5, 0)  # the added frame is now the primary one
    inferer = Propagation4DInferer(roi_size=96, spacing=1.2, anchor_memory=0, cache_dir=tmp_path)
    _run(inferer, network, study, first)
    predicted.clear()
    corrected = _run(inferer, network, study, second, primary=(5, 0))
    before, after = (
        chain_signatures(plan_propagation(6, 6, a, anchor_memory=0), dict.fromkeys(a, "x")) for a in (first, second)
    )
    changed = {f for f in after if f not in second and before.get(f) != after[f]}
    assert set(predicted) == changed and 0 < len(changed) < 6 * 6 - 2  # not every frame: the ROI did not move
    fresh = _run(
        Propagation4DInferer(roi_size=96, spacing=1.2, anchor_memory=0), network, study, second, primary=(3, 0)
    )
    assert (corrected == fresh).float().mean() > 0.999  # and the primary frame does not matter


def _entry(cache: PropagationCache, key: str, mtime: float) -> Path:
    path = cache.save(key, {(0, 0): "a"}, torch.zeros(1, 1, 4, 50, 50))  # 20 kB of float16
    os.utime(path, (mtime, mtime))
    return path


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    cache = PropagationCache(tmp_path, max_gb=70e-6)  # 70 kB: three 20 kB entries
    now = time.time()
    old = [_entry(cache, f"{i:032x}", now - 100 + i) for i in range(3)]
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"x" * 100_000)
    stale = tmp_path / f".{'f' * 32}.abc.tmp.pt"
    fresh_tmp = tmp_path / f".{'e' * 32}.abd.tmp.pt"
    for path, age in ((stale, 2 * 3600), (fresh_tmp, 10)):
        path.write_bytes(b"y")
        os.utime(path, (now - age, now - age))
    assert cache.load(old[0].stem) is not None  # a read marks entry 0 as used now: entry 1 is the oldest
    new = cache.save("a" * 32, {(0, 0): "b"}, torch.zeros(1, 1, 4, 50, 50))
    assert not old[1].exists() and old[0].exists() and old[2].exists() and new.exists()
    assert sum(p.stat().st_size for p in _entry_files(tmp_path)) <= 70e3
    assert junk.exists() and fresh_tmp.exists() and not stale.exists()  # files not ours stay; a killed run's go
    tiny = PropagationCache(tmp_path, max_gb=1e-9)
    last = tiny.save("b" * 32, {(0, 0): "c"}, torch.zeros(1, 1, 4, 50, 50))
    assert last.exists() and _entry_files(tmp_path) == [last]  # never the entry just written
    with pytest.raises(ValueError, match="max_gb"):
        PropagationCache(tmp_path, max_gb=0)


def test_concurrent_runs_share_a_bounded_folder(tmp_path: Path) -> None:
    errors: list[Exception] = []

    def writer(prefix: str) -> None:
        cache = PropagationCache(tmp_path, max_gb=70e-6)
        try:
            for i in range(15):
                key = f"{prefix}{i:031x}"
                cache.save(key, {(0, 0): key}, torch.full((1, 1, 4, 50, 50), float(i)))
                cache.load(f"{'1' if prefix == '0' else '0'}{i:031x}")  # the other run's entry, maybe evicted
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in "01"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    remaining = _entry_files(tmp_path)
    assert 1 <= len(remaining) <= 4  # three fit, plus at most one the other run had just written
    for path in remaining:
        assert PropagationCache(tmp_path).load(path.stem) is not None


def test_a_read_only_cache_that_holds_the_answer_serves_it(
    network: torch.nn.Module, study: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 31 item 3: a read-only cache could not be used at all (every run wrote its entry again)."""
    frames = [(3, 0)]
    first = _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), network, study, frames)
    access = os.access
    with mock.patch("os.access", lambda path, mode: Path(path) != tmp_path and access(path, mode)):
        check_cache_dir(tmp_path)  # a warning, not an error
    assert "read-only" in caplog.text

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    with mock.patch.object(PropagationCache, "save", refuse):
        again = _run(Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), network, study, frames)
        assert torch.equal(again, first)  # served from the cache, nothing to write
        more = _run(
            Propagation4DInferer(roi_size=96, spacing=1.2, cache_dir=tmp_path), network, study, [*frames, (1, 2)]
        )
    assert "not kept" in caplog.text and more.shape == first.shape  # a new result stands, unkept
