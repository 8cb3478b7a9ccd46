"""Errors a user reads: one short message naming the file (or config key) and the problem."""

from __future__ import annotations

import ast
import difflib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from monai.bundle import ConfigParser


class CSTMInputError(ValueError):
    """Bad user input (image, annotation, checkpoint, config value).

    The message has the form ``"{path}: {problem}; expected {expectation}."`` so the user knows which file to fix.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, expected: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path else ""
        tail = f"; expected {expected}" if expected else ""
        super().__init__(f"{where}{problem}{tail}.")


def find_input_error(error: BaseException | None) -> CSTMInputError | None:
    """The first :class:`CSTMInputError` along ``error``'s cause/context chain (MONAI wraps errors it re-raises)."""
    while error is not None:
        if isinstance(error, CSTMInputError):
            return error
        error = error.__cause__ or error.__context__
    return None


def install_error_summary() -> None:
    """After a failed ``monai.bundle run``, repeat the input error as the last line, so the user reads it rather than
    MONAI's "Failed to evaluate ConfigExpression" wrapper. The first step of every run list calls this."""
    previous = sys.excepthook
    if getattr(previous, "cstm_summary", False):
        return

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        previous(kind, error, tb)
        cause = find_input_error(error)
        if cause is not None:
            print(f"\nERROR: {cause}", file=sys.stderr)

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
        raise CSTMInputError(f"--{name}", f"no such option in {', '.join(map(str, files))}",
                             f"one of {', '.join('--' + c for c in close)}" if close else "an id of the config")


def _ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config: ``a``, ``a#b``, ``a#0``, ..."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        yield name
        yield from _ids(value, f"{name}#")
