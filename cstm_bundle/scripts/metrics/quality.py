"""Quality report of a propagated study: one row per frame (z, t) with a confidence score and a flag for suspect
frames, and the frame a user should correct next (``qc.csv``, ``qc.json`` next to the label map).

Per frame, from :class:`~scripts.inferers.Propagation4DInferer`'s meta and the label map:

- ``confidence``: the mean largest class probability over the frame's heart pixels
  (:func:`~scripts.inferers.frame_confidence`);
- ``disagreement``: with ``--time_direction both``, the fraction of heart pixels whose class the forward and the
  backward propagation disagree on (0 otherwise);
- ``area_jump``: how far the class areas of the frame lie from the mean of the same slice's two neighbouring phases,
  relative to that mean (0 for studies of fewer than 3 phases, whose phases are not neighbours in time);
- ``score`` = confidence × (1 − disagreement): low is suspect; ``flagged``: score below :data:`MIN_SCORE` or an area
  jump above :data:`MAX_AREA_JUMP`. Annotated frames score 1 and are never flagged.

How well the score ranks bad frames is measured by ``evaluate.json`` (``summary.json["quality"]``: Spearman
correlation of score and Dice, Dice of the flagged frames against the rest).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy as to_numpy

from ..data.outputs import output_folder
from ..inferers.propagation import QC_CONFIDENCE, QC_DISAGREEMENT
from ..inferers.schedule import Frame, slice_regions
from ..io import SafeDictWriter, save_json, write_atomic

logger = logging.getLogger(__name__)

QC_FILES = ("qc.csv", "qc.json")
MIN_SCORE = 0.85
"""Frames scoring below this are flagged (chosen on the validation split: docs/README.md, "Quality report")."""
MAX_AREA_JUMP = 0.5
"""Frames whose class areas differ from their neighbouring phases' by more than this fraction are flagged."""
QC_COLUMNS = ("z", "t", "region", "anchor", "confidence", "disagreement", "area_jump", "score", "flagged")


