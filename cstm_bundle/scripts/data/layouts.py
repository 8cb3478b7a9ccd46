"""Other dataset layouts (ACDC, M&Ms, a datalist JSON), converted into the native study-folder layout.

Every reader of the bundle (``list_studies``, ``LoadStudyd``, the evaluator, the writers) works on study folders
(:mod:`.study`). A dataset in another layout is converted once into study folders under ``layout_dir``: the 4D image
and label files whose values are already in the ACDC convention are symlinked (no copy), relabelled or extracted
labels are written, and ``info.json`` holds the 0-based ED/ES phases. ``train.json`` does this as one explicit step
(its ``study_folders``: :func:`prepare_dataset`), before it lists the training and validation studies;
``python -m scripts.data.layouts SRC LAYOUT DST`` does it by hand (for inference/evaluation).

Layouts (``dataset_layout``):

- ``"study"``: the native layout, read in place.
- ``"acdc"``: ``patientNNN/Info.cfg`` (``ED: 1``, ``ES: 12``: 1-based frame numbers), ``patientNNN_4d.nii.gz``,
  ``patientNNN_frameXX.nii.gz`` / ``patientNNN_frameXX_gt.nii.gz`` (XX = the 1-based ED/ES frame). Labels 1 RV,
  2 Myo, 3 LV as ours.
- ``"mnms"``: ``<code>/<code>_sa.nii.gz`` (4D), ``<code>/<code>_sa_gt.nii.gz`` (4D, labelled at ED and ES only) and the
  info CSV (columns ``External code``, ``ED``, ``ES``: 0-based), found in the dataset folder or one of its two parents
  (or given as ``info_csv``). M&Ms labels are 1 LV, 2 Myo, 3 RV: mapped to ours (1 RV, 2 Myo, 3 LV).
- ``"datalist"``: ``dataset_dir`` is a JSON file: a list of items, or ``{"training": [...]}``, each
  ``{"image": 4D, "label_ed": 3D, "label_es": 3D, "ed": int, "es": int}`` (0-based phases; paths relative to the
  JSON's folder; optional ``"study"`` name, ``"annotation"`` + ``"annotated_phase"``, ``"annotated_slices_ed"``/
  ``"annotated_slices_es"``, ``"labels"``).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from ..errors import CSTMInputError
from ..io import save_json, save_nifti, write_atomic
from .study import ANNOTATION_FILE, IMAGE_FILE, INFO_FILE, INFO_KEYS, label_file

logger = logging.getLogger(__name__)

LAYOUTS = ("study", "acdc", "mnms", "datalist")
MNMS_TO_ACDC = np.array([0, 3, 2, 1], dtype=np.uint8)
"""M&Ms label value -> ours: LV 1 -> 3, Myo 2 -> 2, RV 3 -> 1."""


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    dataset_layout: str = "study",
    layout_dir: str | os.PathLike | None = None,
    info_csv: str | os.PathLike | None = None,
) -> str | list[str]:
    """The explicit conversion step of a training config: ``dataset_dir`` itself in the native layout, else the
    study folders that :func:`convert_layout` writes under ``layout_dir`` (only those: not the leftovers of an
    earlier conversion there). Either is what :func:`~.readers.list_studies` takes; a config references this once,
    so the conversion runs once per run.

    Raises:
        CSTMInputError: no ``layout_dir`` for another layout, or what :func:`convert_layout` raises.
    """
    if dataset_layout == "study":
        return str(dataset_dir)
    if layout_dir is None:
        raise CSTMInputError(
            f"dataset_layout={dataset_layout!r}",
            "no layout_dir to convert the studies into",
            "a writable folder (--layout_dir)",
        )
    return [str(p) for p in convert_layout(dataset_dir, dataset_layout, layout_dir, info_csv)]  # type: ignore[arg-type]


def convert_layout(
    dataset_dir: str | os.PathLike,
    dataset_layout: Literal["acdc", "mnms", "datalist"],
    layout_dir: str | os.PathLike,
    info_csv: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the studies of a dataset in another layout as study folders ``<layout_dir>/<study>/``.

    Re-running replaces the files of each study (so an edited source is picked up); other folders are left alone,
    and only the returned folders belong to this conversion (a study that the dataset no longer has is not listed).

    Args:
        dataset_dir: the dataset folder (ACDC, M&Ms) or the datalist JSON file.
        dataset_layout: "acdc", "mnms" or "datalist" (see the module docstring).
        layout_dir: where the study folders go.
        info_csv: M&Ms only: the info CSV; None looks for it next to the dataset.
    Returns:
        the study folders of this dataset, sorted by name.
    Raises:
        CSTMInputError: an unknown layout, a missing file, a bad Info.cfg / CSV row / datalist item.
    """
    src, dst = Path(dataset_dir), Path(layout_dir)
    if dataset_layout == "acdc":
        studies = _acdc_studies(src)
    elif dataset_layout == "mnms":
        studies = _mnms_studies(src, info_csv)
    elif dataset_layout == "datalist":
        studies = _datalist_studies(src)
    else:
        raise CSTMInputError(
            f"dataset_layout={dataset_layout!r}", "unknown dataset layout", f"one of {', '.join(LAYOUTS)}"
        )
    if not studies:
        raise CSTMInputError(src, f"no study found in the {dataset_layout} layout", "see scripts/data/layouts.py")
    for study in studies:
        _write_study(dst / study["study"], study)
    logger.info(f"{len(studies)} {dataset_layout} studies of {src} as study folders in {dst}")
    return sorted(dst / study["study"] for study in studies)


