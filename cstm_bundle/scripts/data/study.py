"""The study folder (the bundle's native layout, SPEC "Interfaces"): its files and what its ``info.json`` means.

    <study>/image.nii.gz        4D (H, W, Z, T), or <study>/dicom/ (one cine series, :mod:`.dicom`)
    <study>/label_ed.nii.gz     optional 3D (H, W, Z) labels at phase info["ed"]
    <study>/label_es.nii.gz     optional 3D (H, W, Z) labels at phase info["es"]
    <study>/annotation.nii.gz   optional 3D labels of one phase (info["annotated_phase"]); overrides label_ed
    <study>/info.json           {"ed": int, "es": int, ...}: :data:`INFO_KEYS`

What is labelled where, one rule for training (:class:`~.transforms.LoadStudyd`), evaluation
(:func:`~scripts.metrics.report.scored_slices`) and the annotation that starts the propagation:

- a phase's label file covers the slices ``annotated_slices_<phase>`` (else every slice); the others are unlabelled,
  unless the labels are complete over the stack (``labels_complete``, :func:`labels_complete`: ACDC, M&Ms): the truth
  then draws every slice that holds a structure, and a slice it leaves out is background;
- it draws the classes ``labels_<phase>`` (else ``labels``, else 1 RV, 2 Myo, 3 LV): a list ``[1, 2, 3]`` or a dict of
  value -> name as the Medical Decathlon writes it (``{"0": "background", "1": "RV", ...}``), whose names must agree
  with the values' meaning here (:func:`class_list`);
- a class with a list ``annotated_slices_<phase>_<class>`` (e.g. ``annotated_slices_ed_myo``) is drawn on the listed
  slices only (an empty list: on none), so on the other labelled slices its absence is not background.

:func:`slice_classes` applies the three rules; everything else asks it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CSTMInputError

IMAGE_FILE = "image.nii.gz"
INFO_FILE = "info.json"
ANNOTATION_FILE = "annotation.nii.gz"
LABELLED_PHASES = ("ed", "es")
CLASS_KEYS = {1: "rv", 2: "myo", 3: "lv"}
"""Label value -> the class's name in ``info.json`` keys."""
CLASS_NAMES = {0: "background", 1: "RV", 2: "Myo", 3: "LV"}
"""Label value -> the class's name in messages and in a ``labels`` dict."""
HEIGHT_CM_LIMITS = (40.0, 250.0)
WEIGHT_KG_LIMITS = (2.0, 350.0)
BMI_LIMITS = (10.0, 80.0)
"""``info.json`` ``height_cm`` / ``weight_kg`` outside these, or a pair whose body mass index (kg/m²) is, are refused
before any work: no patient of a cardiac MRI scanner is that small, tall, light or heavy (the tallest adults are about
250 cm, scanner tables hold 250-300 kg), so the value is a unit error (a height in m, mm or inches, a weight in g or
pounds) or a typo. Values inside them that are still unusual are flagged in the report
(:mod:`scripts.metrics.clinical_report`)."""


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


def labels_complete(info: Mapping[str, Any], dataset_default: bool = False) -> bool:
    """Whether a study's ground truth is complete over its stack: ``info["labels_complete"]`` if given, else the
    dataset's statement (a split file's ``labels_complete``, :func:`~.splits.load_split`), else False (unknown: a
    slice the truth leaves out is unlabelled, as in Sunnybrook's partial contours)."""
    return bool(info.get("labels_complete", dataset_default))


def labelled_slices(
    info: Mapping[str, Any], phase: str, num_slices: int, study: str | Path, complete: bool = False
) -> list[int]:
    """The slices that ``label_<phase>`` covers: every one of the ``num_slices`` when the labels are ``complete``
    (:func:`labels_complete`), else ``info["annotated_slices_<phase>"]``, else all ``num_slices``.

    Raises:
        CSTMInputError: a listed slice outside the image.
    """
    key = f"annotated_slices_{phase}"
    if complete or key not in info:
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
    return set(class_list(info.get(key, list(CLASS_KEYS)), key, Path(study) / INFO_FILE))


LABELS_EXPECTED = (
    'a list of classes among 1 RV, 2 Myo, 3 LV, or a dict such as {"0": "background", "1": "RV", "2": "Myo", "3": "LV"}'
)


def class_name(name: str) -> int | None:
    """The label value that a class name means here (:data:`CLASS_NAMES`), or None: "myocardium", "LV myocardium" -> 2,
    "LV cavity", "left ventricle" -> 3, "RV blood pool", "right ventricle" -> 1, "background", "bg" -> 0."""
    text = name.strip().lower()
    if "myo" in text:
        return 2
    if re.search(r"\blv\b|left ventric", text):
        return 3
    if re.search(r"\brv\b|right ventric", text):
        return 1
    if re.search(r"background|^bg$|^none$", text):
        return 0
    return None


