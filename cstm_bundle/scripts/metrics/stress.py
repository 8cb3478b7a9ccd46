"""The stress suite: the validation studies as other scanners and other conventions would give them, each condition
fixed and seeded, scored by ``evaluate.json`` beside the clean studies. From ``cstm_bundle/``::

    python -m scripts.metrics.stress [--split validation] [--conditions all] [--checkpoint models/model.pt]
        [--output_dir outputs/stress] [--seed 0] [--max_studies N]

Every condition (:data:`CONDITIONS`) rewrites each study of the split into ``<output_dir>/studies/<condition>/``
(image, ED/ES labels, ``info.json``), then one ``evaluate`` run per condition scores it (``--extra_models {}``,
no baselines, no pictures) into ``<output_dir>/runs/<condition>/``; the table (ED and ES whole-heart 2D Dice, ES per
class, the change of ES Dice against ``clean``) is printed and written to ``<output_dir>/stress.json``. Built with
MONAI's transforms; intensity conditions change the image only, geometry conditions move the labels with it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    AdjustContrast,
    GaussianSmooth,
    GibbsNoise,
    KSpaceSpikeNoise,
    RandBiasField,
    RandRicianNoise,
    RandSimulateLowResolution,
)

from ..data.roi import resize_to_spacing
from ..data.splits import load_split
from ..data.study import label_file
from ..io import save_json

logger = logging.getLogger(__name__)

PHASES = ("ed", "es")


@dataclass(frozen=True)
class CineStudy:
    """A study as arrays: ``image`` (H, W, Z, T) float32, ``labels`` phase name -> (H, W, Z) uint8, the (4, 4)
    ``affine`` and ``info`` (its info.json)."""

    image: np.ndarray
    labels: dict[str, np.ndarray]
    affine: np.ndarray
    info: dict[str, Any]


def _frames(image: np.ndarray) -> np.ndarray:
    """(H, W, Z, T) -> (Z * T, H, W): every frame a channel of one 2D image."""
    h, w, z, t = image.shape
    return image.reshape(h, w, z * t).transpose(2, 0, 1)


def _unframes(frames: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(frames, dtype=np.float32).transpose(1, 2, 0).reshape(shape)


def _per_frame(transform: Callable[[Any], Any]) -> Callable[[CineStudy, int], CineStudy]:
    """A condition that applies a 2D channel-first transform to every frame of the image (labels unchanged)."""

    def apply(study: CineStudy, seed: int) -> CineStudy:
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)
        out = transform(torch.as_tensor(_frames(study.image).copy()))
        return replace(study, image=_unframes(np.asarray(out), study.image.shape))

    return apply


def _gamma(gamma: float) -> Callable[[CineStudy, int], CineStudy]:
    """Another intensity curve: x -> x ** gamma on the image scaled by its maximum, scaled back."""

    def apply(study: CineStudy, seed: int) -> CineStudy:
        top = float(study.image.max()) or 1.0
        curved = np.asarray(AdjustContrast(gamma)(torch.as_tensor(study.image / top)[None]))[0]
        return replace(study, image=(curved * top).astype(np.float32))

    return apply


def _bias_field(study: CineStudy, seed: int) -> CineStudy:
    """A smooth multiplicative coil field over (H, W, Z), the same at every phase."""
    field = RandBiasField(degree=3, coeff_range=(0.25, 0.25), prob=1.0)
    field.set_random_state(seed)
    ones = torch.ones((1, *study.image.shape[:3]))
    gain = np.asarray(field(ones))[0]  # (H, W, Z)
    return replace(study, image=(study.image * gain[..., None]).astype(np.float32))


def _rician(study: CineStudy, seed: int) -> CineStudy:
    """Rician noise of 4 % of the 99th intensity percentile."""
    std = 0.04 * float(np.percentile(study.image, 99))
    return _per_frame(RandRicianNoise(prob=1.0, std=std, sample_std=False))(study, seed)


def _kspace_spike(study: CineStudy, seed: int) -> CineStudy:
    """One k-space spike per frame, off the centre (a herringbone artefact)."""
    h, w = study.image.shape[:2]
    rng = np.random.default_rng(seed)
    loc = (int(h // 2 + rng.integers(h // 8, h // 4)), int(w // 2 + rng.integers(w // 8, w // 4)))
    return _per_frame(KSpaceSpikeNoise(loc=loc, k_intensity=13.0))(study, seed)


def _uint16(study: CineStudy, seed: int) -> CineStudy:
    """A 12-bit scanner range stored as uint16 (0-4095 over the 99.9th percentile, clipped)."""
    top = float(np.percentile(study.image, 99.9)) or 1.0
    return replace(study, image=np.clip(np.round(study.image / top * 4095), 0, 65535).astype(np.uint16))


def _pixel_size(factor: float) -> Callable[[CineStudy, int], CineStudy]:
    """Another in-plane pixel size: the image (antialiased bilinear) and labels (nearest) resampled to ``factor``
    times the spacing, the affine and ``info["spacing"]`` with them."""

    def apply(study: CineStudy, seed: int) -> CineStudy:
        spacing = np.linalg.norm(study.affine[:3, :2], axis=0)  # (row, column) mm
        target = float(spacing[0]) * factor
        image = torch.as_tensor(_frames(study.image).copy())[:, None]  # (N, 1, H, W)
        resized = resize_to_spacing(image, tuple(spacing), target)[:, 0].numpy()
        shape = (*resized.shape[1:], *study.image.shape[2:])
        labels = {}
        for name, label in study.labels.items():
            frames = torch.as_tensor(label.transpose(2, 0, 1).copy())[:, None]  # (Z, 1, H, W)
            labels[name] = resize_to_spacing(frames, tuple(spacing), target, mode="nearest")[:, 0].numpy()
            labels[name] = labels[name].transpose(1, 2, 0).astype(np.uint8)
        affine = study.affine.copy()
        affine[:3, 0] *= target / spacing[0]
        affine[:3, 1] *= target / spacing[1]
        info = dict(study.info)
        if "spacing" in info:
            info["spacing"] = [target, target, *info["spacing"][2:]]
        return CineStudy(_unframes(resized, shape), labels, affine, info)

    return apply


def _mirrored(study: CineStudy, seed: int) -> CineStudy:
    """The view mirrored left-right (image and labels flipped along the columns, the affine kept)."""
    labels = {n: np.ascontiguousarray(label[:, ::-1]) for n, label in study.labels.items()}
    return replace(study, image=np.ascontiguousarray(study.image[:, ::-1]), labels=labels)


def _apex_first(study: CineStudy, seed: int) -> CineStudy:
    """Slices stored apex first: z reversed in the image, the labels and the slice lists of info.json, the affine
    so that every voxel keeps its position, and ``base_first: false`` (the documented way to say so)."""
    num_slices = study.image.shape[2]
    affine = study.affine.copy()
    affine[:3, 3] += affine[:3, 2] * (num_slices - 1)
    affine[:3, 2] *= -1
    info = dict(study.info)
    for key, value in study.info.items():
        if key.startswith("annotated_slices") and isinstance(value, list):
            info[key] = sorted(num_slices - 1 - z for z in value)
    info["base_first"] = False
    labels = {n: np.ascontiguousarray(label[:, :, ::-1]) for n, label in study.labels.items()}
    return CineStudy(np.ascontiguousarray(study.image[:, :, ::-1]), labels, affine, info)


CONDITIONS: dict[str, Callable[[CineStudy, int], CineStudy]] = {
    "clean": lambda study, seed: study,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.7": _gamma(1.7),
    "bias field": _bias_field,
    "rician noise": _rician,
    "blur": _per_frame(GaussianSmooth(sigma=1.0)),
    "low resolution": _per_frame(
        RandSimulateLowResolution(prob=1.0, zoom_range=(0.5, 0.5), upsample_mode="bilinear", align_corners=False)
    ),
    "pixel size x1.3": _pixel_size(1.3),
    "uint16 range": _uint16,
    "gibbs ringing": _per_frame(GibbsNoise(alpha=0.5)),
    "k-space spike": _kspace_spike,
    "mirrored": _mirrored,
    "apex first": _apex_first,
}
"""Condition name -> (study, seed) -> perturbed study. "clean" rewrites the study unchanged."""


def read_study(folder: Path) -> CineStudy:
    """The image, ED/ES labels, affine and info.json of a study folder (NIfTI)."""
    image = nib.load(str(folder / "image.nii.gz"))
    labels = {
        n: np.asarray(nib.load(str(folder / label_file(n))).dataobj, dtype=np.uint8)
        for n in PHASES
        if (folder / label_file(n)).is_file()
    }
    info = json.loads((folder / "info.json").read_text())
    return CineStudy(np.asarray(image.dataobj, dtype=np.float32), labels, image.affine, info)


def write_study(study: CineStudy, folder: Path) -> None:
    """Write a study folder (image.nii.gz, label_<phase>.nii.gz, info.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(study.image, study.affine), str(folder / "image.nii.gz"))
    for name, label in study.labels.items():
        nib.save(nib.Nifti1Image(label.astype(np.uint8), study.affine), str(folder / label_file(name)))
    (folder / "info.json").write_text(json.dumps(study.info, indent=1))


