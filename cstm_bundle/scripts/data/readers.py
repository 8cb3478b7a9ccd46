"""Study folders (the project's native layout, SPEC "Interfaces"): discovery and the files of one study.

    <study>/image.nii.gz        4D (H, W, Z, T)
    <study>/label_ed.nii.gz     optional 3D (H, W, Z) labels at phase info["ed"]
    <study>/label_es.nii.gz     optional 3D (H, W, Z) labels at phase info["es"]
    <study>/annotation.nii.gz   optional 3D labels of one phase (info["annotated_phase"]); overrides label_ed
    <study>/info.json           {"ed": int, "es": int, optional "annotated_slices_ed"/"_es", "labels"}
"""

from __future__ import annotations

import difflib
import gzip
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import CSTMInputError
from .dicom import DICOM_DIR, scan_cine_dicom

logger = logging.getLogger(__name__)

IMAGE_FILE = "image.nii.gz"
STUDY_FILES = ("info.json", "label_ed.nii.gz", "label_es.nii.gz", "annotation.nii.gz")
"""The other files of a study folder: a folder with one of them but no image is a study without its image."""
LABEL_VALUES = (0, 1, 2, 3)


def list_studies(
    dataset_dir: str | os.PathLike,
    split: str | None = None,
    num_val: int = 0,
    demo_dir: str | os.PathLike | None = None,
    demo_studies: int = 4,
    demo_seed: int = 0,
    dataset_layout: str = "study",
    layout_dir: str | os.PathLike | None = None,
    info_csv: str | os.PathLike | None = None,
    check: bool = True,
) -> list[dict[str, str]]:
    """Find the study folders under ``dataset_dir`` (or ``dataset_dir`` itself if it is one study).

    The demo folder is the one folder that is created when missing: if ``dataset_dir`` is ``demo_dir`` and does not
    exist, ``demo_studies`` phantom studies (seeds ``demo_seed``...) are generated there first.

    Args:
        dataset_dir: a folder of study folders, or one study folder.
        split: None for all studies, "train" for all but the last ``num_val`` (sorted by name), "val" for those.
        num_val: studies held out for validation.
        demo_dir: the bundle's phantom demo folder.
        demo_studies: phantom studies to generate into ``demo_dir``.
        demo_seed: seed of the first generated study.
        dataset_layout: "study" (this layout), or "acdc", "mnms", "datalist": ``dataset_dir`` is then first converted
            into study folders under ``layout_dir`` (:func:`~.layouts.convert_layout`), which are listed.
        layout_dir: where a dataset in another layout is converted to; required unless ``dataset_layout="study"``.
        info_csv: M&Ms info CSV (None: looked for next to the dataset).
        check: check each study's image and log the sub-folders that are not studies (:func:`skipped_folders`);
            False where the caller checks and reports each study itself (:class:`~.batch.StudyBatch`). The folders
            are logged anyway when no study is found.
    Returns:
        dicts with "image" (the NIfTI file or DICOM folder, see :func:`study_image`), "study" (folder name) and
        "study_dir", sorted by name.
    Raises:
        CSTMInputError: the folder does not exist or holds no study, the split is empty, or a study's image is not a
            readable 4D NIfTI (:func:`check_image_file`) or one cine DICOM series (:func:`~.dicom.scan_cine_dicom`);
            checked here because ``LoadImaged`` reads it first and hides the reason.
            The images are not checked with ``check=False``.
    """
    if dataset_layout != "study":
        from .layouts import convert_layout

        if layout_dir is None:
            raise CSTMInputError(f"dataset_layout={dataset_layout!r}", "no layout_dir to convert the studies into",
                                 "a writable folder (--layout_dir)")
        converted = convert_layout(dataset_dir, dataset_layout, layout_dir, info_csv)  # type: ignore[arg-type]
        dataset_dir = layout_dir
    root = Path(dataset_dir)
    if demo_dir is not None and not root.exists() and root.resolve() == Path(demo_dir).resolve():
        from .phantom import write_phantom_studies

        logger.info(f"generating {demo_studies} phantom demo studies in {root}")
        write_phantom_studies(str(root), num_studies=demo_studies, seed=demo_seed)
    if not root.is_dir():
        raise CSTMInputError(root, "dataset folder does not exist", "a folder of study folders or one study folder")
    folders = [root] if study_image(root) else sorted(p for p in root.iterdir() if study_image(p) and not
                                                      p.name.startswith("."))
    if folders != [root] and (check or not folders):
        for folder, problem in skipped_folders(root, folders):
            logger.warning(f"{folder}: skipped, {problem}")
    if dataset_layout != "study":
        folders = [p for p in folders if p in converted]  # not the leftovers of an earlier conversion
    if not folders:
        if any((root / name).is_file() for name in STUDY_FILES):
            raise CSTMInputError(root / IMAGE_FILE, "study image not found", "a 4D NIfTI image (H, W, Z, T)")
        raise CSTMInputError(root, f"no study folder (a folder with {IMAGE_FILE} or {DICOM_DIR}/) found",
                             "at least one study")
    if split is not None:
        if split not in ("train", "val") or not 0 <= num_val < len(folders) + (split == "val"):
            raise CSTMInputError(root, f"cannot take split {split!r} with num_val={num_val} from {len(folders)} studies",
                                 "split 'train' or 'val' and 0 <= num_val < number of studies")
        folders = folders[len(folders) - num_val:] if split == "val" else folders[: len(folders) - num_val]
    images = [study_image(p) for p in folders]
    for image in images if check else ():
        if image.name == IMAGE_FILE:
            check_image_file(image)
        else:
            scan_cine_dicom(image)
    return [{"image": str(image), "study": p.name, "study_dir": str(p)} for p, image in zip(folders, images)]


