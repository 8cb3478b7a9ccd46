"""Errors a user reads: one short message naming the file (or config key) and the problem."""

from __future__ import annotations

import ast
import difflib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from monai.apps.utils import get_logger
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
    ``OSError`` (full disk, permission, missing file: named with its file), a ``--device`` this machine does not have
    (:func:`device_problem`), running out of memory, or Ctrl-C.
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
        problem = device_problem(seen)
        if problem is not None:
            return str(problem)
    return None


DEVICE_ERRORS = (
    "Torch not compiled with CUDA enabled",
    "Found no NVIDIA driver",
    "No CUDA GPUs are available",
    "invalid device ordinal",
    "CUDA driver version is insufficient",
    "Invalid device id",
    "Invalid device, must be cuda device",
    "Expected one of cpu, cuda",
)
"""What torch says when the device asked for is not there (a CPU-only build, no driver, ``cuda:3`` of 2 GPUs) or
is no device name at all."""


def device_problem(error: BaseException) -> CSTMInputError | None:
    """``--device`` as the problem, when ``error`` is torch's message for a device that this machine lacks
    (:data:`DEVICE_ERRORS`); None for any other error. A safety net behind the up-front device check."""
    text = str(error)
    if not isinstance(error, (RuntimeError, AssertionError, ValueError)) or not any(m in text for m in DEVICE_ERRORS):
        return None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(error).__name__
    return CSTMInputError(
        "--device",
        f"the device is not available ({first[:200].rstrip('.')})",
        "cpu" + (f", or cuda:0 to cuda:{available - 1}" if available else " (this machine has no usable CUDA GPU)"),
    )


def install_error_summary(debug: Any = False, output_dir: str | os.PathLike | None = None) -> None:
    """After a failed ``monai.bundle run``, print the error as one line, ``ERROR: <file>: <problem>; expected ...``
    (see :func:`error_summary`), and no traceback: the user reads the problem rather than MONAI's "Failed to evaluate
    ConfigExpression" wrapper or a traceback from numpy, nibabel, ignite or pydicom. A bug (no such line) keeps its
    traceback, which is the report. The first step of every run list calls this.

    Also silences the known library notices (:func:`~scripts.logs.quiet_known_noise`) and keeps the console from
    failing on a file name that is not UTF-8 (:func:`~scripts.logs.robust_console`).

    Args:
        debug: ``--debug``: true writes the run's log and the traceback of a failed run into
            ``<output_dir>/debug.log`` (:func:`~scripts.logs.open_debug_log`); where that file cannot be written, the
            traceback is printed before the ``ERROR:`` line instead.
        output_dir: the run's output folder (where ``debug.log`` goes).
    Raises:
        CSTMInputError: ``--debug`` is no boolean (shown as one line, since the hook is in place by then).
    """
    from .logs import open_debug_log, quiet_known_noise, robust_console
    from .options import convert

    quiet_known_noise()
    robust_console()
    for name in TRACEBACK_LOGGERS:
        # MONAI's get_logger, not logging's: MONAI gives a logger its console handler only when it creates it, and a
        # StatsHandler logger made here by logging.getLogger would print nothing (propagate off, no handler)
        logger = get_logger(name)
        if not any(isinstance(f, DropUserErrorTracebacks) for f in logger.filters):
            logger.addFilter(DropUserErrorTracebacks())
    hook = sys.excepthook
    if not getattr(hook, "cstm_summary", False):
        hook = sys.excepthook = _summary_hook(hook)
    hook.debug, hook.debug_log = False, None  # type: ignore[attr-defined]
    hook.debug = convert("debug", debug)  # type: ignore[attr-defined]
    if hook.debug and output_dir is not None:  # type: ignore[attr-defined]
        hook.debug_log = open_debug_log(output_dir)  # type: ignore[attr-defined]


TRACEBACK_LOGGERS = ("monai.handlers.StatsHandler",)
"""Loggers that log an exception with its traceback before it reaches the excepthook: MONAI's ``StatsHandler`` logs
every exception that stops an engine (``logger.exception``), once per event level (one or two tracebacks)."""


class DropUserErrorTracebacks(logging.Filter):
    """Drop a log record that carries a user's error (:func:`error_summary` gives its line): the run ends with that
    line, and ``--debug true`` writes its traceback to the debug log. A bug's record is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or error_summary(error) is None


def _summary_hook(previous: Callable[..., Any]) -> Callable[..., None]:
    """The ``sys.excepthook`` of :func:`install_error_summary`, calling ``previous`` (Python's traceback printer) for
    a bug; its ``debug`` and ``debug_log`` attributes say where a user error's traceback goes."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        summary = error_summary(error)
        if summary is None:  # a bug: its traceback is the report
            previous(kind, error, tb)
            return
        if hook.debug and not _append_traceback(hook.debug_log, kind, error, tb):  # type: ignore[attr-defined]
            previous(kind, error, tb)  # --debug true without a writable log: on the console
        print(f"\nERROR: {summary}", file=sys.stderr)

    hook.cstm_summary, hook.debug, hook.debug_log = True, False, None  # type: ignore[attr-defined]
    return hook


def _append_traceback(
    log: Path | None, kind: type[BaseException], error: BaseException, tb: TracebackType | None
) -> bool:
    """Append the traceback to the debug log and say where it is; False where there is no log to write to."""
    if log is None:
        return False
    try:
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write("".join(traceback.format_exception(kind, error, tb)))
    except OSError:
        return False
    print(f"the traceback of the error below is in {log}", file=sys.stderr)
    return True


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
