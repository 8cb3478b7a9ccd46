"""Clinical outputs of a 4D label map: per-phase LV/RV blood volumes, EDV, ESV, SV, EF, LV myocardial mass.

Volumes count the voxels of a class at each phase times the voxel volume (|det| of the affine's 3×3 part, mm³ ->
mL): the summation-of-discs method of cine MRI on the label map's own slices (no interpolation between slices).
Labels: 1 RV blood pool, 2 LV myocardium, 3 LV blood pool (papillary muscles inside the LV blood pool count as blood,
as ACDC labels them).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy as to_numpy

from ..data.dicom import DICOM_DIR, CineTags, read_cine_tags
from ..data.outputs import output_folder
from ..data.readers import image_geometry, study_image
from ..data.study import read_info
from ..io import save_json, write_atomic
from .clinical_report import PLAUSIBLE_LV_MASS_G, PLAUSIBLE_ML, clinical_context, format_report

logger = logging.getLogger(__name__)

RV, MYO, LV = 1, 2, 3
MYOCARDIAL_DENSITY = 1.05
"""g/mL, for LV myocardial mass = myocardial volume at ED × 1.05."""
VOLUMES_FILE = "volumes.csv"
FUNCTION_FILE = "cardiac_function.json"
PICTURE_FILES = ("volume_curve.png", "montage.png", "middle_slice.gif")
"""What :func:`~.pictures.write_pictures` writes."""
REPORT_FILE = "report.md"
"""The readable report (:func:`~.clinical_report.format_report`), written last."""


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det(affine[:3, :3])| mm³ / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def study_affine(data: Mapping[Hashable, Any], image_key: str = "image") -> np.ndarray:
    """The (4, 4) spatial affine of a study item: the loaded image's (a MONAI ``MetaTensor``), else its file's.

    Only voxel sizes are read from it (|det|, column norms), which do not depend on the LPS/RAS convention.
    """
    image = data.get(image_key)
    affine = getattr(image, "affine", None)
    if affine is not None and tuple(affine.shape) == (4, 4):
        return to_numpy(affine).astype(float)
    return image_geometry(study_image(data["study_dir"]))[0]


def phase_volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, np.ndarray]:
    """Per-phase volumes in mL of a (H, W, Z, T) label map: {"lv": (T,), "rv": (T,), "myo": (T,)}."""
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise ValueError(f"labels must be (H, W, Z, T), got shape {labels.shape}.")
    return {
        name: (labels == value).sum(axis=(0, 1, 2)) * voxel_ml for name, value in (("lv", LV), ("rv", RV), ("myo", MYO))
    }


def cardiac_function(
    labels: np.ndarray, voxel_ml: float, ed: int | None = None, es: int | None = None
) -> dict[str, Any]:
    """EDV, ESV, SV (mL), EF (%) of LV and RV, and LV myocardial mass (g) at ED, from a 4D label map.

    Args:
        labels: (H, W, Z, T) labels.
        voxel_ml: voxel volume in mL (:func:`voxel_volume_ml`).
        ed: ED phase; None takes the phase of the largest LV volume.
        es: ES phase; None takes the phase of the smallest LV volume.
    Returns:
        {"ed_phase", "es_phase", "ed_source", "es_source", "lv": {"edv_ml", "esv_ml", "sv_ml", "ef_percent"},
        "rv": {...}, "lv_mass_g", "volumes_ml": {"lv": [T], "rv": [T], "myo": [T]}}. EF is None when EDV is 0 (the
        structure is absent): a documented value, never a division by zero.
    Raises:
        ValueError: ``ed`` or ``es`` is not a phase of ``labels`` (``info.json`` is checked against the image before
            any work: :func:`~scripts.data.study.check_info_ranges`).
    """
    volumes = phase_volumes(labels, voxel_ml)
    for name, phase in (("ed", ed), ("es", es)):
        if phase is not None and not 0 <= phase < labels.shape[3]:
            raise ValueError(f"{name}={phase} is outside the {labels.shape[3]} phases of the label map.")
    out: dict[str, Any] = {
        "ed_phase": int(np.argmax(volumes["lv"])) if ed is None else int(ed),
        "es_phase": int(np.argmin(volumes["lv"])) if es is None else int(es),
        "ed_source": "largest LV volume" if ed is None else "info.json",
        "es_source": "smallest LV volume" if es is None else "info.json",
    }
    t_ed, t_es = out["ed_phase"], out["es_phase"]
    for name in ("lv", "rv"):
        edv, esv = float(volumes[name][t_ed]), float(volumes[name][t_es])
        out[name] = {
            "edv_ml": round(edv, 2),
            "esv_ml": round(esv, 2),
            "sv_ml": round(edv - esv, 2),
            "ef_percent": round(100.0 * (edv - esv) / edv, 2) if edv > 0 else None,
        }
    out["lv_mass_g"] = round(float(volumes["myo"][t_ed]) * MYOCARDIAL_DENSITY, 2)
    out["volumes_ml"] = {k: [round(float(v), 3) for v in vs] for k, vs in volumes.items()}
    return out


VANISHED_FRACTION = 0.5
"""A class absent from more than this fraction of the phases, while present at others, is flagged."""


def sanity_flags(result: dict[str, Any], labels: np.ndarray) -> list[str]:
    """What makes a :func:`cardiac_function` result suspect (an empty list when nothing does).

    Flags: an EF outside [0, 100] %, an ESV above the EDV, an EDV or LV mass outside human anatomy
    (:data:`~.clinical_report.PLAUSIBLE_ML`, :data:`~.clinical_report.PLAUSIBLE_LV_MASS_G`), a class present at some
    phases but absent from most. The body size and the indexed values are flagged by
    :func:`~.clinical_report.clinical_context`.

    Args:
        result: from :func:`cardiac_function`.
        labels: (H, W, Z, T) the label map it was computed from.
    """
    flags = []
    for name in ("lv", "rv"):
        v = result[name]
        if v["edv_ml"] == 0:
            continue  # the structure is not segmented at all (e.g. an annotation without it): no function claimed
        if v["ef_percent"] is not None and not 0 <= v["ef_percent"] <= 100:
            flags.append(f"{name.upper()} EF {v['ef_percent']:.1f} % outside [0, 100] %")
        if v["esv_ml"] > v["edv_ml"]:
            flags.append(f"{name.upper()} ESV {v['esv_ml']:.1f} mL above EDV {v['edv_ml']:.1f} mL")
        low, high = PLAUSIBLE_ML[name]
        if not low <= v["edv_ml"] <= high:
            flags.append(f"{name.upper()} EDV {v['edv_ml']:.1f} mL outside {low:g}-{high:g} mL")
    if result["lv_mass_g"] and not PLAUSIBLE_LV_MASS_G[0] <= result["lv_mass_g"] <= PLAUSIBLE_LV_MASS_G[1]:
        flags.append(
            f"LV mass {result['lv_mass_g']:.1f} g outside {PLAUSIBLE_LV_MASS_G[0]:g}-" f"{PLAUSIBLE_LV_MASS_G[1]:g} g"
        )
    present = np.stack([(labels == c).any(axis=(0, 1, 2)) for c in (RV, MYO, LV)])  # (3, T)
    for name, row in zip(("RV", "Myo", "LV"), present, strict=True):
        if row.any() and (~row).mean() > VANISHED_FRACTION:
            flags.append(f"{name} absent from {int((~row).sum())} of {row.size} phases")
    return flags


class CardiacOutputsd(MapTransform):
    """Write the clinical outputs of a predicted 4D label map next to it, in ``<output_dir>/<study>/``:

    - ``volumes.csv``: phase, LV / RV blood and LV myocardial volume in mL (one row per phase);
    - ``cardiac_function.json``: :func:`cardiac_function` plus the voxel volume, the study, ``flags``
      (:func:`sanity_flags`: what makes the numbers suspect, also logged as warnings), and the clinical context of
      :func:`~.clinical_report.clinical_context` (body size and indexed values, heart rate and cardiac output from
      the DICOM tags of a DICOM study, ``ed_es_source``, ``conventions``);
    - with ``pictures``: ``volume_curve.png``, ``montage.png``, ``middle_slice.gif`` (:mod:`.pictures`);
    - ``report.md``: the same numbers to read (:func:`~.clinical_report.format_report`), linking the pictures.

    ED / ES: ``phases="info"`` takes ``info.json``'s ``ed`` / ``es`` where given, else the largest / smallest LV volume;
    ``phases="volume"`` always takes the volume curve. Height and weight come from ``info.json`` in both modes.
    Every file is written atomically and its path logged.

    Args:
        keys: the prediction key, (1, H, W, Z, T).
        output_dir: the output folder.
        overwrite: replace existing files.
        enabled: False makes this transform a no-op (config switch ``clinical_outputs``).
        pictures: also write the PNG/GIF pictures (config switch ``clinical_pictures``).
        phases: "info" or "volume", as above.
        image_key: the (1, H, W, Z, T) image for the pictures (any intensity range; rescaled per study).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        enabled: bool = True,
        pictures: bool = True,
        phases: Literal["info", "volume"] = "info",
        image_key: str = "image",
    ):
        super().__init__(keys)
        if phases not in ("info", "volume"):
            raise ValueError(f"phases must be 'info' or 'volume', got {phases!r}.")
        self.output_dir, self.overwrite = Path(output_dir), overwrite
        self.enabled, self.pictures, self.phases, self.image_key = enabled, pictures, phases, image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        labels = to_numpy(d[self.first_key(d)])[0]  # (H, W, Z, T)
        study_dir = Path(d["study_dir"])
        affine = study_affine(d, self.image_key)
        voxel_ml = voxel_volume_ml(affine)
        info = read_info(study_dir)
        phases = (info.get("ed"), info.get("es")) if self.phases == "info" else (None, None)
        result = cardiac_function(labels, voxel_ml, *phases)
        result["flags"] = sanity_flags(result, labels)
        result = clinical_context(
            {"study": d["study"], "voxel_volume_ml": voxel_ml, "myocardial_density_g_per_ml": MYOCARDIAL_DENSITY}
            | result,
            info,
            dicom_tags(study_dir),
            affine,
            study_dir,
        )
        folder = output_folder(d, self.output_dir)
        written = [self._write_volumes(result, folder / VOLUMES_FILE)]
        written.append(save_json(result, folder / FUNCTION_FILE, self.overwrite))
        if self.pictures:
            from .pictures import write_pictures

            written += write_pictures(to_numpy(d[self.image_key])[0], labels, result, folder, self.overwrite)
        report = format_report(result, PICTURE_FILES if self.pictures else ())
        written.append(write_atomic(folder / REPORT_FILE, lambda tmp: Path(tmp).write_text(report), self.overwrite))
        lv, rv = result["lv"], result["rv"]
        logger.info(
            f"{d['study']}: LV EDV {lv['edv_ml']:.1f} mL, ESV {lv['esv_ml']:.1f} mL, EF {_pct(lv['ef_percent'])}; "
            f"RV EDV {rv['edv_ml']:.1f} mL, ESV {rv['esv_ml']:.1f} mL, EF {_pct(rv['ef_percent'])}; "
            f"LV mass {result['lv_mass_g']:.1f} g (ED t={result['ed_phase']}, ES t={result['es_phase']}, "
            f"{result['ed_es_source']})"
            + ("" if result["heart_rate_bpm"] is None else f"; heart rate {result['heart_rate_bpm']:.0f} bpm")
        )
        for flag in result["flags"]:
            logger.warning(f"{d['study']}: SUSPECT RESULT: {flag} (cardiac_function.json 'flags')")
        for path in written:
            logger.info(f"{d['study']}: written {path}")
        return d

    def output_files(self, study: str) -> list[Path]:
        """The files that this transform writes for ``study`` (none when disabled), in the order it writes them."""
        if not self.enabled:
            return []
        names = (VOLUMES_FILE, FUNCTION_FILE, *(PICTURE_FILES if self.pictures else ()), REPORT_FILE)
        return [self.output_dir / study / name for name in names]

    def _write_volumes(self, result: dict[str, Any], path: Path) -> Path:
        volumes = result["volumes_ml"]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["phase", "lv_blood_ml", "rv_blood_ml", "lv_myocardium_ml", "is_ed", "is_es"])
                for t, (lv, rv, myo) in enumerate(zip(volumes["lv"], volumes["rv"], volumes["myo"], strict=True)):
                    writer.writerow([t, lv, rv, myo, int(t == result["ed_phase"]), int(t == result["es_phase"])])

        return write_atomic(path, write, self.overwrite)


def dicom_tags(study_dir: str | os.PathLike) -> CineTags | None:
    """The patient and timing tags (:func:`~scripts.data.dicom.read_cine_tags`) of a DICOM study; None for NIfTI."""
    image = study_image(study_dir)
    return read_cine_tags(image) if image is not None and image.name == DICOM_DIR and image.is_dir() else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"