def mix_datalists(
    datalist: list[dict[str, Any]],
    extra_datasets: list[dict[str, Any]] | None = None,
    weight: float = 1.0,
    layout_dir: str | os.PathLike | None = None,
    demo_dir: str | os.PathLike | None = None,
    demo_studies: int = 4,
) -> list[dict[str, Any]]:
    """Training studies from several datasets, each item with the ``sample_weight`` that makes a weighted sampler
    (:func:`sample_weights`) draw each dataset with probability proportional to its weight, whatever its size.

    Args:
        datalist: the main dataset's training studies (:func:`list_studies`, ``split="train"``).
        extra_datasets: more training datasets (``--extra_train_datasets``), all of whose studies are used: dicts with
            "dataset_dir", optional "weight" (1.0), "dataset_layout" ("study") and "info_csv".
        weight: the main dataset's weight (``--dataset_weight``).
        layout_dir: where datasets in another layout are converted (one subfolder each).
        demo_dir, demo_studies: as :func:`list_studies` (an extra dataset may be the phantom demo folder).
    Returns:
        the studies of all datasets, each dict with "sample_weight" = dataset weight / number of its studies; a main
        datalist whose studies carry a "sample_weight" already (:func:`~.splits.load_split`, summing to 1) keeps
        their proportions, scaled by ``weight``.
    Raises:
        CSTMInputError: an extra dataset without "dataset_dir", an unknown key, or a negative weight.
    """
    _check_weight(weight, "dataset_weight")
    sources = [(datalist, weight)]
    if extra_datasets:
        logger.info(f"training data: {len(datalist)} studies of the main dataset at weight {weight}")
    allowed = {"dataset_dir", "weight", "dataset_layout", "info_csv"}
    for i, extra in enumerate(extra_datasets or []):
        where = f"extra_train_datasets[{i}]"
        if not isinstance(extra, dict) or "dataset_dir" not in extra or set(extra) - allowed:
            raise CSTMInputError(where, f"is {extra!r}",
                                 f"a dict with 'dataset_dir' and optional {sorted(allowed - {'dataset_dir'})}")
        _check_weight(extra.get("weight", 1.0), where)
        layout = extra.get("dataset_layout", "study")
        studies = list_studies(extra["dataset_dir"], dataset_layout=layout, info_csv=extra.get("info_csv"),
                               layout_dir=None if layout_dir is None else Path(layout_dir) / f"extra{i}",
                               demo_dir=demo_dir, demo_studies=demo_studies)
        sources.append((studies, extra.get("weight", 1.0)))
        logger.info(f"training data: {len(studies)} studies from {extra['dataset_dir']} at weight {sources[-1][1]}")
    return [{**s, "sample_weight": float(w) * s.get("sample_weight", 1.0 / len(studies))}
            for studies, w in sources for s in studies]


def _check_weight(weight: Any, where: str) -> None:
    if not isinstance(weight, (int, float)) or weight < 0:
        raise CSTMInputError(where, f"weight is {weight!r}", "a number >= 0")


def sample_weights(datalist: list[dict[str, Any]]) -> list[float]:
    """The ``sample_weight`` of each study (:func:`mix_datalists`), for ``WeightedRandomSampler``."""
    return [s["sample_weight"] for s in datalist]


def skipped_folders(root: str | os.PathLike, studies: list[Path]) -> list[tuple[Path, str]]:
    """The sub-folders of ``root`` that look like a study but are not one (never to be passed over silently): those
    holding NIfTI, JSON or DICOM files but no image. Hidden folders (``.git``, ``.cache``) are not studies and are not
    listed.

    Args:
        root: a folder of study folders.
        studies: its study folders (:func:`list_studies`).
    Returns:
        (folder, problem) for each, sorted by name.
    """
    skipped = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")
                         and p not in studies):
        files = sorted(f.name for f in folder.iterdir() if f.name.endswith((".nii", ".nii.gz", ".json", ".dcm")))
        if files:
            skipped.append((folder, f"not a study: no {IMAGE_FILE} or {DICOM_DIR}/ (it has {', '.join(files[:4])}"
                                    f"{', ...' if len(files) > 4 else ''}; an uncompressed image.nii must be gzipped)"))
    return skipped


