"""Atomic output writing: never a half-written file, never a silent overwrite; CSV cells a spreadsheet never runs."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .errors import FULL_DISK, CSTMInputError


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write ``path`` through ``write(tmp_path)`` into a temporary file in the same folder, then rename it.

    The rename is atomic on POSIX file systems, so readers see either the old file, or no file, or the complete new
    file. Two processes writing the same path both succeed; the last rename wins and the file is always valid.

    Args:
        path: the final file name.
        write: called with a temporary path (same suffix as ``path``) that it must create.
        overwrite: replace an existing ``path``; when False an existing file raises ``CSTMInputError``.
    Returns:
        the final path.
    Raises:
        CSTMInputError: ``path`` exists and ``overwrite`` is False, its folder is not writable, or writing fails (a
            full disk, a lost mount: any ``OSError``); the temporary file is removed first.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CSTMInputError(path, "output file exists", "a new output path, or overwrite=True (--overwrite true)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions of any new file
        os.close(fd)
    except OSError as e:
        raise CSTMInputError(
            path.parent, f"cannot write into this folder ({e.strerror})", "a writable output folder"
        ) from e
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise
    return path


def _write_error(path: str | os.PathLike, error: OSError) -> CSTMInputError:
    """The one-line error for an ``OSError`` while writing ``path``: a full disk (or quota) says so."""
    if error.errno in FULL_DISK:
        return CSTMInputError(
            path,
            f"disk is full, the file was not written ({error.strerror or error})",
            "free space on the output disk, or another --output_dir",
        )
    return CSTMInputError(path, f"cannot write the file ({error.strerror or error})", "a writable --output_dir")


def save_torch(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``torch.save`` atomically (:func:`write_atomic`). torch reports a failed write (a full disk) as a
    ``RuntimeError`` ("PytorchStreamWriter failed writing file"); it is raised as the write error it is."""

    def write(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            full = shutil.disk_usage(Path(tmp).parent).free < 2**20
            raise OSError(
                errno.ENOSPC if full else errno.EIO, "No space left on device" if full else str(e), tmp
            ) from e

    return write_atomic(path, write, overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    overwrite: bool = False,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Save ``array`` as NIfTI with ``affine`` (qform = sform), atomically; see :func:`write_atomic`."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return write_atomic(path, lambda tmp: nib.save(img, tmp), overwrite)


def save_json(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save ``obj`` as indented JSON, atomically; see :func:`write_atomic`."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    return write_atomic(path, write, overwrite)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP, "CSV Injection")."""

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet shows as it is, never runs: the one rule of every CSV we write.

    A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a line break (a study folder named
    ``=HYPERLINK("x","y")``, an ``info.json`` group ``+cmd|' /C calc'!A0``) gets a leading ``'``, which spreadsheets
    show as text (OWASP, "CSV Injection"); a text that is a plain number (``"-1.5"``) is left alone, and so are numbers,
    None and booleans. A file name that is not UTF-8 (Python's surrogate escapes, ``"bad\\udcffname"``) is written with
    its bytes escaped (``bad\\xffname``) rather than failing the UTF-8 file.
    """
    if not isinstance(value, str):
        return value
    try:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no byte made
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


class SafeDictWriter(csv.DictWriter):
    """``csv.DictWriter`` whose every cell, header included, goes through :func:`csv_cell`; use it for every CSV we
    write (``cohort.csv``, ``qc.csv``, ``metrics.csv``, ``function.csv``, ``quality.csv``)."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: csv_cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for rowdict in rowdicts:
            self.writerow(rowdict)
