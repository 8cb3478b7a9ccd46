"""Evaluation of 4D propagation against ED/ES ground truth: per-study CSV, summary JSON, a table like paper Table 1.

:class:`EvaluationReport` sits in an evaluator's postprocessing (it scores every study as it is predicted) and is
attached as a handler (it writes the files when the run completes). Methods scored side by side:

- ``model``: the evaluator's prediction (the bundle's network, ``matching_mode`` of the config);
- ``copy_ed``: the ED ground truth copied to every phase (no propagation; the floor). Scored at ES only, since at ED
  it is the truth itself, and only on slices labelled at both ED and ES;
- ``initializer``: the initialiser (``models/init.pt``, :class:`~scripts.inferers.FrameInitializer`) alone, every
  ED and ES frame segmented on its own (no propagation; the fully automatic alternative), when its weights exist;
- any extra model given in ``models`` (e.g. ``dense``: the same network in dense STCN matching mode, when weights
  for it exist), run with the evaluator's inferer on the same annotated frame.

Beside Dice/HD95, every method's cardiac function (LV/RV EDV, ESV, EF, LV mass) is compared with the one of the
ground truth on the same slices (:mod:`.agreement`): ``function.csv``, Bland-Altman statistics in ``summary.json``
and ``bland_altman.png``. copy-ED is scored there on ESV and EF only (its EF is 0 where ED and ES label the same
slices).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing
from monai.inferers import Inferer
from monai.utils import convert_to_numpy as to_numpy
from scipy.stats import spearmanr

from ..data.study import labelled_slices, read_info, slice_classes
from ..data.transforms import UNLABELLED, read_annotation
from ..errors import CSTMInputError
from ..inferers.initializer import GENERATED, FrameInitializer
from ..inferers.propagation import QC_CONFIDENCE
from ..io import SafeDictWriter, save_json, write_atomic
from ..networks.weights import build_cstm_from_checkpoint, read_checkpoint, state_dict_of
from .agreement import (
    AGREEMENT_FILE,
    BLAND_ALTMAN_FILE,
    EMPTY_SLICE_QUANTITIES,
    ES_QUANTITIES,
    agreement_rows,
    empty_slice_volumes,
    format_agreement_table,
    function_values,
    summarize_agreement,
    write_agreement_csv,
    write_bland_altman,
)
from .cardiac import study_affine, voxel_volume_ml
from .quality import QC_COLUMNS, frame_quality, quality_inputs
from .segmentation import CLASS_NAMES, METRICS, REGIONS, mean_scores, score_phase
from .timing import StudyTimer

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
COLUMNS = (
    "study",
    "group",
    "method",
    "phase",
    "slices",
    "region",
    "class",
    *METRICS,
    "num_slices",
    "num_empty",
    "num_missed",
)
SLICE_SETS = ("every", "labelled")
"""Which slices a row counts: "every" slice whose truth is known (every slice of a stack whose labels are complete,
:func:`~scripts.data.study.labels_complete`: a slice the truth leaves out is background there), "labelled" only the
slices the truth lists (``annotated_slices_<phase>``: before 0.7 the only figures). Equal where labels are partial."""
PHASES = ("ED", "ES")
BASELINES = ("copy_ed", "initializer")
QUALITY_FILE = "quality.csv"
"""Every scored frame's quality score and flag (:mod:`.quality`) beside its Dice."""
OUTPUT_FILES = (METRICS_FILE, SUMMARY_FILE, AGREEMENT_FILE, BLAND_ALTMAN_FILE, QUALITY_FILE)


