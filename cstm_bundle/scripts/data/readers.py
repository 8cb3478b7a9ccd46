"""Study folders on disk: finding them in a dataset folder, checking and reading their image and label files.

What the files of a study folder are and what its ``info.json`` means is :mod:`.study`.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import CSTMInputError
from .dicom import DICOM_DIR, scan_cine_dicom
from .study import IMAGE_FILE, STUDY_FILES

logger = logging.getLogger(__name__)

LABEL_VALUES = (0, 1, 2, 3)


def list_studies(
    dataset_dir: str | os.PathLike | Sequence[str | os.PathLike],
    split: str | None = None,
    num_val: int = 0,
    demo_dir: str | os.PathLike | None = None,
    demo_studies: int = 4,
    demo_seed: int = 0,
    check: bool = True,
) -> list[dict[str, str]]:
    """Find the study folders under ``dataset_dir`` (or ``dataset_dir`` itself if it is one study).

    The demo folder is the one folder that is created when missing: if ``dataset_dir`` is ``demo_dir`` and does not
    exist, ``demo_studies`` phantom studies (seeds ``demo_seed``...) are generated there first.

    Args:
        dataset_dir: a folder of study folders, one study folder, or the list of study folders to take (as
            :func:`~.layouts.prepare_dataset` returns for a dataset converted from another layout).
        split: None for all studies, "train" for all but the last ``num_val`` (sorted by name), "val" for those.
        num_val: studies held out for validation.
        demo_dir: the bundle's phantom demo folder.
        demo_studies: phantom studies to generate into ``demo_dir``.
        demo_seed: seed of the first generated study.
        check: check each study's image and log the sub-folders that are not studies (:func:`skipped_folders`: also
            a study folder whose name is not UTF-8, and a folder of studies one level down, which is not searched);
            False where the caller checks and reports each study itself (:class:`~.batch.StudyBatch`). The folders
            are logged anyway when no study is found.
    Returns:
        dicts with "image" (the NIfTI file or DICOM folder, see :func:`study_image`), "study" (folder name) and
        "study_dir", sorted by name.
    Raises:
        CSTMInputError: the folder does not exist or holds no study, the split is empty, the one study folder (or one
            of the list) has a name that is not UTF-8 (:func:`name_problem`), or a study's image is not a
            readable 4D NIfTI (:func:`check_image_file`) or one cine DICOM series (:func:`~.dicom.scan_cine_dicom`);
            checked here because ``LoadImaged`` reads it first and hides the reason.
            The images are not checked with ``check=False``.
    """
    if not isinstance(dataset_dir, (str, os.PathLike)):
        folders = sorted(Path(p) for p in dataset_dir)
        if not folders:
            raise CSTMInputError("dataset_dir", "an empty list of study folders", "at least one study")
        for folder in (p for p in folders if not study_image(p)):
            raise CSTMInputError(folder, "no study image in this study folder", f"{IMAGE_FILE} or {DICOM_DIR}/")
        for folder in (p for p in folders if name_problem(p)):
            raise CSTMInputError(folder, name_problem(folder))
        return _studies(folders[0].parent, folders, split, num_val, check)
    root = Path(dataset_dir)
    if demo_dir is not None and not root.exists() and root.resolve() == Path(demo_dir).resolve():
        from .phantom import write_phantom_studies

        logger.info(f"generating {demo_studies} phantom demo studies in {root}")
        write_phantom_studies(str(root), num_studies=demo_studies, seed=demo_seed)
    if not root.is_dir():
        raise CSTMInputError(root, "dataset folder does not exist", "a folder of study folders or one study folder")
    if study_image(root) and name_problem(root):
        raise CSTMInputError(root, name_problem(root))
    folders = (
        [root]
        if study_image(root)
        else sorted(p for p in root.iterdir() if study_image(p) and not p.name.startswith(".") and not name_problem(p))
    )
    skipped = skipped_folders(root, folders) if folders != [root] and (check or not folders) else []
    for folder, problem in skipped:
        logger.warning(f"{folder}: skipped, {problem}")
    if not folders:
        if any((root / name).is_file() for name in STUDY_FILES):
            raise CSTMInputError(root / IMAGE_FILE, "study image not found", "a 4D NIfTI image (H, W, Z, T)")
        raise CSTMInputError(
            root,
            f"no study folder (a folder with {IMAGE_FILE} or {DICOM_DIR}/) found{_not_studies(skipped)}",
            "at least one study",
        )
    return _studies(root, folders, split, num_val, check)


def _not_studies(skipped: list[tuple[Path, str]]) -> str:
    """``"; sub-folder a is not a study (...)"``: the folders :func:`skipped_folders` named, for the error that no
    study was found ("" when none)."""
    if not skipped:
        return ""
    names = ", ".join(folder.name for folder, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    if len(skipped) == 1:
        return f"; sub-folder {names} is not a study (why: logged above)"
    return f"; sub-folders {names} are not studies (why: each logged above)"


def _studies(root: Path, folders: list[Path], split: str | None, num_val: int, check: bool) -> list[dict[str, str]]:
    """The datalist of ``folders`` (study folders, sorted), split and checked as :func:`list_studies` says."""
    if split is not None:
        if split not in ("train", "val") or not 0 <= num_val < len(folders) + (split == "val"):
            raise CSTMInputError(
                root,
                f"cannot take split {split!r} with num_val={num_val} from {len(folders)} studies",
                "split 'train' or 'val' and 0 <= num_val < number of studies",
            )
        folders = folders[len(folders) - num_val :] if split == "val" else folders[: len(folders) - num_val]
    images = [study_image(p) for p in folders]
    for image in images if check else ():
        if image.name == IMAGE_FILE:
            check_image_file(image)
        else:
            scan_cine_dicom(image)
    return [
        {"image": str(image), "study": p.name, "study_dir": str(p)} for p, image in zip(folders, images, strict=True)
    ]


def skipped_folders(root: str | os.PathLike, studies: list[Path]) -> list[tuple[Path, str]]:
    """The sub-folders of ``root`` that look like a study but are not one (never to be passed over silently): those
    holding NIfTI, JSON or DICOM files but no image; a study whose folder name is not UTF-8 (:func:`name_problem`);
    and a folder of studies one level down (``<dataset>/<group>/<study>/image.nii.gz``: studies are looked for in
    the folders of the dataset folder only, so the folder is named rather than searched). Hidden folders (``.git``,
    ``.cache``) are not studies and are not listed.

    Args:
        root: a folder of study folders.
        studies: its study folders (:func:`list_studies`).
    Returns:
        (folder, problem) for each, sorted by name.
    """
    skipped = []
    for folder in sorted(
        p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".") and p not in studies
    ):
        files = sorted(f.name for f in folder.iterdir() if f.name.endswith((".nii", ".nii.gz", ".json", ".dcm")))
        if name_problem(folder) and (files or study_image(folder)):
            skipped.append((folder, name_problem(folder)))
            continue
        nested = (
            [] if files else sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and study_image(p))
        )
        if nested:
            skipped.append(
                (
                    folder,
                    f"not a study: it holds {len(nested)} study folder{'s' if len(nested) > 1 else ''} one level down "
                    f"({', '.join(nested[:4])}"
                    f"{', ...' if len(nested) > 4 else ''}), not searched; pass it as --dataset_dir, or move them "
                    "into the dataset folder",
                )
            )
        if files:
            skipped.append(
                (
                    folder,
                    f"not a study: no {IMAGE_FILE} or {DICOM_DIR}/ (it has {', '.join(files[:4])}"
                    f"{', ...' if len(files) > 4 else ''}; an uncompressed image.nii must be gzipped)",
                )
            )
    return skipped


def name_problem(folder: Path) -> str | None:
    """Why ``folder``'s name cannot name a study, or None: a name that is not UTF-8 (a byte such as ``\\xff`` from
    another system's encoding) cannot be written into the outputs (``report.md``, ``cohort.csv``, the log)."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        return (
            f"folder name {os.fsencode(folder.name)!r} is not UTF-8 text, so it cannot name the study's outputs; "
            "expected a UTF-8 folder name (rename the folder)"
        )
    return None


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
    check_pixdim(path, img.header)
    check_geometry(path, img.affine, img.header, np.dtype(proxy.dtype))
    size = _data_size(path, expected)
    if size < expected:
        raise CSTMInputError(
            path,
            f"file is truncated ({size} of {expected} bytes of header and data)",
            "a complete NIfTI file (copy it again)",
        )
    return shape


