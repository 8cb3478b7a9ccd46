"""Benchmarks, run on purpose (never from the test suite). From ``cstm_bundle/``:

    python -m scripts.benchmarks matching [--size 384] [--device cuda] [--repeats 7] [--threads 1]
    python -m scripts.benchmarks inference [--sizes 240,384] [--variants small,full] [--device cuda] [--amp true]
    python -m scripts.benchmarks correction [--checkpoint models/model.pt] [--device cuda]
    python -m scripts.benchmarks training [--variant small] [--batch 8] [--steps 6] [--threads 1] [--device cuda]

``matching`` times one memory readout (all configured strides) of the full variant's channel widths (C_k = 32,
C_v = 512 at stride 16 and 256 at stride 8) for PLMM (strides 16 + 8), dense (16 + 8) and dense (16 only, STCN), for
T = 2 and 3 memory frames, and prints a table with ratios to dense (16 + 8). The three cases are timed in turns in one
process (median of the rounds), so that other jobs on a shared machine slow them alike. Peak memory: the peak of the
bytes held by torch's allocator during one readout, above its inputs (CUDA: ``max_memory_allocated``; CPU: the torch
profiler's allocation records). ``inference`` runs each case in a fresh subprocess and reports peak resident memory
(Linux ``ru_maxrss``) above the resident memory before the run on CPU.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time

import fire
import torch

from .networks.matching import PatchMemoryMatcher

logger = logging.getLogger(__name__)

CASES = {"plm 16+8": ("plm", (16, 8)), "dense 16+8": ("dense", (16, 8)), "dense 16 (STCN)": ("dense", (16,))}
KEY_CHANNELS, VALUE_CHANNELS = 32, {16: 512, 8: 256}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _cpu_peak_mib(fn) -> float:
    """Peak of the bytes held by torch's CPU allocator while ``fn()`` runs (torch profiler allocation records)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    held = peak = 0
    for e in events:
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


