"""Errors a user reads: one short message naming the file (or config key) and the problem."""

from __future__ import annotations

import os


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
