"""Errors a user reads: one short message naming the file (or config key) and the problem."""

from __future__ import annotations

import ast
import difflib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from monai.bundle import ConfigParser


class CSTMInputError(ValueError):
    """Bad user input (image, annotation, checkpoint, config value).

    The message has the form ``"{path}: {problem}; expected {expectation}."`` so the user knows which file to fix.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, expected: str | None = None):  # noqa: B042
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path else ""
        tail = f"; expected {expected}" if expected else ""
        super().__init__(f"{where}{problem}{tail}.")

    def __reduce__(self) -> tuple:
        """Pickled with its three arguments (a DataLoader worker or another rank may send it)."""
        return type(self), (self.path, self.problem, self.expected)


def find_input_error(error: BaseException | None) -> CSTMInputError | None:
    """The first :class:`CSTMInputError` along ``error``'s cause/context chain (MONAI wraps errors it re-raises)."""
    return next((e for e in _chain(error) if isinstance(e, CSTMInputError)), None)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then its cause (or context), and so on."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
"""``OSError`` numbers of a full disk (or a full quota)."""


def error_summary(error: BaseException | None) -> str | None:
    """The one line a user reads for ``error``, or None for a bug (whose traceback is the report).

    A :class:`CSTMInputError` along the cause chain, else the first error the user's machine or files caused: an
    ``OSError`` (full disk, permission, missing file: named with its file), running out of memory, or Ctrl-C.
    """
    cause = find_input_error(error)
    if cause is not None:
        return str(cause)
    for seen in _chain(error):
        if isinstance(seen, OSError) and seen.errno in FULL_DISK:
            return str(CSTMInputError(seen.filename, f"disk is full ({seen.strerror or seen})", "free disk space"))
        if isinstance(seen, OSError) and seen.filename:
            return str(CSTMInputError(seen.filename, seen.strerror or type(seen).__name__))
        if isinstance(seen, (MemoryError, torch.OutOfMemoryError)):
            return str(
                CSTMInputError(
                    None,
                    f"out of memory ({type(seen).__name__})",
                    "a smaller --max_batch, or a device with more memory",
                )
            )
        if isinstance(seen, KeyboardInterrupt):
            return "interrupted; every output already written is complete, none is half-written."
    return None


def install_error_summary() -> None:
    """After a failed ``monai.bundle run``, repeat the error as the last line (see :func:`error_summary`), so the user
    reads it rather than MONAI's "Failed to evaluate ConfigExpression" wrapper or a traceback from numpy, nibabel,
    ignite or pydicom. The first step of every run list calls this."""
    previous = sys.excepthook
    if getattr(previous, "cstm_summary", False):
        return

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        previous(kind, error, tb)
        summary = error_summary(error)
        if summary is not None:
            print(f"\nERROR: {summary}", file=sys.stderr)

    hook.cstm_summary = True  # type: ignore[attr-defined]
    sys.excepthook = hook


RUNNER_OPTIONS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
"""Options of ``monai.bundle run`` itself; every other ``--name`` on its command line overrides a config id."""


def check_overrides(argv: list[str] | None = None) -> None:
    """Fail on a ``--name`` override that is no id of the config (``--max_epoch 5`` for ``--max_epochs``), which
    ``monai.bundle run`` would otherwise add silently and ignore.

    Only ``python -m monai.bundle run`` command lines are checked (``argv`` defaults to ``sys.argv`` then; other
    callers, e.g. MONAI Label, have command lines of their own). ``--a#b`` is accepted when ``a#b`` exists, or when
    ``a`` is a component and ``b`` a new argument for it.

    Raises:
        CSTMInputError: naming the option and the closest ids of the config.
    """
    if argv is None:
        if not sys.argv or Path(sys.argv[0]).parts[-2:] != ("bundle", "__main__.py"):
            return
        argv = sys.argv[1:]
    options = {a[2:].split("=")[0]: i for i, a in enumerate(argv) if a.startswith("--")}
    if "config_file" not in options:
        return
    flag = argv[options["config_file"]]
    files = flag.partition("=")[2] if "=" in flag else argv[options["config_file"] + 1]  # --config_file=a.json too
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    config = ConfigParser.load_config_files(files)
    ids = set(_ids(config))
    for name in options.keys() - RUNNER_OPTIONS:
        parent = name.rpartition("#")[0]
        if name in ids or (parent in ids and isinstance(ConfigParser(config)[parent], dict)):
            continue
        close = difflib.get_close_matches(name, sorted(ids), n=3)
        raise CSTMInputError(
            f"--{name}",
            f"no such option in {', '.join(map(str, files))}",
            f"one of {', '.join('--' + c for c in close)}" if close else "an id of the config",
        )


def _ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config: ``a``, ``a#b``, ``a#0``, ..."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        yield name
        yield from _ids(value, f"{name}#")
