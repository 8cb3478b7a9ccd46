"""The study folder (the bundle's native layout, SPEC "Interfaces"): its files and what its ``info.json`` means.

    <study>/image.nii.gz        4D (H, W, Z, T), or <study>/dicom/ (one cine series, :mod:`.dicom`)
    <study>/label_ed.nii.gz     optional 3D (H, W, Z) labels at phase info["ed"]
    <study>/label_es.nii.gz     optional 3D (H, W, Z) labels at phase info["es"]
    <study>/annotation.nii.gz   optional 3D labels of one phase (info["annotated_phase"]); overrides label_ed
    <study>/info.json           {"ed": int, "es": int, ...}: :data:`INFO_KEYS`

What is labelled where, one rule for training (:class:`~.transforms.LoadStudyd`), evaluation
(:func:`~scripts.metrics.report.scored_slices`) and the annotation that starts the propagation:

- a phase's label file covers the slices ``annotated_slices_<phase>`` (else every slice); the others are unlabelled;
- it draws the classes ``labels_<phase>`` (else ``labels``, else 1 RV, 2 Myo, 3 LV);
- a class with a list ``annotated_slices_<phase>_<class>`` (e.g. ``annotated_slices_ed_myo``) is drawn on the listed
  slices only (an empty list: on none), so on the other labelled slices its absence is not background.

:func:`slice_classes` applies the three rules; everything else asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CSTMInputError

IMAGE_FILE = "image.nii.gz"
INFO_FILE = "info.json"
ANNOTATION_FILE = "annotation.nii.gz"
LABELLED_PHASES = ("ed", "es")
CLASS_KEYS = {1: "rv", 2: "myo", 3: "lv"}
"""Label value -> the class's name in ``info.json`` keys."""


def label_file(phase: str) -> str:
    """``label_ed.nii.gz`` / ``label_es.nii.gz``."""
    return f"label_{phase}.nii.gz"


def phase_index(info: Mapping[str, Any], key: str, num_phases: int, study: str | Path, file: str = "") -> int:
    """``info[key]`` (``ed``, ``es``, ``annotated_phase``: the phase of ``file``), checked to be a phase of an image of
    ``num_phases``.

    Raises:
        CSTMInputError: naming ``info.json`` and the key.
    """
    where = Path(study) / INFO_FILE
    if key not in info:
        raise CSTMInputError(where, f"missing {key!r}" + (f" for {file}" if file else ""), "a 0-based phase index")
    phase = info[key]
    if not 0 <= phase < num_phases:
        raise CSTMInputError(where, f"{key}={phase} is outside the {num_phases} phases", f"0 <= {key} < {num_phases}")
    return int(phase)


def labelled_slices(info: Mapping[str, Any], phase: str, num_slices: int, study: str | Path) -> list[int]:
    """The slices that ``label_<phase>`` covers: ``info["annotated_slices_<phase>"]``, else all ``num_slices``.

    Raises:
        CSTMInputError: a listed slice outside the image.
    """
    key = f"annotated_slices_{phase}"
    if key not in info:
        return list(range(num_slices))
    outside = [z for z in info[key] if not 0 <= z < num_slices]
    if outside:
        raise CSTMInputError(Path(study) / INFO_FILE, f"{key!r} lists slices {outside} outside the {num_slices} slices",
                             f"0-based slice indices in [0, {num_slices})")
    return sorted(info[key])


def drawn_classes(info: Mapping[str, Any], phase: str, study: str | Path) -> set[int]:
    """The classes drawn at a phase: ``info["labels_<phase>"]``, else ``info["labels"]``, else 1, 2 and 3.

    Raises:
        CSTMInputError: a value that is not a list of classes.
    """
    key = f"labels_{phase}" if f"labels_{phase}" in info else "labels"
    classes = info.get(key, list(CLASS_KEYS))
    if not (isinstance(classes, list) and set(classes) <= set(CLASS_KEYS)):
        raise CSTMInputError(Path(study) / INFO_FILE, f"{key!r} is {classes!r}",
                             "a list of classes among 1 RV, 2 Myo, 3 LV")
    return set(classes)


def slice_classes(info: Mapping[str, Any], phase: str, z: int, study: str | Path) -> set[int]:
    """The classes drawn on slice ``z`` of ``label_<phase>`` (a slice it covers, :func:`labelled_slices`): those of
    :func:`drawn_classes` whose per-class list (``annotated_slices_<phase>_<class>``), if any, holds ``z``."""
    return {c for c in drawn_classes(info, phase, study)
            if z in info.get(f"annotated_slices_{phase}_{CLASS_KEYS[c]}", [z])}


def annotation_source(study: str | Path) -> tuple[Path, str, str | None]:
    """Where the annotated frame comes from: ``annotation.nii.gz`` at ``info["annotated_phase"]`` if present, else
    ``label_ed.nii.gz`` at ``info["ed"]``.

    Returns:
        (file, the info key of its phase, the phase's name for :func:`labelled_slices` or None: every slice).
    Raises:
        CSTMInputError: neither file exists.
    """
    folder = Path(study)
    if (folder / ANNOTATION_FILE).is_file():
        return folder / ANNOTATION_FILE, "annotated_phase", None
    if (folder / label_file("ed")).is_file():
        return folder / label_file("ed"), "ed", "ed"
    raise CSTMInputError(folder, f"no annotation: neither {ANNOTATION_FILE} nor {label_file('ed')} exists",
                         "one annotated frame (see README, 'Where the annotation comes from')")