def check_pixdim(path: str | os.PathLike, header: Any) -> None:
    """Refuse a NIfTI whose header stores a zero or non-finite voxel size (``pixdim[1:4]``).

    nibabel replaces a zero ``pixdim`` by 1 when it loads the header (and builds the affine from it when the file has
    no qform/sform), so the loaded image would silently have 1 mm pixels; other tools (ITK) read the zero. The file's
    own header is therefore read again, unchecked.

    Args:
        path: the NIfTI file; header: its header as nibabel loaded it (for its class: NIfTI-1 or NIfTI-2).
    Raises:
        CSTMInputError: naming the file and the stored sizes.
    """
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(header).from_fileobj(f, check=False)
    except Exception:  # the header was read once already; nothing to add
        return
    sizes = np.asarray(raw["pixdim"][1:4], dtype=float)
    if not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise CSTMInputError(
            path,
            f"voxel size pixdim[1:4] = {np.round(sizes, 4).tolist()} in the NIfTI header",
            "a positive, finite pixel and slice spacing in mm (nibabel would read a 0 as 1 mm: rewrite the file with "
            "its spacing)",
        )


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

    Rectangular pixels within :data:`MAX_IN_PLANE_RATIO` are accepted: every step uses the row and column spacing
    each (the heart ROI is resampled to square pixels, volumes use |det(affine)|, distances are in mm).

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
        raise CSTMInputError(
            path,
            f"voxel spacing {np.round(spacing, 4).tolist()} mm (affine not invertible)",
            "a positive, finite spacing on every axis",
        )
    row, col = spacing[:2]
    if not (IN_PLANE_MM[0] <= min(row, col) and max(row, col) <= IN_PLANE_MM[1]):
        raise CSTMInputError(
            path,
            f"in-plane spacing {row:.3g} x {col:.3g} mm",
            f"{IN_PLANE_MM[0]}-{IN_PLANE_MM[1]} mm as a cine MRI has (check the units)",
        )
    if max(row, col) > MAX_IN_PLANE_RATIO * min(row, col):
        raise CSTMInputError(
            path,
            f"in-plane spacing {row:.3g} x {col:.3g} mm: the slice axis seems not to be the " "third",
            "(H, W, Z, T) with short-axis slices along the third axis, square-ish pixels",
        )