def area_jumps(labels: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """Relative jump of the class areas of every frame against its slice's two neighbouring phases.

    Args:
        labels: (H, W, Z, T) label map.
    Returns:
        (Z, T): sum over classes of |area(t) − mean(area(t − 1), area(t + 1))| / sum over classes of that mean
        (cyclic in t); zeros when T < 3.
    """
    areas = np.stack([(labels == c).sum((0, 1)) for c in range(1, num_classes)]).astype(float)  # (C, Z, T)
    if labels.shape[3] < 3:
        return np.zeros(labels.shape[2:])
    neighbours = (np.roll(areas, 1, axis=2) + np.roll(areas, -1, axis=2)) / 2
    return np.abs(areas - neighbours).sum(0) / np.maximum(neighbours.sum(0), 1.0)


def frame_quality(
    labels: np.ndarray,
    confidence: np.ndarray,
    disagreement: np.ndarray,
    anchors: Iterable[Frame] = (),
    base_first: bool = True,
) -> list[dict[str, Any]]:
    """The rows of ``qc.csv`` (:data:`QC_COLUMNS`), one per frame, z-major.

    Args:
        labels: (H, W, Z, T) label map; confidence, disagreement: (Z, T) from the inferer's meta.
        anchors: the annotated frames (score 1, never flagged).
        base_first: z = 0 is the most basal slice (the region column).
    """
    jumps = area_jumps(labels)
    regions = slice_regions(labels.shape[2], base_first)
    given = set(anchors)
    rows = []
    for z in range(labels.shape[2]):
        for t in range(labels.shape[3]):
            anchor = (z, t) in given
            score = 1.0 if anchor else float(confidence[z, t]) * (1.0 - float(disagreement[z, t]))
            jump = float(jumps[z, t])
            flagged = not anchor and (score < MIN_SCORE or jump > MAX_AREA_JUMP)
            rows.append(
                {
                    "z": z,
                    "t": t,
                    "region": regions[z],
                    "anchor": int(anchor),
                    "confidence": round(float(confidence[z, t]), 4),
                    "disagreement": round(float(disagreement[z, t]), 4),
                    "area_jump": round(jump, 4),
                    "score": round(score, 4),
                    "flagged": int(flagged),
                }
            )
    return rows


def quality_inputs(data: Mapping[Hashable, Any], key: str = "pred") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (H, W, Z, T), confidence and disagreement (Z, T) of a postprocessed item.

    Raises:
        ValueError: the prediction carries no quality scores (not from :class:`~scripts.inferers.Propagation4DInferer`).
    """
    pred = data[key]
    meta = getattr(pred, "meta", {})
    if QC_CONFIDENCE not in meta:
        raise ValueError(f"{key!r} carries no {QC_CONFIDENCE!r} (expected the output of Propagation4DInferer).")
    labels = to_numpy(pred)[0]
    confidence = to_numpy(meta[QC_CONFIDENCE]).reshape(labels.shape[2:])
    disagreement = to_numpy(meta.get(QC_DISAGREEMENT, np.zeros_like(confidence))).reshape(labels.shape[2:])
    return labels, confidence, disagreement


def anchor_list(data: Mapping[Hashable, Any]) -> list[Frame]:
    """The annotated frames of an item (``anchor_frames`` of :class:`~scripts.data.LoadStudyd`)."""
    return [(int(z), int(t)) for z, t in np.asarray(to_numpy(data["anchor_frames"])).reshape(-1, 2)]


class QualityReportd(MapTransform):
    """Write ``<output_dir>/<study>/qc.csv`` and ``qc.json`` and log the frame to correct next.

    ``qc.json``: the study, counts of frames and flagged frames, the lowest-scoring frame that is not annotated
    (``correct_next``: z, t, region, score and its parts, and ``why``: :func:`why`), the thresholds, the mean score,
    where the anchor came from (``anchor_source``: the annotation file, or "generated") and, for a generated one,
    ``generated_anchor`` (z, t, the initialiser's confidence, how the phase was chosen, its weights:
    :class:`~scripts.inferers.AutoAnchord`).

    Args:
        keys: the prediction key, (1, H, W, Z, T) with the inferer's quality meta.
        output_dir: the run's output folder.
        overwrite: replace existing files (else an existing file is an error, as for the label map).
        enabled: False writes nothing.
    """

    def __init__(
        self, keys: KeysCollection, output_dir: str | os.PathLike, overwrite: bool = False, enabled: bool = True
    ):
        super().__init__(keys)
        self.output_dir, self.overwrite, self.enabled = Path(output_dir), overwrite, enabled

    def output_files(self, study: str) -> list[Path]:
        """What a finished study has (none when disabled)."""
        return [self.output_dir / study / name for name in QC_FILES] if self.enabled else []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            labels, confidence, disagreement = quality_inputs(d, key)
            rows = frame_quality(labels, confidence, disagreement, anchor_list(d), bool(d.get("base_first", True)))
            csv_path, json_path = (output_folder(d, self.output_dir) / name for name in QC_FILES)
            write_atomic(csv_path, lambda tmp: _write_csv(tmp, rows), self.overwrite)
            candidates = [r for r in rows if not r["anchor"]]
            worst = min(candidates, key=lambda r: r["score"]) if candidates else None
            summary = {
                "study": d["study"],
                "num_frames": len(rows),
                "num_flagged": sum(r["flagged"] for r in rows),
                "mean_score": round(float(np.mean([r["score"] for r in candidates])), 4) if candidates else None,
                "correct_next": (
                    None if worst is None else {**{k: worst[k] for k in CORRECT_NEXT_KEYS}, "why": why(worst)}
                ),
                "thresholds": {"min_score": MIN_SCORE, "max_area_jump": MAX_AREA_JUMP},
                "score": "confidence × (1 − disagreement); docs/README.md, 'Quality report'",
                "anchor_source": d.get("anchor_source"),
                "generated_anchor": _plain(d.get("generated_anchor")),
                "kspace_spike_frames": _plain(d.get("kspace_spike_frames")),
            }
            save_json(summary, json_path, self.overwrite)
            if worst is not None:
                logger.info(
                    f"{d['study']}: {summary['num_flagged']} of {len(rows)} frames flagged; correct next: slice "
                    f"{worst['z']} ({worst['region']}), phase {worst['t']}, score {worst['score']:.3f} ({json_path})"
                )
        return d


CORRECT_NEXT_KEYS = ("z", "t", "region", "score", "confidence", "disagreement", "area_jump", "flagged")
"""What ``qc.json``'s ``correct_next`` repeats of the frame's ``qc.csv`` row (beside ``why``)."""


def why(row: Mapping[str, Any]) -> str:
    """One sentence on why a frame is the one to correct next: its score and what lowered it."""
    parts = [f"lowest score of the frames not annotated ({row['score']:.3f} = confidence {row['confidence']:.3f}"]
    parts[0] += f" × (1 − disagreement {row['disagreement']:.3f}))" if row["disagreement"] else ")"
    if row["score"] < MIN_SCORE:
        parts.append(f"below the flag threshold {MIN_SCORE}")
    if row["area_jump"] > MAX_AREA_JUMP:
        parts.append(f"its areas jump by {row['area_jump']:.2f} against the neighbouring phases (> {MAX_AREA_JUMP})")
    return "; ".join(parts)


def _plain(value: Any) -> Any:
    """A decollated item's value as JSON: tensors and numpy scalars to Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _write_csv(tmp: str, rows: list[dict[str, Any]]) -> None:
    with open(tmp, "w", newline="") as f:
        writer = SafeDictWriter(f, fieldnames=QC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