def _write_study(folder: Path, study: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _link(study["image"], folder / IMAGE_FILE)
    for name, file in (("label_ed", label_file("ed")), ("label_es", label_file("es")), ("annotation", ANNOTATION_FILE)):
        target = folder / file
        if name not in study:
            target.unlink(missing_ok=True)
        elif isinstance(study[name], Path):
            _link(study[name], target)
        else:
            array, affine = study[name]
            save_nifti(array, affine, target, overwrite=True)
    save_json(study["info"], folder / INFO_FILE, overwrite=True)


def _link(source: Path, target: Path) -> None:
    """Symlink ``source`` as ``target`` (a ``.nii.gz`` name); an uncompressed ``.nii`` source is written compressed
    instead, as its name promises (a link would fail to read as "not a gzip file")."""
    if not source.is_file():
        raise CSTMInputError(source, "file not found", "a NIfTI file of the dataset")
    if not source.name.endswith(".gz") and target.name.endswith(".gz"):

        def compress(tmp: str) -> None:
            with open(source, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 24)

        target.unlink(missing_ok=True)
        write_atomic(target, compress)
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")  # several ranks of a multi-GPU run may convert at once
    tmp.unlink(missing_ok=True)
    os.symlink(source.resolve(), tmp)
    os.replace(tmp, target)


def read_acdc_cfg(path: str | os.PathLike) -> dict[str, str]:
    """``Info.cfg`` of an ACDC patient as a dict (``{"ED": "1", "ES": "12", "Group": "DCM", ...}``)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise CSTMInputError(path, f"cannot be read ({e.strerror})", "ACDC's Info.cfg with ED and ES") from e
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if v}


def _acdc_studies(root: Path) -> list[dict[str, Any]]:
    folders = (
        [root] if (root / "Info.cfg").is_file() else sorted(p for p in root.iterdir() if (p / "Info.cfg").is_file())
    )
    studies = []
    for folder in folders:
        cfg_path, name = folder / "Info.cfg", folder.name
        cfg = read_acdc_cfg(cfg_path)
        frames = {}
        for key in ("ED", "ES"):
            if not cfg.get(key, "").isdigit() or int(cfg[key]) < 1:
                raise CSTMInputError(cfg_path, f"{key} is {cfg.get(key)!r}", f"'{key}: <1-based frame number>'")
            frames[key] = int(cfg[key])
        study: dict[str, Any] = {
            "study": name,
            "image": folder / f"{name}_4d.nii.gz",
            "info": {"ed": frames["ED"] - 1, "es": frames["ES"] - 1, "source": str(folder)},
        }
        for key, frame in frames.items():
            gt = folder / f"{name}_frame{frame:02d}_gt.nii.gz"
            if gt.is_file():
                study[f"label_{key.lower()}"] = gt
        studies.append(study)
    return studies


def _find_mnms_csv(root: Path) -> Path:
    for folder in (root, root.parent, root.parent.parent):
        for path in sorted(folder.glob("*.csv")):
            with open(path, newline="") as f:
                if "External code" in (csv.DictReader(f).fieldnames or []):
                    return path
    raise CSTMInputError(
        root,
        "no M&Ms info CSV (with an 'External code' column) here or in the two parent folders",
        "the dataset's information CSV, or --info_csv PATH",
    )


def _mnms_studies(root: Path, info_csv: str | os.PathLike | None) -> list[dict[str, Any]]:
    csv_path = Path(info_csv) if info_csv else _find_mnms_csv(root)
    try:
        with open(csv_path, newline="") as f:
            rows = {row["External code"].strip(): row for row in csv.DictReader(f)}
    except (OSError, KeyError) as e:
        raise CSTMInputError(
            csv_path, f"cannot be read as the M&Ms info CSV ({e})", "columns 'External code', 'ED', 'ES'"
        ) from e
    folders = sorted(p for p in root.iterdir() if (p / f"{p.name}_sa.nii.gz").is_file())
    studies = []
    for folder in folders:
        code = folder.name
        if code not in rows:
            raise CSTMInputError(csv_path, f"no row for {code}", "one row per study ('External code')")
        phases = {}
        for key in ("ED", "ES"):
            value = str(rows[code].get(key, "")).strip()
            if not value.isdigit():
                raise CSTMInputError(csv_path, f"{code}: {key} is {value!r}", "a 0-based phase index")
            phases[key.lower()] = int(value)
        study: dict[str, Any] = {
            "study": code,
            "image": folder / f"{code}_sa.nii.gz",
            "info": {**phases, "source": str(folder)},
        }
        gt_path = folder / f"{code}_sa_gt.nii.gz"
        if gt_path.is_file():
            gt = nib.load(str(gt_path))
            data = np.asarray(gt.dataobj)
            if data.ndim != 4 or max(phases.values()) >= data.shape[3]:
                raise CSTMInputError(
                    gt_path,
                    f"label shape {data.shape} for ED={phases['ed']}, ES={phases['es']}",
                    "a 4D label (H, W, Z, T) labelled at ED and ES",
                )
            if not np.isin(np.unique(data), (0, 1, 2, 3)).all():
                raise CSTMInputError(
                    gt_path,
                    f"label values {np.unique(data).tolist()} outside [0, 1, 2, 3]",
                    "M&Ms labels 1 LV, 2 Myo, 3 RV",
                )
            for key, phase in phases.items():
                study[f"label_{key}"] = (MNMS_TO_ACDC[data[..., phase].astype(np.intp)], gt.affine)
        studies.append(study)
    return studies


def _datalist_studies(path: Path) -> list[dict[str, Any]]:
    """The studies of a datalist JSON (see the module docstring), paths relative to its folder.

    Read as plain JSON, not with MONAI's ``load_decathlon_datalist``: that one reads only ``{"<key>": [...]}`` (not a
    bare list), and it makes every value that names an existing path absolute, so a ``"study"`` named like a folder
    beside the JSON (``patient001`` next to ``patient001/``) would become that folder, and the conversion would write
    into the dataset.
    """
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CSTMInputError(path, f"cannot be read as JSON ({e})", "a datalist JSON file (--dataset_dir)") from e
    items = items.get("training", items.get("data")) if isinstance(items, dict) else items
    if not isinstance(items, list) or not all(isinstance(i, dict) and "image" in i for i in items):
        raise CSTMInputError(
            path,
            "is not a list of items with an 'image'",
            'a list (or {"training": [...]}) of {"image", "label_ed", "label_es", "ed", "es"}',
        )
    studies, names = [], set()
    for i, item in enumerate(items):
        image = path.parent / item["image"]
        name = str(item.get("study") or image.name.removesuffix(".gz").removesuffix(".nii"))
        if name in names:
            raise CSTMInputError(path, f"item {i}: study name {name!r} used twice", "a unique 'study' per item")
        names.add(name)
        study: dict[str, Any] = {
            "study": name,
            "image": image,
            "info": {k: item[k] for k in INFO_KEYS if k in item} | {"source": str(path)},
        }
        for key in ("label_ed", "label_es", "annotation"):
            if item.get(key):
                study[key] = path.parent / item[key]
        studies.append(study)
    return studies


if __name__ == "__main__":
    import fire

    fire.Fire(convert_layout)