def study_image(study_dir: str | os.PathLike) -> Path | None:
    """A study folder's image: ``image.nii.gz``, else the DICOM series folder ``dicom/``; None if it has neither."""
    for image in (Path(study_dir) / IMAGE_FILE, Path(study_dir) / DICOM_DIR):
        if image.exists():
            return image
    return None


def image_geometry(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Header | None]:
    """The voxel-to-world affine of a study image (:func:`study_image`), and its NIfTI header (None for a DICOM
    series, whose affine comes from :func:`~.dicom.scan_cine_dicom`)."""
    path = Path(path)
    if path.name == DICOM_DIR:
        return scan_cine_dicom(path).affine, None
    source = nib.load(str(path))
    return source.affine, source.header


def check_image_file(path: str | os.PathLike) -> tuple[int, ...]:
    """Cheap checks of a study image before anything loads it: a NIfTI header, 4 dims, data not cut short.

    Reads the header only. The data is checked without decompressing it: a .nii.gz ends with its uncompressed size
    (mod 2**32), which must be the header's data offset plus the data's bytes; only when it is not (a truncated file,
    or a multi-member gzip) is the file decompressed once, in a stream, to tell which.

    Args:
        path: the image NIfTI.
    Returns:
        the image shape (H, W, Z, T).
    Raises:
        CSTMInputError: not a NIfTI file, not 4D, or truncated or corrupt data.
    """
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        proxy = img.dataobj  # an ArrayProxy: the on-disk offset (the image's header copy says 0) and dtype
        expected = int(proxy.offset) + int(np.prod(shape)) * np.dtype(proxy.dtype).itemsize
    except FileNotFoundError as e:
        raise CSTMInputError(path, "file not found", "a 4D NIfTI image (H, W, Z, T)") from e
    except Exception as e:  # nibabel raises many types for files that are not NIfTI
        raise CSTMInputError(path, f"cannot be read as NIfTI ({_reason(e, path)})", "a .nii.gz image file") from e
    if len(shape) != 4:
        raise CSTMInputError(path, f"image has shape {shape}", "a 4D image (H, W, Z, T)")
    check_geometry(path, img.affine, img.header, np.dtype(proxy.dtype))
    size = _data_size(path, expected)
    if size < expected:
        raise CSTMInputError(path, f"file is truncated ({size} of {expected} bytes of header and data)",
                             "a complete NIfTI file (copy it again)")
    return shape


IN_PLANE_MM = (0.2, 5.0)
"""In-plane pixel spacing of a cine MRI, in mm (clinical scans: 0.6-2.5 mm); outside it the units or axes are wrong."""
MAX_IN_PLANE_RATIO = 2.0
"""Cine MRI pixels are (nearly) square; rows and columns differing more than this mean swapped axes."""


def check_geometry(path: str | os.PathLike, affine: np.ndarray, header: Any, dtype: np.dtype) -> None:
    """Refuse, before any work, an image whose geometry or pixels would give a silently wrong result.

    - complex or RGB pixels (one real intensity per voxel is expected);
    - spatial units other than mm (``unknown`` is read as mm, as NIfTI writers that set no unit mean it);
    - a zero or non-finite spacing or an affine that cannot be inverted (the label map could not be saved on it);
    - in-plane spacing outside :data:`IN_PLANE_MM`, or rows and columns of very different spacing, which is what a
      volume whose slice axis is not the third (an (H, Z, W, T) reorientation) looks like.

    Raises:
        CSTMInputError: naming the file and the problem.
    """
    if dtype.kind == "c" or dtype.fields is not None or dtype.kind not in "biuf":
        raise CSTMInputError(path, f"pixels of type {dtype} (complex or RGB)", "one real intensity per voxel")
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "mm"
    if unit not in ("mm", "unknown"):
        raise CSTMInputError(path, f"spatial unit is {unit!r} (NIfTI xyzt_units)", "mm (rewrite the file in mm)")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not (np.isfinite(affine).all() and (spacing > 0).all()) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CSTMInputError(path, f"voxel spacing {np.round(spacing, 4).tolist()} mm (affine not invertible)",
                             "a positive, finite spacing on every axis")
    row, col = spacing[:2]
    if not (IN_PLANE_MM[0] <= min(row, col) and max(row, col) <= IN_PLANE_MM[1]):
        raise CSTMInputError(path, f"in-plane spacing {row:.3g} x {col:.3g} mm",
                             f"{IN_PLANE_MM[0]}-{IN_PLANE_MM[1]} mm as a cine MRI has (check the units)")
    if max(row, col) > MAX_IN_PLANE_RATIO * min(row, col):
        raise CSTMInputError(path, f"in-plane spacing {row:.3g} x {col:.3g} mm: the slice axis seems not to be the "
                             "third", "(H, W, Z, T) with short-axis slices along the third axis, square-ish pixels")