def build_suite(studies: Sequence[Mapping[str, Any]], root: Path, conditions: Sequence[str], seed: int = 0) -> None:
    """Write every study under ``root/<condition>/<study>`` for each condition (seeded per study); each info.json
    states the split's ``labels_complete`` for its dataset, so that the evaluation counts every slice there too."""
    for c, name in enumerate(conditions):
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        for i, s in enumerate(studies):
            study = read_study(Path(s["study_dir"]))
            study = replace(study, info={"labels_complete": bool(s.get("labels_complete", False)), **study.info})
            write_study(CONDITIONS[name](study, seed + 1000 * c + i), target / s["study"])
        logger.info(f"stress suite: {name}: {len(studies)} studies in {target}")


def _evaluate(dataset_dir: Path, output_dir: Path, checkpoint: str, bundle_root: Path) -> dict[str, Any]:
    configs = "[" + ",".join(f"{str(bundle_root / 'configs' / c)!r}" for c in ("inference.json", "evaluate.json")) + "]"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "evaluate", "--config_file", configs,
        "--bundle_root", str(bundle_root), "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir),
        "--checkpoint", checkpoint, "--extra_models", "{}", "--baselines", "[]", "--clinical_pictures", "false",
        "--overwrite", "true",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"evaluate on {dataset_dir} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((output_dir / "summary.json").read_text())["metrics"]["model"]