def check_evaluation_outputs(output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail before any work when one of the evaluation's files (``metrics.csv``, ``summary.json``, ``function.csv``,
    ``bland_altman.png``, ``quality.csv``) exists in ``output_dir`` (and not ``overwrite``).

    Raises:
        CSTMInputError: naming the existing file, or an output folder that cannot be created.
    """
    root = Path(output_dir)
    for name in OUTPUT_FILES:
        if (root / name).exists() and not overwrite:
            raise CSTMInputError(root / name, "output file exists", "a new --output_dir, or --overwrite true")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CSTMInputError(root, f"cannot create the output folder ({e.strerror})", "a writable path") from e


def scored_slices(
    label: np.ndarray,
    info: Mapping[str, Any],
    phase: str,
    phase_index: int,
    skip: int | Collection[int] | None = None,
    study: str | os.PathLike = "",
    slices: str = "every",
) -> dict[int, list[int]]:
    """Which slices to score for each class at one phase: the slices whose label frame is labelled (not
    :data:`~scripts.data.UNLABELLED`; with ``slices="labelled"`` also listed in ``annotated_slices_<phase>``,
    :data:`SLICE_SETS`) and draws the class (:func:`~scripts.data.study.slice_classes`: ``labels_<phase>``,
    ``labels``, per-class slice lists such as ``annotated_slices_ed_myo``).

    Args:
        label: (H, W, Z, T) ground truth with :data:`UNLABELLED` where there is none.
        info: the study's info.json.
        phase: "ed" or "es".
        phase_index: the phase's t.
        skip: slices not to score (the z of the annotated frames at this phase).
        study: the study folder (for error messages).
        slices: "every" or "labelled" (:data:`SLICE_SETS`).
    Returns:
        class label -> sorted z.
    """
    if slices not in SLICE_SETS:
        raise ValueError(f"slices must be one of {SLICE_SETS}, got {slices!r}.")
    skipped = {skip} if isinstance(skip, int) else set(skip or ())
    listed = labelled_slices(info, phase, label.shape[2], study) if slices == "labelled" else range(label.shape[2])
    labelled = [z for z in listed if (label[:, :, z, phase_index] != UNLABELLED).all() and z not in skipped]
    drawn = {z: slice_classes(info, phase, z, study) for z in labelled}
    out = {}
    for c in CLASS_NAMES:
        zs = [z for z in labelled if c in drawn[z]]
        if zs:
            out[c] = zs
    return out


class EvaluationReport:
    """Score every study as it is predicted; write ``metrics.csv``, ``function.csv``, ``summary.json`` and
    ``bland_altman.png`` and log the tables at the end.

    As a postprocessing callable it reads from the item (after ``LoadStudyd(with_labels=True)``): ``pred`` and
    ``label`` (1, H, W, Z, T), ``ed``, ``es``, ``anchor_frames``, ``base_first``,
    ``study``, ``study_dir``, optionally ``group`` (a datalist's pathology group, e.g. from
    :func:`~scripts.data.load_split`: the summary then has a block per group), and for extra models ``image``,
    ``annotation``, ``annotation_slice``, ``annotation_phase``, ``image_spacing``, ``anchor_labels``.

    Args:
        output_dir: where the files go.
        overwrite: replace existing files.
        baselines: baselines to score beside the model: "copy_ed", "initializer" (needs ``initializer`` with weights;
            skipped with a log line without).
        initializer: the :class:`~scripts.inferers.FrameInitializer` of the "initializer" baseline.
        models: extra name -> network (e.g. {"dense": ...}), predicted with ``inferer``; see :func:`load_models`.
        inferer: the evaluator's inferer (needed for ``models``).
        timer: a :class:`StudyTimer` attached to the same evaluator; its records go into the summary.
        skip_reference_anchors: the given anchors are not scored (a generated one, ``--annotation auto``, is); also
            leave unscored the frames that ``--reference_anchors`` this many would make
            anchors (:func:`~scripts.data.transforms.read_annotation`), so that runs with 1, 2 or 3 anchors are scored
            on the same frames; None: only this run's own anchors.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        baselines: Sequence[str] = ("copy_ed",),
        models: Mapping[str, torch.nn.Module] | None = None,
        inferer: Inferer | None = None,
        timer: StudyTimer | None = None,
        skip_reference_anchors: int | None = None,
        initializer: FrameInitializer | None = None,
    ):
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise CSTMInputError("baselines", f"unknown baselines {sorted(unknown)}", f"a subset of {list(BASELINES)}")
        if models and inferer is None:
            raise ValueError("EvaluationReport: extra models need the inferer.")
        if "initializer" in baselines and not (initializer is not None and initializer.available):
            logger.info(f"baseline 'initializer' skipped: no weights at {getattr(initializer, 'checkpoint', None)}")
            baselines = [b for b in baselines if b != "initializer"]
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.baselines = tuple(baselines)
        self.initializer = initializer
        self.models = dict(models or {})
        self.inferer = inferer
        self.timer = timer
        self.skip_reference_anchors = skip_reference_anchors
        self.rows: list[dict] = []
        self.function_rows: list[dict] = []
        self.quality_rows: list[dict] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = to_numpy(d["label"])[0]  # (H, W, Z, T)
        predictions = {"model": to_numpy(d["pred"])[0]}
        for name, network in self.models.items():
            predictions[name] = self._predict(network, d)
        if "initializer" in self.baselines:
            predictions["initializer"] = self._initialize(d)
        info = read_info(d["study_dir"])
        affine = study_affine(d)
        spacing = affine_to_spacing(affine, r=3, suppress_zeros=False)  # (3,) mm
        ed, es = int(d["ed"]), int(d["es"])
        base_first = bool(d["base_first"])
        anchors = []
        if d.get("anchor_source") != GENERATED:
            anchors = [tuple(f) for f in torch.as_tensor(d["anchor_frames"]).reshape(-1, 2).tolist()]
        if self.skip_reference_anchors is not None:
            reference = read_annotation(
                Path(d["study_dir"]), info, label.shape, affine, self.skip_reference_anchors, base_first
            )
            anchors += [tuple(f) for f in reference["anchor_frames"].tolist()]
        group = str(d.get("group") or "")
        scored: dict[int, dict[int, list[int]]] = {}  # phase t -> class -> the z scored
        for phase, t in (("ED", ed), ("ES", es)):
            if phase == "ES" and es == ed:
                continue
            skip = [z for z, p in anchors if p == t]  # the annotated frames are given, not predicted
            by_set = {s: scored_slices(label, info, phase.lower(), t, skip, d["study_dir"], s) for s in SLICE_SETS}
            scored[t] = by_set["every"]
            if not scored[t]:
                continue
            at_phase = {method: pred[..., t] for method, pred in predictions.items()}  # (H, W, Z) each
            if "copy_ed" in self.baselines and phase == "ES":
                at_phase["copy_ed"] = label[..., ed]
            ed_labelled = {z for z in range(label.shape[2]) if (label[:, :, z, ed] != UNLABELLED).all()}
            for method, pred in at_phase.items():
                scored_before: list[tuple[dict, list[dict]]] = []  # partial labels: both sets are one
                for slice_set, slices in by_set.items():
                    if method == "copy_ed":  # on the slices labelled at ED too
                        slices = {c: [z for z in zs if z in ed_labelled] for c, zs in slices.items()}
                        slices = {c: zs for c, zs in slices.items() if zs}
                    rows = next((r for seen, r in scored_before if seen == slices), None)
                    if rows is None:
                        rows = score_phase(pred, label[..., t], slices, spacing, base_first)
                        scored_before.append((slices, rows))
                    self._add(d["study"], group, method, phase, slice_set, rows)
        self._add_function(
            d["study"],
            group,
            label,
            predictions,
            info,
            ed,
            es,
            voxel_volume_ml(affine),
            d["study_dir"],
            bool(d.get("labels_complete", False)),
        )
        if QC_CONFIDENCE in getattr(d["pred"], "meta", {}):
            self._add_quality(d, label, scored, anchors, base_first)
        methods = [*predictions, *(b for b in self.baselines if b not in predictions)]
        logger.info(f"{d['study']}: scored ({', '.join(methods)})")
        return d

    def _predict(self, network: torch.nn.Module, d: Mapping[Hashable, Any]) -> np.ndarray:
        device = next(network.parameters()).device
        image = torch.as_tensor(d["image"])[None].to(device)  # (1, 1, H, W, Z, T)
        labels = self.inferer(
            image,
            network,
            annotation=torch.as_tensor(d["annotation"])[None].to(device),
            annotation_slice=d["annotation_slice"],
            annotation_phase=d["annotation_phase"],
            image_spacing=torch.as_tensor(d["image_spacing"])[None],
            base_first=d["base_first"],
            anchor_frames=torch.as_tensor(d["anchor_frames"])[None],
            anchor_labels=torch.as_tensor(d["anchor_labels"])[None].to(device),
        )
        return to_numpy(labels)[0, 0]  # (H, W, Z, T)

    def _initialize(self, d: Mapping[Hashable, Any]) -> np.ndarray:
        """(H, W, Z, T) labels: the initialiser's on every slice of the ED and ES phases, background elsewhere."""
        image = torch.as_tensor(d["image"])[0]  # (H, W, Z, T)
        out = torch.zeros(image.shape, dtype=torch.uint8)
        for t in sorted({int(d["ed"]), int(d["es"])}):
            frames = image[:, :, :, t].permute(2, 0, 1)  # (Z, H, W)
            out[:, :, :, t] = self.initializer.labels(frames, tuple(d["image_spacing"].tolist())).permute(1, 2, 0)
        return out.numpy()

    def _add(self, study: str, group: str, method: str, phase: str, slices: str, rows: list[dict]) -> None:
        self.rows.extend(
            {"study": study, "group": group, "method": method, "phase": phase, "slices": slices, **r} for r in rows
        )

    def _add_function(
        self,
        study: str,
        group: str,
        label: np.ndarray,
        predictions: Mapping[str, np.ndarray],
        info: Mapping[str, Any],
        ed: int,
        es: int,
        voxel_ml: float,
        study_dir: str | os.PathLike,
        complete: bool,
    ) -> None:
        """The function rows of one study, for each of :data:`SLICE_SETS`: every method's and copy-ED's LV/RV EDV,
        ESV, EF and LV mass against those of the truth, on the slices the truth labels at each phase (the annotated
        frame included); for a stack whose labels are ``complete``, also each method's heart volume (RV, Myo, LV)
        on the slices where the truth holds none (:data:`~.agreement.EMPTY_SLICE_QUANTITIES`, reference 0).

        Args:
            label: (H, W, Z, T) ground truth with ``UNLABELLED`` where there is none.
            predictions: method -> (H, W, Z, T) labels.
        """
        for slice_set in SLICE_SETS:
            slices_ed = scored_slices(label, info, "ed", ed, None, study_dir, slice_set)
            slices_es = scored_slices(label, info, "es", es, None, study_dir, slice_set) if es != ed else {}
            if not slices_ed and not slices_es:
                return
            reference = function_values(label[..., ed], label[..., es], slices_ed, slices_es, voxel_ml)
            rows = []
            for method, pred in predictions.items():
                ours = function_values(pred[..., ed], pred[..., es], slices_ed, slices_es, voxel_ml)
                rows += agreement_rows(study, group, method, ours, reference)
            if "copy_ed" in self.baselines:
                ours = function_values(label[..., ed], label[..., ed], slices_ed, slices_es, voxel_ml)
                rows += agreement_rows(study, group, "copy_ed", ours, reference, ES_QUANTITIES)
            self.function_rows += [{**r, "slices": slice_set} for r in rows]
        if complete:
            for method, pred in predictions.items():
                ours = empty_slice_volumes(pred, label, {"ed": ed, "es": es}, voxel_ml)
                rows = agreement_rows(study, group, method, ours, dict.fromkeys(ours, 0.0), EMPTY_SLICE_QUANTITIES)
                self.function_rows += [{**r, "slices": "every"} for r in rows]

    def _add_quality(
        self,
        d: Mapping[Hashable, Any],
        label: np.ndarray,
        scored: Mapping[int, Mapping[int, list[int]]],
        anchors: list,
        base_first: bool,
    ) -> None:
        """Pair every scored ED/ES frame's quality score (:mod:`.quality`) with its Dice (mean over the classes the
        truth draws there that the prediction or the truth holds).

        Args:
            scored: phase t -> class -> the z scored there (as for Dice and HD95).
        """
        pred, confidence, disagreement = quality_inputs(d)
        rows = {(r["z"], r["t"]): r for r in frame_quality(pred, confidence, disagreement, anchors, base_first)}
        for t, by_class in scored.items():
            for z in sorted({s for zs in by_class.values() for s in zs}):
                classes = [c for c, zs in by_class.items() if z in zs]
                dice = class_mean_dice(pred[:, :, z, t], label[:, :, z, t], classes)
                if dice is not None:
                    self.quality_rows.append({"study": d["study"], "dice": dice, **rows[(z, t)]})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, lambda _: self.write())

    def summary(self, group: str | None = None, slices: str = "every") -> dict[str, Any]:
        """Means over studies (of one ``group`` if given) of the rows counted on ``slices`` (:data:`SLICE_SETS`):
        method -> phase ("ED", "ES", "all") -> region -> class -> metric (NaN skipped), with "num_frames"."""
        selected = [r for r in self.rows if (group is None or r["group"] == group) and r["slices"] == slices]
        out: dict[str, Any] = {}
        for method in dict.fromkeys(r["method"] for r in selected):
            out[method] = {}
            for phase in (*PHASES, "all"):
                rows = [r for r in selected if r["method"] == method and (phase == "all" or r["phase"] == phase)]
                if not rows:
                    continue
                out[method][phase] = {
                    region: {
                        c: {**mean_scores(sel), "num_frames": len(sel)}
                        for c in (*CLASS_NAMES.values(), "mean")
                        if (sel := [r for r in rows if r["region"] == region and r["class"] == c])
                    }
                    for region in REGIONS
                }
        return out

    def write(self) -> dict[str, Any]:
        """Write ``metrics.csv``, ``function.csv``, ``bland_altman.png`` and ``summary.json`` atomically, log their
        paths and the tables; returns the summary."""
        if not self.rows:
            raise CSTMInputError(
                self.output_dir,
                "no labelled frame to score in any study",
                "studies with label_ed/label_es beyond the annotated frame",
            )

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = SafeDictWriter(f, COLUMNS)  # study and group names: no formula
                writer.writeheader()
                for r in self.rows:
                    writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})

        csv_path = write_atomic(self.output_dir / METRICS_FILE, write_csv, self.overwrite)
        logger.info(f"per-study metrics written to {csv_path}")
        function_path = write_agreement_csv(self.function_rows, self.output_dir / AGREEMENT_FILE, self.overwrite)
        logger.info(f"per-study cardiac function against the ground truth written to {function_path}")
        plot_path = write_bland_altman(self.function_rows, self.output_dir / BLAND_ALTMAN_FILE, self.overwrite)
        if self.quality_rows:

            def write_quality(tmp: str) -> None:
                with open(tmp, "w", newline="") as f:
                    writer = SafeDictWriter(f, ["study", *QC_COLUMNS, "dice"])
                    writer.writeheader()
                    writer.writerows({**r, "dice": round(r["dice"], 4)} for r in self.quality_rows)

            quality_path = write_atomic(self.output_dir / QUALITY_FILE, write_quality, self.overwrite)
            logger.info(f"per-frame quality scores and Dice written to {quality_path}")
        logger.info(f"Bland-Altman plot written to {plot_path}")
        metrics = self.summary()
        groups = sorted({r["group"] for r in self.rows} - {""})
        summary = {
            "studies": sorted(dict.fromkeys(r["study"] for r in self.rows)),
            "metrics": metrics,
            "metrics_labelled": self.summary(slices="labelled"),
            "agreement": summarize_agreement(self.function_rows),
            "agreement_labelled": summarize_agreement(self.function_rows, slices="labelled"),
            "groups": {
                g: {
                    "studies": len({r["study"] for r in self.rows if r["group"] == g}),
                    "metrics": self.summary(g),
                    "metrics_labelled": self.summary(g, "labelled"),
                    "agreement": summarize_agreement(self.function_rows, g),
                    "agreement_labelled": summarize_agreement(self.function_rows, g, "labelled"),
                }
                for g in groups
            },
            "quality": quality_ranking(self.quality_rows),
            "timing": self.timer.records if self.timer is not None else [],
            "conventions": {
                "dice_2d/hd95_2d": "per 2D slice (in-plane spacing), averaged over the region's slices that hold the "
                "class in the prediction or the truth",
                "dice_3d/hd95_3d": "per volume: the region's scored slices stacked (in-plane and slice spacing)",
                "hd95": "95th percentile Hausdorff distance in mm (monai.metrics, percentile=95, spacing)",
                "empty": "both empty: Dice 1, HD95 0, not counted in slice averages; one empty: Dice 0, HD95 = grid "
                "diagonal in mm",
                "regions": "slices ordered base to apex: first ceil(Z/3) basal, last floor(Z/3) apex, rest middle; "
                "whole = all",
                "frames": "every labelled ED/ES slice but the given annotated frames (an anchor that the initialiser "
                "generated is scored); classes not annotated are skipped",
                "slices": "metrics/agreement: every slice whose truth is known (every slice of a stack whose labels "
                "are complete, labels_complete: a slice the truth leaves out is background); metrics_labelled/"
                "agreement_labelled: only the slices the truth lists (annotated_slices_<phase>); equal for partial "
                "labels",
                "heart_on_empty_slices": "complete stacks: a method's RV+Myo+LV volume (mL) on the slices whose truth "
                "holds no structure at ED/ES; n_over_5ml counts the stacks above 5 mL",
                "copy_ed": "ED ground truth copied to ES (no propagation); scored at ES only (function: ESV, EF)",
                "initializer": "the initialiser (models/init.pt) alone on every ED and ES frame, no propagation",
                "function": "LV/RV EDV, ESV (mL), EF (%), LV mass (g, myocardium at ED x 1.05 g/mL) by summation of "
                "discs, ours and the ground truth's on the same voxels: at each phase the slices the truth labels "
                "there and that draw the class (the annotated frame included); an unlabelled slice counts for "
                "neither; a quantity whose class is not annotated has no row",
                "agreement": "difference = ours - reference per study; bias = mean difference, sd = sample SD "
                "(ddof 1), limits of agreement = bias -/+ 1.96 sd, mae = mean |difference|; an EF of ours with "
                "EDV 0 is undefined (n_undefined) and left out",
            },
            "files": {"metrics": str(csv_path), "function": str(function_path), "bland_altman": str(plot_path)},
        }
        json_path = save_json(_finite(summary), self.output_dir / SUMMARY_FILE, self.overwrite)
        logger.info(f"summary written to {json_path}")
        for kind, phase in (("2d", "all"), ("2d", "ES"), ("3d", "all")):  # ES: where copy-ED is scored too
            logger.info("\n" + format_table(metrics, kind, phase))
        for slices in SLICE_SETS:
            logger.info("\n" + format_group_table(summary, slices=slices))
            logger.info("\n" + format_agreement_table(summary, slices))
        return summary