def _reason(e: Exception, path: str | os.PathLike) -> str:
    """The exception's message without the file name (the error message starts with it already)."""
    text = str(e).replace(f"File {path} is ", "").replace(f' of "{path}"', "")
    text = text.replace(f'"{path}"', "the file").replace(str(path), "the file")
    return text or type(e).__name__


def _data_size(path: str | os.PathLike, expected: int) -> int:
    """Bytes of (uncompressed) content of ``path``, or ``expected`` when the gzip trailer says it is complete."""
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        size = f.seek(0, os.SEEK_END)
        if not compressed:
            return size
        f.seek(max(size - 4, 0))
        if size >= 18 and int.from_bytes(f.read(4), "little") == expected % 2**32:
            return expected
    total = 0
    try:
        with gzip.open(path, "rb") as g:
            while chunk := g.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise CSTMInputError(path, f"file is truncated or corrupt ({_reason(e, path)})",
                             "a complete NIfTI file (copy it again)") from e
    return total


APEX_DIRECTION_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)
"""Typical base-to-apex direction of the heart's long axis in RAS+ coordinates: left, anterior, inferior."""


def base_first_from_affine(affine: np.ndarray, min_cosine: float = 0.8) -> bool | None:
    """Whether z = 0 is the most basal slice, from the slice direction of a scanner affine.

    The slice step (affine column 2) of a short-axis stack runs along the long axis; if it points within
    ``acos(min_cosine)`` of the typical base-to-apex direction (left, anterior, inferior) the stack is base first, if
    it points the other way apex first. Axis-aligned affines (as in the ACDC files, whose geometry is not the
    scanner's) say nothing about anatomy: None.
    """
    step = np.asarray(affine, dtype=float)[:3, 2]
    cosine = float(step @ APEX_DIRECTION_RAS / max(np.linalg.norm(step), 1e-9))
    return None if abs(cosine) < min_cosine else cosine > 0


INFO_KEYS = ("ed", "es", "annotated_phase", "annotated_slices_ed", "annotated_slices_es", "labels", "labels_ed",
             "labels_es", "base_first", "height_cm", "weight_kg") + tuple(
    f"annotated_slices_{phase}_{name}" for phase in ("ed", "es") for name in ("rv", "myo", "lv"))
"""The ``info.json`` keys the bundle reads. Other keys (a dataset's own notes: ``group``, ``spacing``...) are kept and
ignored, except one so close to a key of this list that it is taken for a misspelling of it."""


def read_info(study_dir: str | os.PathLike) -> dict[str, Any]:
    """``info.json`` of a study, checked: a UTF-8 JSON object; ``ed``, ``es``, ``annotated_phase`` 0-based integers,
    ``annotated_slices_ed``/``_es`` non-empty lists of 0-based integers (per-class lists may be empty); no misspelt key (``annotated_slice_ed``).
    An empty dict when the file is absent. Ranges against the image are checked where the image is known
    (:class:`~scripts.data.LoadStudyd`).

    Raises:
        CSTMInputError: naming the file and the key.
    """
    path = Path(study_dir) / "info.json"
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


def read_label(path: str | os.PathLike, image_shape: tuple[int, ...], image_affine: np.ndarray) -> np.ndarray:
    """A 3D label volume on the image grid.

    Args:
        path: the label NIfTI.
        image_shape: (H, W, Z, T) of the study image.
        image_affine: (4, 4) affine of the study image.
    Returns:
        (H, W, Z) uint8 labels in {0, 1, 2, 3}.
    Raises:
        CSTMInputError: unreadable file, other grid or affine, or values outside {0, 1, 2, 3}.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise CSTMInputError(path, f"cannot be read as NIfTI ({_reason(e, path)})",
                             "a readable .nii.gz label file") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(image_shape[:3]):
        raise CSTMInputError(path, f"label shape {data.shape} is not on the image grid", f"shape {tuple(image_shape[:3])}")
    if not np.allclose(img.affine, image_affine, atol=1e-3):
        raise CSTMInputError(path, "label affine differs from the image affine", "the image's grid and affine")
    values = np.unique(data)
    if not np.isin(values, LABEL_VALUES).all():
        raise CSTMInputError(path, f"label values {values.tolist()} outside {list(LABEL_VALUES)}",
                             "0 background, 1 RV, 2 Myo, 3 LV")
    return data.astype(np.uint8)
