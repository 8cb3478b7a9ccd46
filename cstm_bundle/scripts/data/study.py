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

import difflib
import json
import os
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


STUDY_FILES = (INFO_FILE, label_file("ed"), label_file("es"), ANNOTATION_FILE)
"""The other files of a study folder: a folder with one of them but no image is a study without its image."""


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
        raise CSTMInputError(
            Path(study) / INFO_FILE,
            f"{key!r} lists slices {outside} outside the {num_slices} slices",
            f"0-based slice indices in [0, {num_slices})",
        )
    return sorted(info[key])


def drawn_classes(info: Mapping[str, Any], phase: str, study: str | Path) -> set[int]:
    """The classes drawn at a phase: ``info["labels_<phase>"]``, else ``info["labels"]``, else 1, 2 and 3.

    Raises:
        CSTMInputError: a value that is not a list of classes.
    """
    key = f"labels_{phase}" if f"labels_{phase}" in info else "labels"
    classes = info.get(key, list(CLASS_KEYS))
    if not (isinstance(classes, list) and set(classes) <= set(CLASS_KEYS)):
        raise CSTMInputError(
            Path(study) / INFO_FILE, f"{key!r} is {classes!r}", "a list of classes among 1 RV, 2 Myo, 3 LV"
        )
    return set(classes)


def slice_classes(info: Mapping[str, Any], phase: str, z: int, study: str | Path) -> set[int]:
    """The classes drawn on slice ``z`` of ``label_<phase>`` (a slice it covers, :func:`labelled_slices`): those of
    :func:`drawn_classes` whose per-class list (``annotated_slices_<phase>_<class>``), if any, holds ``z``."""
    return {
        c for c in drawn_classes(info, phase, study) if z in info.get(f"annotated_slices_{phase}_{CLASS_KEYS[c]}", [z])
    }


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
    raise CSTMInputError(
        folder,
        f"no annotation: neither {ANNOTATION_FILE} nor {label_file('ed')} exists",
        "one annotated frame (see README, 'Where the annotation comes from')",
    )


INFO_KEYS = (
    "ed",
    "es",
    "annotated_phase",
    "annotated_slices_ed",
    "annotated_slices_es",
    "labels",
    "labels_ed",
    "labels_es",
    "base_first",
    "height_cm",
    "weight_kg",
) + tuple(f"annotated_slices_{phase}_{name}" for phase in LABELLED_PHASES for name in CLASS_KEYS.values())
"""The ``info.json`` keys the bundle reads. Other keys (a dataset's own notes: ``group``, ``spacing``...) are kept and
ignored, except one so close to a key of this list that it is taken for a misspelling of it."""


def read_info(study_dir: str | os.PathLike) -> dict[str, Any]:
    """``info.json`` of a study, checked: a UTF-8 JSON object; ``ed``, ``es``, ``annotated_phase`` 0-based integers,
    ``annotated_slices_ed``/``_es`` non-empty lists of 0-based integers (per-class lists may be empty); no misspelt
    key (``annotated_slice_ed``).
    An empty dict when the file is absent. Ranges against the image are checked where the image is known
    (:class:`~scripts.data.LoadStudyd`).

    Raises:
        CSTMInputError: naming the file and the key.
    """
    path = Path(study_dir) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CSTMInputError(path, f"is not UTF-8 text ({e.reason} at byte {e.start})", "a UTF-8 JSON file") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CSTMInputError(path, f"cannot be read as JSON ({e})", "a JSON object") from e
    if not isinstance(info, dict):
        raise CSTMInputError(path, f"holds a JSON {type(info).__name__}", 'an object such as {"ed": 0, "es": 9}')
    for key in info.keys() - set(INFO_KEYS):
        close = difflib.get_close_matches(key, INFO_KEYS, n=1, cutoff=0.85)
        if close:
            raise CSTMInputError(path, f"unknown key {key!r}", f"{close[0]!r} (the key this bundle reads)")
    for key in ("ed", "es", "annotated_phase"):
        if key in info and not (_is_int(info[key]) and info[key] >= 0):
            raise CSTMInputError(path, f"{key!r} is {info[key]!r}", "a 0-based integer phase")
    for key in (k for k in info if k.startswith("annotated_slices_")):
        value, per_class = info[key], key.count("_") == 3  # annotated_slices_ed_myo may be empty: class not drawn
        if not (isinstance(value, list) and (value or per_class) and all(_is_int(z) and z >= 0 for z in value)):
            raise CSTMInputError(path, f"{key!r} is {value!r}", "a non-empty list of 0-based integer slice indices")
    return info


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