def format_table(metrics: Mapping[str, Any], kind: str = "2d", phase: str = "all") -> str:
    """The layout of paper Table 1: one block per region, one row per method, Dice and HD95 for LV, Myo, RV, mean.

    Args:
        metrics: :meth:`EvaluationReport.summary`.
        kind: "2d" (slice averages, as the paper) or "3d" (per volume).
        phase: "ED", "ES" or "all".
    """
    classes = (*CLASS_NAMES.values(), "mean")
    width = max([len(m) for m in metrics] + [8])
    header = (
        f"{'Method':<{width}} | " + " ".join(f"{c:>6}" for c in classes) + " | " + " ".join(f"{c:>6}" for c in classes)
    )
    title = (
        f"{kind.upper()} metrics, phase {phase} (mean over studies): Dice ↑ (LV, Myo, RV, mean) | "
        f"HD95 mm ↓ (LV, Myo, RV, mean); '-' = not annotated"
    )
    lines = [title, header, "-" * len(header)]
    for region in REGIONS:
        lines.append(f"{'Whole heart' if region == 'whole' else region.capitalize()}")
        for method, by_phase in metrics.items():
            scores = by_phase.get(phase, {}).get(region, {})
            if not scores:
                continue
            dice = " ".join(_cell(scores.get(c, {}).get(f"dice_{kind}"), 3) for c in classes)
            hd = " ".join(_cell(scores.get(c, {}).get(f"hd95_{kind}"), 2) for c in classes)
            lines.append(f"{method:<{width}} | {dice} | {hd}")
    return "\n".join(lines)