def matching_cases(
    size: int = 384,
    memory_frames: int = 2,
    device: str = "cpu",
    repeats: int = 7,
    patch_size: int = 6,
    top_k: int = 4,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Time and peak memory of every readout configuration of :data:`CASES` (one query frame); case -> ms and MiB.

    The cases are timed in turns (one readout of each case per round, ``repeats`` rounds, median), so that load from
    other processes on a shared machine falls on all of them alike. Peak memory is measured once per case. ``threads``
    sets torch's intra-op threads (CPU; None keeps the default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dev)

    q = {s: rand(1, KEY_CHANNELS, size // s, size // s) for s in (16, 8)}
    k = {s: rand(1, KEY_CHANNELS, memory_frames, size // s, size // s) for s in (16, 8)}
    v = {s: rand(1, VALUE_CHANNELS[s], memory_frames, size // s, size // s) for s in (16, 8)}
    matchers = {case: PatchMemoryMatcher(mode, patch_size, top_k, strides) for case, (mode, strides) in CASES.items()}
    peaks: dict[str, float] = {}
    times: dict[str, list[float]] = {case: [] for case in CASES}
    with torch.no_grad():
        for case, matcher in matchers.items():
            matcher(q, k, v)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                matcher(q, k, v)
                peaks[case] = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                peaks[case] = _cpu_peak_mib(lambda: matcher(q, k, v))
        for _ in range(repeats):
            for case, matcher in matchers.items():
                start = time.perf_counter()
                matcher(q, k, v)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[case].append(time.perf_counter() - start)
    return {case: {"ms": 1000 * sorted(times[case])[len(times[case]) // 2], "peak_mib": peaks[case]} for case in CASES}


def matching(size: int = 384, device: str = "cpu", repeats: int = 7, threads: int | None = None) -> None:
    """Print the readout table: median ms and peak MiB per case, with ratios to dense 16+8 (one process per T)."""
    rows = []
    for frames in (2, 3):
        results = _in_subprocess("matching_cases", size, frames, device, repeats, 6, 4, threads)
        ref = results["dense 16+8"]
        for case, r in results.items():
            rows.append(
                f"| {frames} | {case} | {r['ms']:.1f} | {r['ms'] / ref['ms']:.2f} | {r['peak_mib']:.1f} | "
                f"{r['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f} |"
            )
    threads = threads or torch.get_num_threads()
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {threads} threads"
    table = "\n".join(
        [
            f"Memory readout, one {size}x{size} query frame, full-variant widths, fp32, {name}",
            "| T | matching | ms | time vs dense 16+8 | peak MiB | memory vs dense 16+8 |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)


def inference_case(
    variant: str,
    size: int,
    max_batch: int,
    device: str = "cpu",
    amp: bool = False,
    num_slices: int = 12,
    num_phases: int = 30,
) -> dict[str, float]:
    """Whole-study 4D propagation of one phantom study at ROI size ``size``; returns frames/s and peak MiB."""
    from .data.phantom import make_phantom_study
    from .inferers import Propagation4DInferer
    from .networks import build_cstm

    dev = torch.device(device)
    study = make_phantom_study(seed=0, num_slices=num_slices, num_phases=num_phases)
    image = torch.as_tensor(study.image)[None, None].to(dev)  # (1, 1, H, W, Z, T)
    z_a = num_slices // 2
    annotation = torch.as_tensor(study.label[:, :, z_a, study.ed])[None].to(dev)
    network = build_cstm(variant).to(dev).eval()
    roi_mm = 192 * 0.9  # the default ROI (173 mm), sampled at ``size`` pixels
    inferer = Propagation4DInferer(roi_size=size, spacing=roi_mm / size, max_batch=max_batch, amp=amp)
    kwargs = dict(
        annotation=annotation, annotation_slice=z_a, annotation_phase=study.ed, image_spacing=torch.tensor([[1.8, 1.8]])
    )
    if dev.type == "cuda":
        inferer(image, network, **kwargs)  # warm-up (cuDNN autotuning, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    start = time.perf_counter()
    inferer(image, network, **kwargs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    seconds = time.perf_counter() - start
    return {"fps": num_slices * num_phases / seconds, "seconds": seconds, "peak_mib": peak}


def _in_subprocess(fn: str, *args: object) -> dict:
    code = (
        f"import json; from scripts.benchmarks import {fn}; "
        f"print(json.dumps({fn}(*json.loads({json.dumps(list(args))!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _items(value: object) -> list[str]:
    """A comma-separated command-line list: fire passes ``240,384`` as a tuple, ``small,full`` as a string."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def inference(
    sizes: str = "240,384", variants: str = "small,full", device: str = "cpu", amp: bool = False, serial: bool = True
) -> None:
    """Print whole-study frames/s and peak memory of the 4D propagation (12 slices × 30 phases), batched (all frames
    whose memory is ready in one call) vs frame by frame (``max_batch=1``, the paper's serial order)."""
    rows = []
    for variant in _items(variants):
        for size in map(int, _items(sizes)):
            batched = _in_subprocess("inference_case", variant, size, 64, device, amp)
            line = f"| {variant} | {size} | {batched['fps']:.1f} | {batched['peak_mib']:.0f} |"
            if serial:
                one = _in_subprocess("inference_case", variant, size, 1, device, amp)
                line += f" {one['fps']:.1f} | {one['peak_mib']:.0f} | {batched['fps'] / one['fps']:.2f} |"
            rows.append(line)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(
        "\n".join(
            [
                f"4D propagation of a 12-slice x 30-phase study (360 frames), {name}, {'AMP' if amp else 'fp32'}",
                "| variant | ROI px | batched frames/s | batched peak MiB | serial frames/s | serial peak MiB | batched/serial |",
                "|---|---|---|---|---|---|---|",
                *rows,
            ]
        )
    )


def correction(checkpoint: str = "models/model.pt", device: str = "cpu", repeats: int = 3) -> None:
    """Time a correction against a full run on a 10-slice x 25-phase phantom: the first run propagates from the ED
    middle slice into a fresh ``cache_dir``; each correction adds one annotated frame (its ground truth) and reruns
    with the cache (:class:`~scripts.inferers.cache.PropagationCache`). Prints seconds and frames predicted."""
    import tempfile

    from .data.phantom import make_phantom_study
    from .inferers import Propagation4DInferer
    from .networks import build_cstm_from_checkpoint, read_checkpoint, recorded_roi, state_dict_of

    dev = torch.device(device)
    study = make_phantom_study(seed=0, num_slices=10, num_phases=25)
    image = torch.as_tensor(study.image)[None, None].to(dev)
    network = build_cstm_from_checkpoint(checkpoint)
    network.load_state_dict(state_dict_of(read_checkpoint(checkpoint)))
    network = network.to(dev).eval()
    roi = recorded_roi(checkpoint)
    z_a, ed, es = 5, study.ed, study.es
    corrections = {"ES, middle slice": (z_a, es), "ED, apical slice": (8, ed), "mid-systole, basal slice": (1, es // 2)}

    def run(frames: list, cache_dir: str | None) -> float:
        labels = torch.stack([torch.as_tensor(study.label[:, :, z, t]) for z, t in frames]).to(dev)
        inferer = Propagation4DInferer(roi_size=roi["roi_size"], spacing=roi["spacing"], cache_dir=cache_dir)
        start = time.perf_counter()
        inferer(
            image,
            network,
            annotation=labels[:1],
            annotation_slice=z_a,
            annotation_phase=ed,
            image_spacing=torch.tensor([[1.8, 1.8]]),
            anchor_frames=torch.tensor(frames)[None],
            anchor_labels=labels[None],
        )
        return time.perf_counter() - start

    rows = []
    for name, frame in corrections.items():
        full, fix = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                full.append(run([(z_a, ed)], cache))
                fix.append(run([(z_a, ed), frame], cache))
        f, c = sorted(full)[repeats // 2], sorted(fix)[repeats // 2]
        rows.append(f"| {name} {frame} | {f:.2f} | {c:.2f} | {c / f:.2f} |")
    print(
        "\n".join(
            [
                f"Correction vs full run, 10 x 25 phantom (250 frames), {device}, {torch.get_num_threads()} threads,"
                f" median of {repeats}",
                "| added frame (z, t) | full run s | correction s | correction / full |",
                "|---|---|---|---|",
                *rows,
            ]
        )
    )


TRAINING_CASES = {
    "fp32": (False, False),
    "bf16 autocast": (True, False),
    "channels-last": (False, True),
    "bf16 + channels-last": (True, True),
}
"""Name -> (autocast, channels-last) of the training-step cases (autocast: bfloat16 on a CPU, float16 on CUDA)."""


def training(
    variant: str = "small",
    batch: int = 8,
    steps: int = 6,
    size: int = 192,
    threads: int | None = 1,
    device: str = "cpu",
) -> None:
    """Time one training step (:func:`~scripts.engines.trainer.propagate_triplet`, loss, backward, Adam) of ``batch``
    three-frame samples at ``size`` px for each of :data:`TRAINING_CASES`, the cases in turns (median over ``steps``
    after one warm-up step each), and print triplets/s with the ratio to fp32 and the loss of the same batch (equal
    losses: the cases compute the same step)."""
    import torch.nn.functional as F

    from .engines.trainer import propagate_triplet
    from .networks import build_cstm

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    frames = torch.rand((batch, 3, 1, size, size), device=dev)
    masks = torch.zeros((batch, 3, size, size), dtype=torch.long, device=dev)
    masks[:, :, size // 3 : size // 2, size // 3 : size // 2] = 3
    networks, optimizers, times, losses = {}, {}, {name: [] for name in TRAINING_CASES}, {}
    for name, (_, channels_last) in TRAINING_CASES.items():
        torch.manual_seed(0)
        net = build_cstm(variant).to(dev).train()
        networks[name] = net.to(memory_format=torch.channels_last) if channels_last else net
        optimizers[name] = torch.optim.Adam(networks[name].parameters(), lr=1e-4)

    def step(name: str) -> float:
        autocast, channels_last = TRAINING_CASES[name]
        x = frames
        if channels_last:  # (B*3, 1, H, W) in channels-last strides, viewed back as (B, 3, 1, H, W)
            x = frames.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (batch, 3))
        start = time.perf_counter()
        optimizers[name].zero_grad(set_to_none=True)
        with torch.autocast(dev.type, enabled=autocast):
            logits2, logits3 = propagate_triplet(networks[name], x, masks[:, 0])
            loss = F.cross_entropy(logits2.float(), masks[:, 1]) + F.cross_entropy(logits3.float(), masks[:, 2])
        loss.backward()
        optimizers[name].step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        losses.setdefault(name, float(loss.detach()))
        return time.perf_counter() - start

    for name in TRAINING_CASES:
        step(name)  # warm-up
    for _ in range(steps):
        for name in TRAINING_CASES:
            times[name].append(step(name))
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows = [
        f"| {name} | {median[name]:.2f} | {batch / median[name]:.1f} | {median['fp32'] / median[name]:.2f} |"
        f" {losses[name]:.4f} |"
        for name in TRAINING_CASES
    ]
    print(
        "\n".join(
            [
                f"Training step, {variant} variant, {batch} triplets of {size} px, {where}, median of {steps}",
                "| case | s / step | triplets / s | speed-up | first loss |",
                "|---|---|---|---|---|",
                *rows,
            ]
        )
    )


if __name__ == "__main__":
    fire.Fire({"matching": matching, "inference": inference, "correction": correction, "training": training})
