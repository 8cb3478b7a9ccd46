"""Errors a user reads: one short message naming the file (or config key) and the problem."""

from __future__ import annotations

import os
import sys
from types import TracebackType


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