def format_group_table(summary: Mapping[str, Any], kind: str = "2d", slices: str = "every") -> str:
    """A Markdown table (the model card's): one row per group, phase and method, whole-heart Dice of LV, Myo, RV and
    their mean, mean HD95 (mm), and the mean Dice of the basal, middle and apical slices; groups first, then "all".

    Args:
        summary: what :meth:`EvaluationReport.write` returns (or ``summary.json``), with its "groups".
        kind: "2d" or "3d".
        slices: "every" (``metrics``) or "labelled" (``metrics_labelled``), :data:`SLICE_SETS`.
    """
    key = "metrics" if slices == "every" else "metrics_labelled"
    lines = [
        f"Dice and HD95 ({kind.upper()}) on {'every slice' if slices == 'every' else 'the labelled slices only'}:",
        "| group (n) | phase | method | LV | Myo | RV | mean | HD95 mean mm | basal | middle | apex |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    blocks = [(f"{g} ({b['studies']})", b.get(key, {})) for g, b in summary.get("groups", {}).items()]
    blocks.append((f"all ({len(summary['studies'])})", summary.get(key, {})))
    for name, metrics in blocks:
        for phase in PHASES:
            for method, by_phase in metrics.items():
                scores = by_phase.get(phase)
                if not scores:
                    continue
                whole = scores.get("whole", {})
                cells = [
                    _cell((whole.get(c) or {}).get(f"dice_{kind}"), 3).strip() for c in (*CLASS_NAMES.values(), "mean")
                ]
                cells.append(_cell((whole.get("mean") or {}).get(f"hd95_{kind}"), 2).strip())
                cells += [
                    _cell((scores.get(r, {}).get("mean") or {}).get(f"dice_{kind}"), 3).strip() for r in REGIONS[:3]
                ]
                lines.append(f"| {name} | {phase} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, digits: int) -> str:
    return f"{'-':>6}" if value is None or math.isnan(value) else f"{value:>6.{digits}f}"


def _finite(obj: Any) -> Any:
    """NaN -> None, so the JSON is standard (``null``)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def load_models(
    checkpoints: Mapping[str, str | os.PathLike | None],
    device: torch.device | str = "cpu",
    requested: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, torch.nn.Module]:
    """Extra models for :class:`EvaluationReport`: each checkpoint file that exists, as the network its record says
    (:func:`~scripts.networks.build_cstm_from_checkpoint`), loaded and in eval mode; the others are skipped with a
    log line (e.g. no dense-matching weights shipped).

    Args:
        checkpoints: name -> ``model.pt`` path (or None).
        device: where the networks run.
        requested: name -> arguments that the checkpoint's record must agree with (e.g. ``{"matching_mode": "dense"}``).
    Raises:
        CSTMInputError: a checkpoint that exists but cannot be loaded, or that was trained otherwise than requested.
    """
    out = {}
    for name, checkpoint in checkpoints.items():
        path = Path(checkpoint) if checkpoint else None
        if path is None or not path.is_file():
            logger.info(f"baseline {name!r} skipped: no weights at {path}")
            continue
        network = build_cstm_from_checkpoint(path, **dict((requested or {}).get(name) or {}))
        try:
            network.load_state_dict(state_dict_of(read_checkpoint(path)))
        except RuntimeError as e:
            raise CSTMInputError(
                path, f"cannot load the {name!r} weights ({type(e).__name__})", "a checkpoint of the same architecture"
            ) from e
        out[name] = network.to(device).eval()
        logger.info(f"baseline {name!r}: weights {path}")
    return out


if __name__ == "__main__":  # python -m scripts.metrics.report <summary.json>: the per-group Markdown tables
    import json
    import sys

    loaded = json.loads(Path(sys.argv[1]).read_text())
    for slice_set in SLICE_SETS:
        print(format_group_table(loaded, slices=slice_set))
        print()
        print(format_agreement_table(loaded, slice_set))
        print()


def class_mean_dice(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> float | None:
    """Mean Dice of one (H, W) frame over ``classes`` present in the prediction or the truth (None: none is)."""
    dice = [
        2 * np.sum((pred == c) & (truth == c)) / (np.sum(pred == c) + np.sum(truth == c))
        for c in classes
        if (pred == c).any() or (truth == c).any()
    ]
    return float(np.mean(dice)) if dice else None


def quality_ranking(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How well the quality score ranks bad frames: Spearman correlation of score and Dice over the scored frames,
    and the mean Dice of the flagged frames against the others."""
    if len(rows) < 3:
        return {"num_frames": len(rows)}
    scores, dice = [r["score"] for r in rows], [r["dice"] for r in rows]
    flagged = [r["dice"] for r in rows if r["flagged"]]
    rest = [r["dice"] for r in rows if not r["flagged"]]
    return {
        "num_frames": len(rows),
        "spearman_score_dice": float(spearmanr(scores, dice).statistic),
        "num_flagged": len(flagged),
        "dice_flagged": float(np.mean(flagged)) if flagged else None,
        "dice_not_flagged": float(np.mean(rest)) if rest else None,
    }
