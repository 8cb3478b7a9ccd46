"""A study's outputs as one unit: written together into a staging folder, recorded in ``outputs.json`` and swapped in
whole, so that ``<output_dir>/<study>/`` holds either the complete set of one run or nothing of it.

How :class:`~.batch.StudyBatch` uses it, per study::

    staging = new_staging(folder)                      <output_dir>/.<study>.<random>.partial/, a hidden sibling
    item[OUTPUT_FOLDER_KEY] = staging                  the writers (output_folder()) write there, not into <study>/
    ... inference and postprocessing ...               a failure: the staging folder is removed, <study>/ untouched
    commit(staging, folder, manifest)                  outputs.json written last, then <study>/ replaced by rename

``outputs.json`` records what the outputs were made from: the SHA-256 of every input file (:func:`study_inputs`), the
settings that change the result (:func:`result_settings`, the weights by digest) and the SHA-256 of every output file.
A study is done (:func:`check_done`, ``--skip_done true``) only when its folder has this record, every expected
output is listed and unchanged, and the inputs and settings are those of the current run; outputs without the record
(an older version, a run killed in the middle of the swap) are never done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CSTMInputError
from ..io import save_json
from .study import STUDY_FILES

MANIFEST_FILE = "outputs.json"
"""The record of a study's outputs, in ``<output_dir>/<study>/``, written last."""
MANIFEST_FORMAT = 1
OUTPUT_FOLDER_KEY = "output_folder"
"""Item key: the folder the writers write a study's outputs into (the staging folder); absent: ``<output_dir>/<study>``."""
RESULT_OPTIONS = (
    "annotation",
    "reference_anchors",
    "clinical_phases",
    "continuity",
    "time_memory_size",
    "slice_memory_size",
    "anchor_memory",
    "time_direction",
    "amp",
    "largest_component",
    "fill_holes",
    "suppress_spikes",
    "roi_size",
    "roi_spacing",
)
"""The options of ``inference.json`` that change a study's outputs. Not listed: those that only choose which files
are written (each file is checked itself), the network options (they must agree with the checkpoint, recorded by
digest), and those that do not change the numbers (``max_batch``, ``cache_dir``, ``device``, ``progress``)."""
_CHUNK = 1 << 20


def output_folder(data: Mapping[Hashable, Any], output_dir: str | os.PathLike) -> Path:
    """Where a writer writes the outputs of the study item ``data``: its :data:`OUTPUT_FOLDER_KEY` (the staging
    folder of :class:`~.batch.StudyBatch`), else ``<output_dir>/<study>``."""
    folder = data.get(OUTPUT_FOLDER_KEY)
    return Path(folder) if folder else Path(output_dir) / str(data["study"])


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def study_inputs(image: str | os.PathLike, study_dir: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of every file a study's outputs are made from: the image (the NIfTI file, or every file under the
    ``dicom/`` folder) and those of :data:`~.study.STUDY_FILES` present (``info.json``, the labels, the annotation).

    Args:
        image: the study's image, a file or a DICOM folder (:func:`~.readers.study_image`).
        study_dir: the study folder.
    Returns:
        path relative to ``study_dir`` (POSIX) -> digest, sorted by path.
    """
    image, study_dir = Path(image), Path(study_dir)
    files = sorted(p for p in image.rglob("*") if p.is_file()) if image.is_dir() else [image]
    files += [study_dir / name for name in STUDY_FILES if (study_dir / name).is_file()]
    return {_relative(p, study_dir): file_digest(p) for p in sorted(set(files))}


def result_settings(
    checkpoint: str | os.PathLike, initializer_checkpoint: str | os.PathLike | None = None, **options: Any
) -> dict[str, Any]:
    """The settings a study's outputs depend on, as ``outputs.json`` records them: the options of
    :data:`RESULT_OPTIONS` and the SHA-256 of the weights (a missing file: None, its loader reports it).

    Args:
        checkpoint: the propagation network's weights (``--checkpoint``).
        initializer_checkpoint: the initialiser's weights; recorded unless ``annotation`` is "required" (then never
            used).
        options: the typed options (:func:`~scripts.options.typed_options`); at least those of :data:`RESULT_OPTIONS`.
    Raises:
        KeyError: an option of :data:`RESULT_OPTIONS` is not given (a config bug).
    """
    settings: dict[str, Any] = {name: _plain(options[name]) for name in RESULT_OPTIONS}
    settings["checkpoint_sha256"] = _weights_digest(checkpoint)
    used = initializer_checkpoint is not None and options["annotation"] != "required"
    settings["initializer_sha256"] = _weights_digest(initializer_checkpoint) if used else None
    return settings


def new_staging(folder: str | os.PathLike) -> Path:
    """Create the staging folder of the output folder ``folder``: a hidden sibling with a unique name (two runs into
    one output folder each have their own), with the permissions of a new folder."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as e:
        raise CSTMInputError(
            staging.parent, f"cannot write into this folder ({e.strerror})", "a writable --output_dir"
        ) from e
    return staging


def discard(folder: str | os.PathLike | None) -> None:
    """Remove a staging folder (a study that failed) or a replaced output folder, if any."""
    if folder is None:
        return
    if os.path.isdir(folder) and not os.path.islink(folder):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder)


