"""Run-level checks, before any study is read: the output folder, the propagation cache folder and the device.

``inference.json`` runs :func:`check_settings` right after the typed options and before the studies are screened
(:class:`~scripts.data.StudyBatch`), so a setting that would fail on the first study (or, worse, after it) stops the
run at once with one line naming the option. Nothing is created here: the folders are made when first written.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .errors import CSTMInputError

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".pt"
"""The files of a propagation cache folder (:class:`~scripts.inferers.cache.PropagationCache`)."""


def check_settings(
    output_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, device: Any = None
) -> None:
    """Check the settings of a run before any work (:func:`check_folder`, :func:`check_cache_dir`,
    :func:`check_device`).

    Args:
        output_dir: ``--output_dir``.
        cache_dir: ``--cache_dir`` (None: no cache).
        device: ``--device`` (a ``torch.device`` or its string, e.g. "cuda:0"; None: not checked).
    Raises:
        CSTMInputError: the first unusable setting, naming the folder or the option.
    """
    check_folder(output_dir, "--output_dir", "output folder")
    if cache_dir is not None:
        check_cache_dir(cache_dir)
    if device is not None:
        check_device(device)


def check_folder(path: str | os.PathLike, option: str, what: str) -> None:
    """``path`` is a writable folder, or one that can be created (its nearest existing parent is a writable folder).

    Raises:
        CSTMInputError: ``path`` is a file, lies under a file, or is (or would be created in) a read-only folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CSTMInputError(path, f"{what} is a file", f"a folder ({option})")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise CSTMInputError(path, f"cannot create the {what} ({os.strerror(errno.ENOTDIR)})", f"a writable {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == path else f"cannot be created in {existing} (not writable)"
        raise CSTMInputError(path, f"{what} {where}", f"a writable {option}")


def check_cache_dir(path: str | os.PathLike) -> None:
    """``--cache_dir`` can hold the propagation cache: a writable folder (or one that can be created) in which no
    folder stands where a cache file goes (``<key>.pt``).

    An existing read-only folder is used for reading (a warning says so): a study whose propagation it holds is
    served from it, new propagations are not kept (:class:`~scripts.inferers.Propagation4DInferer` writes only what
    it predicted, and warns where it cannot).

    Raises:
        CSTMInputError: naming the folder (or the entry in it) and ``--cache_dir``.
    """
    path = Path(path)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        logger.warning(f"{path}: --cache_dir is read-only: its propagations are read, new ones are not kept")
    else:
        check_folder(path, "--cache_dir", "cache folder")
    if path.is_dir():
        blocking = sorted(p.name for p in path.iterdir() if p.name.endswith(CACHE_SUFFIX) and not p.is_file())
        if blocking:
            raise CSTMInputError(
                path / blocking[0],
                f"a folder where a cache file goes ({len(blocking)} such in --cache_dir)",
                "only the cache's own files in --cache_dir (move it, or another --cache_dir)",
            )


def check_device(device: Any) -> torch.device:
    """``--device`` names a device of this machine: "cpu", "cuda" / "cuda:N" with CUDA and N below the GPU count, or
    "mps" where available.

    Returns:
        the ``torch.device``.
    Raises:
        CSTMInputError: naming ``--device`` and what this machine has.
    """
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, TypeError, ValueError):
        raise CSTMInputError("--device", f"got {device!r}", "cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CSTMInputError("--device", f"got {str(dev)!r}, but {why}", "--device cpu on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CSTMInputError(
                "--device", f"got {str(dev)!r}, but this machine has {count} CUDA GPU(s)", f"cuda:0 to cuda:{count - 1}"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise CSTMInputError("--device", "got 'mps', but MPS is not available", "--device cpu on this machine")
    elif dev.type != "cpu":
        raise CSTMInputError("--device", f"got {str(dev)!r}", "cpu, cuda or cuda:N")
    return dev