def _reason(e: Exception, path: str | os.PathLike) -> str:
    """The exception's message without the file name (the error message starts with it already)."""
    quoted = f'"{path}"'  # noqa: B907 (nibabel's wording, not a repr)
    text = str(e).replace(f"File {path} is ", "").replace(f" of {quoted}", "")
    text = text.replace(quoted, "the file").replace(str(path), "the file")
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
        raise CSTMInputError(
            path, f"file is truncated or corrupt ({_reason(e, path)})", "a complete NIfTI file (copy it again)"
        ) from e
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


def read_label(
    path: str | os.PathLike, image_shape: tuple[int, ...], image_affine: np.ndarray, phases: bool = False
) -> np.ndarray:
    """A 3D label volume on the image grid (with ``phases``, a 4D one: a label per frame).

    Args:
        path: the label NIfTI.
        image_shape: (H, W, Z, T) of the study image.
        image_affine: (4, 4) affine of the study image.
        phases: expect (H, W, Z, T), the image's shape.
    Returns:
        (H, W, Z) (or (H, W, Z, T)) uint8 labels in {0, 1, 2, 3}.
    Raises:
        CSTMInputError: unreadable file, other grid or affine, or values outside {0, 1, 2, 3}.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise CSTMInputError(
            path, f"cannot be read as NIfTI ({_reason(e, path)})", "a readable .nii.gz label file"
        ) from e
    if data.ndim == 4 and data.shape[3] == 1 and not phases:
        data = data[..., 0]
    expected = tuple(image_shape[:4] if phases else image_shape[:3])
    if data.shape != expected:
        raise CSTMInputError(path, f"label shape {data.shape} is not on the image grid", f"shape {expected}")
    if not np.allclose(img.affine, image_affine, atol=1e-3):
        raise CSTMInputError(path, "label affine differs from the image affine", "the image's grid and affine")
    values = np.unique(data)
    if not np.isin(values, LABEL_VALUES).all():
        raise CSTMInputError(
            path, f"label values {values.tolist()} outside {list(LABEL_VALUES)}", "0 background, 1 RV, 2 Myo, 3 LV"
        )
    return data.astype(np.uint8)