def summarize(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Condition -> ED and ES whole-heart 2D Dice, ES per class, ES change against "clean"."""
    out = {}

    def dice(m: Mapping[str, Any], phase: str, cls: str = "mean") -> float | None:
        return m.get(phase, {}).get("whole", {}).get(cls, {}).get("dice_2d")

    clean = dice(metrics.get("clean", {}), "ES")
    for name, m in metrics.items():
        row = {"ed_dice": dice(m, "ED"), "es_dice": dice(m, "ES")}
        row.update({f"es_{c}": dice(m, "ES", c) for c in ("LV", "Myo", "RV")})
        row["es_change"] = None if clean is None or row["es_dice"] is None else row["es_dice"] - clean
        out[name] = row
    return out


def format_stress(summary: Mapping[str, Mapping[str, float | None]]) -> str:
    """The suite's table."""

    def cell(v: float | None, signed: bool = False) -> str:
        return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    lines = ["| condition | ED Dice | ES Dice | ES LV | ES Myo | ES RV | ES − clean |", "|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        lines.append(
            f"| {name} | {cell(r['ed_dice'])} | {cell(r['es_dice'])} | {cell(r['es_LV'])} | {cell(r['es_Myo'])} | "
            f"{cell(r['es_RV'])} | {cell(r['es_change'], True)} |"
        )
    return "\n".join(lines)


def main(
    split: str = "validation",
    conditions: str | Sequence[str] = "all",
    checkpoint: str = "models/model.pt",
    output_dir: str = "outputs/stress",
    seed: int = 0,
    max_studies: int | None = None,
) -> None:
    """Build the suite for ``split`` of ``configs/datalist_acdc.json``, score each condition, print the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")
    bundle_root = Path(__file__).resolve().parents[2]
    names = list(CONDITIONS) if conditions == "all" else conditions
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; expected some of {list(CONDITIONS)}.")
    names = ["clean", *(n for n in names if n != "clean")]
    studies = load_split(
        bundle_root / "configs" / "datalist_acdc.json", split, bundle_root.parent.parent / "shared/data"
    )
    out = Path(output_dir).resolve()
    build_suite(studies, out / "studies", names, seed)
    metrics = {}
    for name in names:
        metrics[name] = _evaluate(
            out / "studies" / name, out / "runs" / name, str(bundle_root / checkpoint), bundle_root
        )
        logger.info(f"stress suite: {name}: ES whole-heart Dice {summarize(metrics)[name]['es_dice']}")
    summary = summarize(metrics)
    save_json(
        {"split": split, "checkpoint": checkpoint, "seed": seed, "conditions": summary}, out / "stress.json", True
    )
    print(f"Stress suite on the {split} split ({len(studies)} studies, {checkpoint}):")
    print(format_stress(summary))


if __name__ == "__main__":
    fire.Fire(main)
