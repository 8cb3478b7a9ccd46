"""Checkpoint loading whose failures name the file and the problem."""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.handlers import CheckpointLoader

from ..errors import CSTMInputError


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader``, but a missing, unreadable or mismatched checkpoint raises a one-line
    :class:`~scripts.errors.CSTMInputError` naming the file, instead of torch's multi-line error.

    Takes the same arguments as ``monai.handlers.CheckpointLoader``.
    """

    def __call__(self, engine: Any) -> None:
        path = self.load_path
        if not os.path.isfile(path):
            raise CSTMInputError(path, "checkpoint file not found", "the weights file (--checkpoint PATH)")
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for damaged files
            raise CSTMInputError(path, f"cannot be read as a checkpoint ({_first_line(e)})",
                                 "a file saved by the training config") from e
        try:
            super().__call__(engine)
        except RuntimeError as e:
            raise CSTMInputError(path, f"does not fit the network ({_first_line(e)})",
                                 "a checkpoint of the configured variant and matching options") from e


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