def class_list(value: Any, key: str, path: str | os.PathLike) -> list[int]:
    """The classes that a ``labels`` / ``labels_<phase>`` value of ``info.json`` declares, sorted: a list of classes
    among 1, 2, 3, or a dict of value -> name (the Medical Decathlon's ``{"0": "background", "1": "RV", ...}``)
    whose names mean those values here (:func:`class_name`; a dict of M&Ms' order, ``{"1": "LV", ...}``, is refused:
    its files would be read with the wrong classes). The dict's ``"0"`` (background) is no class.

    Raises:
        CSTMInputError: naming ``path`` and ``key``.
    """
    if isinstance(value, dict):
        classes = []
        for number, name in value.items():
            label = int(number) if isinstance(number, str) and number.strip().isdigit() else None
            if label not in CLASS_NAMES or not isinstance(name, str):
                raise CSTMInputError(path, f"{key!r} has the entry {number!r}: {name!r}", LABELS_EXPECTED)
            if class_name(name) != label:
                raise CSTMInputError(
                    path,
                    f"{key!r} names class {label} {name!r}, which is not {CLASS_NAMES[label]} here",
                    "label values 1 RV, 2 Myo, 3 LV (relabel the files to this order)",
                )
            classes += [label] if label else []
        return sorted(set(classes))
    if not (isinstance(value, list) and all(_is_int(c) for c in value) and set(value) <= set(CLASS_KEYS)):
        raise CSTMInputError(path, f"{key!r} is {value!r}", LABELS_EXPECTED)
    return sorted(set(value))


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
    "labels_complete",
    "height_cm",
    "weight_kg",
) + tuple(f"annotated_slices_{phase}_{name}" for phase in LABELLED_PHASES for name in CLASS_KEYS.values())
"""The ``info.json`` keys the bundle reads. Other keys (a dataset's own notes: ``group``, ``spacing``...) are kept and
ignored, except one so close to a key of this list that it is taken for a misspelling of it."""


def read_info(study_dir: str | os.PathLike) -> dict[str, Any]:
    """``info.json`` of a study, checked: a UTF-8 JSON object; ``ed``, ``es``, ``annotated_phase`` 0-based integers,
    ``annotated_slices_ed``/``_es`` non-empty lists of 0-based integers (per-class lists may be empty); ``labels``,
    ``labels_ed``, ``labels_es`` lists or dicts of classes (:func:`class_list`; returned as sorted lists);
    ``base_first``, ``labels_complete`` true or false; ``height_cm`` / ``weight_kg`` finite numbers (or null) within
    :data:`HEIGHT_CM_LIMITS` / :data:`WEIGHT_KG_LIMITS`, and together a BMI within :data:`BMI_LIMITS`; no misspelt
    key (``annotated_slice_ed``).
    An empty dict when the file is absent. Ranges against the image are checked by :func:`check_info_ranges`, where
    the image's shape is known (before any work: :func:`~scripts.data.transforms.read_annotation`).

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
    for key in ("labels", "labels_ed", "labels_es"):
        if key in info:
            info[key] = class_list(info[key], key, path)
    for key in ("base_first", "labels_complete"):
        if key in info and not isinstance(info[key], bool):
            raise CSTMInputError(path, f"{key!r} is {info[key]!r}", "true or false (JSON booleans)")
    check_body_size(info, path)
    return info


def check_body_size(info: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``height_cm`` and ``weight_kg`` of ``info.json``: each absent, null, or a finite number within
    :data:`HEIGHT_CM_LIMITS` / :data:`WEIGHT_KG_LIMITS`; both given, a BMI within :data:`BMI_LIMITS`.

    Raises:
        CSTMInputError: naming ``path``, the key and the value.
    """
    for key, (low, high), what in (
        ("height_cm", HEIGHT_CM_LIMITS, "the patient's height in cm"),
        ("weight_kg", WEIGHT_KG_LIMITS, "the patient's weight in kg"),
    ):
        value, unit = info.get(key), key.split("_")[1]
        if value is None:
            continue
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise CSTMInputError(path, f"{key!r} is {value!r}", f"{what}: a number in {low:g}-{high:g}, or null")
        if not low <= value <= high:
            raise CSTMInputError(
                path, f"{key!r} is {value:g}, outside {low:g}-{high:g} {unit}", f"{what} (check the unit), or null"
            )
    height, weight = info.get("height_cm"), info.get("weight_kg")
    if height is not None and weight is not None:
        bmi, (low, high) = weight / (height / 100.0) ** 2, BMI_LIMITS
        if not low <= bmi <= high:
            raise CSTMInputError(
                path,
                f"'height_cm' {height:g} and 'weight_kg' {weight:g} give a BMI of {bmi:.0f} kg/m², outside "
                f"{low:g}-{high:g}",
                "the height in cm and the weight in kg (not inches or pounds)",
            )


def check_info_ranges(info: Mapping[str, Any], shape: Sequence[int], study: str | os.PathLike) -> None:
    """The values of ``info.json`` (:func:`read_info`) against the study image of ``shape`` (H, W, Z, T): every phase
    (``ed``, ``es``, ``annotated_phase``) within the T phases, every listed slice within the Z slices, whichever files
    read them. Runs before any work, for every study (:func:`~scripts.data.transforms.read_annotation`).

    Raises:
        CSTMInputError: naming ``info.json`` and the key.
    """
    for key in ("ed", "es", "annotated_phase"):
        if key in info:
            phase_index(info, key, int(shape[3]), study)
    for key in sorted(k for k in info if k.startswith("annotated_slices_")):
        outside = [z for z in info[key] if not 0 <= z < shape[2]]
        if outside:
            raise CSTMInputError(
                Path(study) / INFO_FILE,
                f"{key!r} lists slices {outside} outside the {shape[2]} slices",
                f"0-based slice indices in [0, {shape[2]})",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