def manifest(
    study: str, staging: str | os.PathLike, inputs: Mapping[str, str], settings: Mapping[str, Any], version: str
) -> dict[str, Any]:
    """The record of the outputs in ``staging`` (every file but the record itself), made from ``inputs``
    (:func:`study_inputs`) with ``settings`` (:func:`result_settings`) by bundle ``version`` (recorded, not compared).
    """
    staging = Path(staging)
    outputs = {
        _relative(p, staging): file_digest(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    return {
        "format": MANIFEST_FORMAT,
        "study": study,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle_version": version,
        "inputs": dict(inputs),
        "settings": dict(settings),
        "outputs": outputs,
    }


def commit(staging: str | os.PathLike, folder: str | os.PathLike, record: Mapping[str, Any], overwrite: bool) -> Path:
    """Write ``record`` as ``outputs.json`` into ``staging`` (the last file), then put ``staging`` in the place of
    ``folder``: an existing ``folder`` is renamed aside, ``staging`` renamed to ``folder``, the old one removed. Each
    rename is atomic, so ``folder`` never mixes two runs; an error or Ctrl-C between the two puts the old folder back, a
    killed process leaves no ``folder`` (a study not done) and two hidden folders. When two runs commit the same study
    at once, the last one wins.

    Args:
        staging: the complete outputs (:func:`new_staging`).
        folder: ``<output_dir>/<study>``.
        record: :func:`manifest`.
        overwrite: replace an existing non-empty ``folder``; False: that is an error (another run made it meanwhile;
            ``check_outputs`` refused those present at the start).
    Raises:
        CSTMInputError: ``folder`` exists and ``overwrite`` is False, or a rename fails (naming the folder).
    """
    staging, folder = Path(staging), Path(folder)
    save_json(record, staging / MANIFEST_FILE, overwrite=True)
    for _ in range(10):  # retried only when a concurrent run swapped its own folder in between our two renames
        old = None
        if folder.exists() or folder.is_symlink():
            if not overwrite and not (folder.is_dir() and not any(folder.iterdir())):
                raise CSTMInputError(folder, "output folder exists", "a new --output_dir, or --overwrite true")
            old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.old")
            try:
                os.rename(folder, old)
            except FileNotFoundError:  # a concurrent run moved it first
                old = None
            except OSError as e:
                raise _rename_error(folder, e) from e
        try:
            os.rename(staging, folder)
        except BaseException as e:  # OSError, or Ctrl-C between the two renames
            if isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a concurrent run's folder
                discard(old)
                continue
            if old is not None:  # put the old set back
                with contextlib.suppress(OSError):
                    os.rename(old, folder)
            if isinstance(e, OSError):
                raise _rename_error(folder, e) from e
            raise
        discard(old)
        return folder
    raise CSTMInputError(folder, "output folder keeps being replaced by another run", "one run per --output_dir")


def check_done(
    folder: str | os.PathLike,
    expected: Sequence[str],
    inputs: Callable[[], Mapping[str, str]],
    settings: Mapping[str, Any],
) -> str:
    """Why the outputs in ``folder`` are not those the current run would make; "" when they are (the study is done).

    Args:
        folder: ``<output_dir>/<study>``.
        expected: the file names the current writers make (relative to ``folder``).
        inputs: makes the current :func:`study_inputs` (called only when the record exists and the settings agree).
        settings: the current :func:`result_settings`.
    Returns:
        "" (done), or the reason, one line: no ``outputs.json``, settings or inputs changed (naming them), an output
        missing or changed since it was written.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE} (outputs of an earlier version, or of a run that did not finish)"
    try:
        record = json.loads(path.read_text())
        recorded_settings, recorded_inputs, outputs = record["settings"], record["inputs"], record["outputs"]
        if not all(isinstance(x, dict) for x in (recorded_settings, recorded_inputs, outputs)):
            raise ValueError("not a record of outputs")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST_FILE} cannot be read ({type(e).__name__}: {e})"
    changed = [
        f"{key} {recorded_settings.get(key)!r} -> {value!r}"
        for key, value in settings.items()
        if recorded_settings.get(key) != _plain(value)
    ]
    if changed:
        return "settings changed since its outputs were made: " + ", ".join(changed)
    try:
        current = dict(inputs())
    except OSError as e:
        return f"its input files cannot be read ({e.strerror or e})"
    if current != recorded_inputs:
        return "inputs changed since its outputs were made: " + ", ".join(_changes(recorded_inputs, current))
    problems = []
    for name in expected:
        file = folder / name
        if name not in outputs:
            problems.append(f"{name} (not made by that run)")
        elif not file.is_file():
            problems.append(f"{name} (missing)")
        elif file_digest(file) != outputs[name]:
            problems.append(f"{name} (changed since it was written)")
    return "outputs missing or changed: " + ", ".join(problems) if problems else ""


def _changes(before: Mapping[str, str], after: Mapping[str, str]) -> Iterable[str]:
    """``info.json changed``, ``annotation.nii.gz added``, ``label_es.nii.gz removed``, in path order."""
    for name in sorted(set(before) | set(after)):
        if name not in before:
            yield f"{name} added"
        elif name not in after:
            yield f"{name} removed"
        elif before[name] != after[name]:
            yield f"{name} changed"


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _weights_digest(path: str | os.PathLike | None) -> str | None:
    return file_digest(path) if path is not None and Path(path).is_file() else None


def _plain(value: Any) -> Any:
    """An option as JSON reads it back (tuples as lists), so that a recorded value compares equal to the current."""
    return json.loads(json.dumps(value))


def _rename_error(folder: Path, error: OSError) -> CSTMInputError:
    return CSTMInputError(
        folder, f"cannot replace the output folder ({error.strerror or error})", "a writable --output_dir"
    )
