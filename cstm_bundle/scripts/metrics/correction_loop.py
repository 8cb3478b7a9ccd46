"""The simulated correction loop: how much a user's corrections help, the measure interactive segmentation tools are
compared by. From ``cstm_bundle/``::

    python -m scripts.metrics.correction_loop --split validation [--rounds 3] [--strategies qc,random,oracle]
        [--checkpoint models/model.pt] [--anchor_memory 3] [--max_studies N] [--output_dir outputs/correction_loop]

For every study of the split: propagate from the ED middle-slice label (round 0), then ``rounds`` times take one frame
that has ground truth (a fully labelled ED or ES slice that is not yet annotated), add its ground truth as an
annotated frame and rerun with the propagation cache (``--cache_dir``: only the frames whose memory chain changed are
predicted again). Which frame, by strategy:

- ``qc``: the lowest quality score among those frames (what ``qc.json``'s ``correct_next`` names, restricted to the
  frames a simulation can correct: :func:`~scripts.metrics.quality.frame_quality`);
- ``random``: one of them at random (seeded);
- ``oracle``: the one of lowest Dice (the best a frame chooser could do by Dice).

After each round: ED and ES whole-heart Dice (2D, mean over the classes drawn, over the frames that have ground truth
and are not annotated, then over studies), the change of Dice of the corrected frame's neighbours (± 1 slice, ± 2
phases, among the frames with ground truth; the change from the round before, averaged over the corrections), and
the seconds of the rerun against the first full run. Prints the table; writes ``rounds.csv`` (one row per study,
strategy and round) and ``summary.json`` to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import convert_to_numpy as to_numpy

from ..data.study import read_info
from ..inferers.propagation import QC_CONFIDENCE, QC_DISAGREEMENT
from ..inferers.schedule import Frame
from ..io import SafeDictWriter, save_json, write_atomic
from ..networks.weights import read_checkpoint, state_dict_of
from .quality import frame_quality
from .report import class_mean_dice, scored_slices

logger = logging.getLogger(__name__)

STRATEGIES = ("qc", "random", "oracle")
ROUND_COLUMNS = (
    "study",
    "strategy",
    "round",
    "corrected_z",
    "corrected_t",
    "ed_dice",
    "es_dice",
    "neighbour_delta",
    "seconds",
    "seconds_full",
)
CONFIGS = ("inference.json", "evaluate.json", "evaluate_acdc.json")


def truth_frames(label: np.ndarray, info: Mapping[str, Any], ed: int, es: int, study: str) -> dict[Frame, list[int]]:
    """The frames a simulation can score and correct: every fully labelled ED and ES slice.

    Args:
        label: (H, W, Z, T) ground truth, :data:`~scripts.data.UNLABELLED` where there is none.
    Returns:
        (z, t) -> the classes the truth draws there.
    """
    frames: dict[Frame, list[int]] = {}
    for phase, t in (("ed", ed), ("es", es)):
        for c, zs in scored_slices(label, info, phase, t, study=study).items():
            for z in zs:
                frames.setdefault((z, t), []).append(c)
    return {f: sorted(classes) for f, classes in frames.items()}


def frame_dice(pred: np.ndarray, label: np.ndarray, frames: Mapping[Frame, Sequence[int]]) -> dict[Frame, float]:
    """2D Dice of every frame of ``frames`` (mean over its drawn classes present in the prediction or the truth)."""
    out = {}
    for (z, t), classes in frames.items():
        dice = class_mean_dice(pred[:, :, z, t], label[:, :, z, t], classes)
        if dice is not None:
            out[z, t] = dice
    return out


def choose_frame(
    strategy: str,
    candidates: Sequence[Frame],
    dice: Mapping[Frame, float],
    scores: Mapping[Frame, float],
    rng: random.Random,
) -> Frame:
    """The frame to correct next among ``candidates`` (frames with ground truth, not annotated).

    Args:
        strategy: :data:`STRATEGIES`.
        dice: frame -> Dice of the current prediction; scores: frame -> quality score (``qc.csv``'s ``score``).
    """
    if strategy == "qc":
        return min(candidates, key=lambda f: (scores[f], f))
    if strategy == "oracle":
        return min(candidates, key=lambda f: (dice.get(f, 1.0), f))
    if strategy == "random":
        return rng.choice(sorted(candidates))
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")


def neighbours(frame: Frame, frames: Sequence[Frame], num_phases: int) -> list[Frame]:
    """The frames of ``frames`` within ± 1 slice and ± 2 phases (cyclic) of ``frame``, itself excluded."""
    z0, t0 = frame
    near = []
    for z, t in frames:
        dt = abs(t - t0) % num_phases
        if (z, t) != frame and abs(z - z0) <= 1 and min(dt, num_phases - dt) <= 2:
            near.append((z, t))
    return near


def _phase_mean(dice: Mapping[Frame, float], t: int, skip: set[Frame]) -> float | None:
    values = [d for f, d in dice.items() if f[1] == t and f not in skip]
    return float(np.mean(values)) if values else None


class CorrectionLoop:
    """Runs the loop of one study for each strategy (module docstring).

    Args:
        network: the CSTM network in eval mode.
        make_inferer: cache folder -> a :class:`~scripts.inferers.Propagation4DInferer` that keeps its propagation
            there (one fresh folder per study and strategy).
        rounds: corrections per study.
        strategies: :data:`STRATEGIES` to run.
        seed: of the random strategy.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        make_inferer: Any,
        rounds: int = 3,
        strategies: Sequence[str] = STRATEGIES,
        seed: int = 0,
    ):
        unknown = set(strategies) - set(STRATEGIES)
        if unknown or not strategies:
            raise ValueError(f"strategies must be a non-empty subset of {STRATEGIES}, got {list(strategies)}.")
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}.")
        self.network, self.make_inferer = network, make_inferer
        self.rounds, self.strategies, self.seed = rounds, tuple(strategies), seed

    def _run(self, inferer: Any, d: Mapping[str, Any], anchors: list[Frame], labels: list[np.ndarray]) -> Any:
        device = next(self.network.parameters()).device
        frames = torch.as_tensor(anchors, dtype=torch.long)[None]
        stacked = torch.as_tensor(np.stack(labels))[None].to(device)
        return inferer(
            torch.as_tensor(d["image"])[None].to(device),
            self.network,
            annotation=stacked[:, 0],
            annotation_slice=anchors[0][0],
            annotation_phase=anchors[0][1],
            image_spacing=torch.as_tensor(d["image_spacing"])[None],
            base_first=d["base_first"],
            anchor_frames=frames,
            anchor_labels=stacked,
        )

    def study(self, d: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows (:data:`ROUND_COLUMNS`) of one preprocessed study (``LoadStudyd`` with labels and its anchor)."""
        label = to_numpy(d["label"])[0]  # (H, W, Z, T)
        ed, es = int(d["ed"]), int(d["es"])
        info = read_info(d["study_dir"])
        truth = truth_frames(label, info, ed, es, d["study_dir"])
        start = [(int(z), int(t)) for z, t in to_numpy(d["anchor_frames"]).reshape(-1, 2)]
        start_labels = list(to_numpy(d["anchor_labels"]))
        rows = []
        for s, strategy in enumerate(self.strategies):
            rng = random.Random(f"{self.seed}-{d['study']}")
            anchors, labels = list(start), list(start_labels)
            with tempfile.TemporaryDirectory() as cache:
                inferer = self.make_inferer(cache)
                previous: dict[Frame, float] = {}
                scores: dict[Frame, float] = {}
                full = None
                for r in range(self.rounds + 1):
                    corrected = None
                    if r:
                        candidates = [f for f in truth if f not in anchors]
                        if not candidates:
                            break
                        corrected = choose_frame(strategy, candidates, previous, scores, rng)
                        anchors.append(corrected)
                        labels.append(label[:, :, corrected[0], corrected[1]].astype(np.uint8))
                    tick = time.perf_counter()
                    pred = self._run(inferer, d, anchors, labels)
                    seconds = time.perf_counter() - tick
                    full = seconds if r == 0 else full
                    pred_labels = to_numpy(pred)[0, 0]  # (H, W, Z, T)
                    confidence = to_numpy(pred.meta[QC_CONFIDENCE])[0]  # (Z, T)
                    disagreement = to_numpy(pred.meta[QC_DISAGREEMENT])[0]
                    qc = frame_quality(pred_labels, confidence, disagreement, anchors, bool(d["base_first"]))
                    scores = {(row["z"], row["t"]): row["score"] for row in qc}
                    dice = frame_dice(pred_labels, label, truth)
                    delta = None
                    if corrected is not None:
                        near = [f for f in neighbours(corrected, list(truth), label.shape[3]) if f not in anchors]
                        pairs = [(dice[f], previous[f]) for f in near if f in dice and f in previous]
                        delta = float(np.mean([a - b for a, b in pairs])) if pairs else None
                    skip = set(anchors)
                    rows.append(
                        {
                            "study": d["study"],
                            "strategy": strategy,
                            "round": r,
                            "corrected_z": None if corrected is None else corrected[0],
                            "corrected_t": None if corrected is None else corrected[1],
                            "ed_dice": _phase_mean(dice, ed, skip),
                            "es_dice": _phase_mean(dice, es, skip) if es != ed else None,
                            "neighbour_delta": delta,
                            "seconds": round(seconds, 3),
                            "seconds_full": round(full, 3),
                        }
                    )
                    previous = dice
            es_dice = [row["es_dice"] for row in rows if row["strategy"] == strategy]
            logger.info(
                f"{d['study']}: {strategy} ({s + 1}/{len(self.strategies)}): ES Dice "
                + " -> ".join("-" if v is None else f"{v:.3f}" for v in es_dice)
            )
        return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, float | int | None]]]:
    """Per strategy and round: mean ED and ES Dice over studies, mean neighbour change, mean seconds of a correction
    and its mean ratio to the study's full run."""

    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    out: dict[str, dict[int, dict[str, float | int | None]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        for rnd in sorted({r["round"] for r in rows if r["strategy"] == strategy}):
            sel = [r for r in rows if r["strategy"] == strategy and r["round"] == rnd]
            out.setdefault(strategy, {})[rnd] = {
                "studies": len(sel),
                "ed_dice": mean([r["ed_dice"] for r in sel]),
                "es_dice": mean([r["es_dice"] for r in sel]),
                "neighbour_delta": mean([r["neighbour_delta"] for r in sel]),
                "seconds": mean([r["seconds"] for r in sel]),
                "rerun_ratio": mean([r["seconds"] / r["seconds_full"] for r in sel]) if rnd else None,
            }
    return out


def format_summary(summary: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> str:
    """The loop's table: one row per strategy and round."""

    def cell(value: Any, digits: int = 3) -> str:
        return "-" if value is None else (f"{value:+.{digits}f}" if digits == 4 else f"{value:.{digits}f}")

    lines = [
        "| strategy | corrections | studies | ED Dice | ES Dice | neighbours ΔDice | s per run | rerun / full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for strategy, rounds in summary.items():
        for rnd, m in rounds.items():
            lines.append(
                f"| {strategy} | {rnd} | {m['studies']} | {cell(m['ed_dice'])} | {cell(m['es_dice'])} | "
                f"{cell(m['neighbour_delta'], 4)} | {cell(m['seconds'], 2)} | {cell(m['rerun_ratio'], 2)} |"
            )
    return "\n".join(lines)


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = SafeDictWriter(f, fieldnames=ROUND_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write, overwrite=True)


def main(
    split: str = "validation",
    rounds: int = 3,
    strategies: str | Sequence[str] = STRATEGIES,
    checkpoint: str = "models/model.pt",
    max_studies: int | None = None,
    output_dir: str = "outputs/correction_loop",
    seed: int = 0,
    device: str = "cpu",
    anchor_memory: int | None = None,
) -> None:
    """Run the loop on ``split`` of ``configs/datalist_acdc.json`` and print its table (module docstring);
    ``anchor_memory`` overrides ``inference.json``'s (how many anchors every frame reads)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    bundle_root = Path(__file__).resolve().parents[2]
    parser = ConfigParser(ConfigParser.load_config_files([str(bundle_root / "configs" / c) for c in CONFIGS]))
    parser.update({"bundle_root": str(bundle_root), "split": split, "checkpoint": str(bundle_root / checkpoint)})
    parser.update({"device": f"$torch.device({device!r})", "reference_anchors": 1, "annotation": "required"})
    if anchor_memory is not None:
        parser["anchor_memory"] = anchor_memory
    studies = parser.get_parsed_content("datalist")[:max_studies]
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network")
    network.load_state_dict(state_dict_of(read_checkpoint(bundle_root / checkpoint)))
    network.eval()

    def make_inferer(cache_dir: str) -> Any:
        parser["cache_dir"] = cache_dir
        return parser.get_parsed_content("inferer", lazy=False)

    loop = CorrectionLoop(network, make_inferer, rounds, strategies, seed)
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for i, study in enumerate(studies):
            logger.info(f"study {i + 1}/{len(studies)}: {study['study']}")
            rows.extend(loop.study(preprocessing(dict(study))))
    summary = summarize(rows)
    out = Path(output_dir)
    _write_rows(out / "rounds.csv", rows)
    record = {
        "split": split,
        "checkpoint": checkpoint,
        "rounds": rounds,
        "seed": seed,
        "anchor_memory": parser["anchor_memory"],
        "summary": summary,
    }
    save_json(json.loads(json.dumps(record)), out / "summary.json", overwrite=True)
    print(f"Correction loop on the {split} split ({len(studies)} studies, {checkpoint}):")
    print(format_summary(summary))


if __name__ == "__main__":
    fire.Fire(main)
