"""Checkpoints: loading whose failures name the file and the problem; atomic saving and resuming of training."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from ..errors import CSTMInputError
from ..io import save_torch
from ..networks.weights import check_recorded_network, first_line, read_checkpoint, save_weights, weights_record

logger = logging.getLogger(__name__)


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader``, but a missing, unreadable or mismatched checkpoint raises a one-line
    :class:`~scripts.errors.CSTMInputError` naming the file, instead of torch's multi-line error; so does a
    checkpoint recorded with other network arguments (:func:`~scripts.networks.weights.check_recorded_network`: the
    matching has no parameters, so ``load_state_dict`` alone would not notice) and a training checkpoint whose run
    already reached the configured ``max_epochs`` (MONAI refuses only one beyond it).

    Loads the inference weights (``checkpoint_loader`` in the configs), ``--init_checkpoint``
    (:func:`load_initial_weights`) and ``checkpoint_last.pt`` (:meth:`ResumableCheckpoint.load`).
    Takes the same arguments as ``monai.handlers.CheckpointLoader``.
    """

    def __call__(self, engine: Any) -> None:
        path = self.load_path
        checkpoint = read_checkpoint(path)
        for network in self.load_dict.values():
            if hasattr(network, "config"):
                check_recorded_network(network, checkpoint, path)
        max_epochs = engine.state.max_epochs
        try:
            super().__call__(engine)  # keeps the engine's max_epochs, refuses a checkpoint of a later epoch
        except (KeyError, RuntimeError, ValueError) as e:
            if not (max_epochs and engine.state.epoch > max_epochs):  # that refusal is reported below
                network = len(self.load_dict) == 1
                raise CSTMInputError(
                    path,
                    f"does not fit {'the network' if network else 'this training config'} " f"({first_line(e)})",
                    (
                        "a checkpoint of the configured variant and matching options"
                        if network
                        else "a checkpoint of the same network and optimizer"
                    ),
                ) from e
        if max_epochs and engine.state.epoch >= max_epochs:
            raise CSTMInputError(
                path,
                f"the run already finished its {engine.state.epoch} epochs",
                f"--max_epochs above {engine.state.epoch} to train further",
            )


def load_initial_weights(network: torch.nn.Module, checkpoint: str | os.PathLike | None, engine: Engine) -> None:
    """Start training from ``checkpoint``'s weights (``--init_checkpoint``, e.g. the phantom-trained ``model.pt``)
    through :class:`CheckedCheckpointLoader`; None starts from scratch. A resumed run then replaces them with its own
    last checkpoint.

    Args:
        engine: the trainer (the loader keeps its ``max_epochs``).
    Raises:
        CSTMInputError: the file is missing or damaged, or holds another network's weights.
    """
    if checkpoint is None:
        return
    CheckedCheckpointLoader(str(checkpoint), {"model": network}, map_location="cpu")(engine)
    logger.info(f"initial weights from {checkpoint}")


LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_MODEL = "model.pt"


def _save_torch(obj: Any, path: Path) -> Path:
    """``torch.save`` through a temporary file and a rename (:func:`~scripts.io.write_atomic`): a kill during the
    save leaves the old file intact. MONAI's ``CheckpointSaver`` cannot promise that: it gives ignite's ``DiskSaver``
    ``atomic=False`` (so it writes in place), and ignite's ``Checkpoint`` (0.5.5) removes the previous file before it
    writes the next one, so a kill in between leaves none. (ignite's ``DiskSaver`` on its own is atomic by default.)"""
    return save_torch(obj, path, overwrite=True)


def check_run_folder(output_dir: str | os.PathLike, resume: bool = False) -> None:
    """Fail before any work if ``output_dir`` holds an earlier run's checkpoints and ``resume`` is off, or holds a
    ``model.pt`` but no ``checkpoint_last.pt`` to resume from (a fresh start would overwrite that ``model.pt``)."""
    last, best = Path(output_dir) / LAST_CHECKPOINT, Path(output_dir) / BEST_MODEL
    earlier = [p for p in (last, best) if p.exists()]
    if earlier and not resume:
        raise CSTMInputError(
            earlier[0],
            "an earlier training run is in this output folder",
            "--resume true to continue it, or a new --output_dir",
        )
    if resume and best.exists() and not last.exists():
        raise CSTMInputError(
            best,
            f"there is no {LAST_CHECKPOINT} beside it to resume from, and a new run would " "overwrite it",
            f"a new --output_dir (with --init_checkpoint {best} to start from it)",
        )
    if resume and not earlier:
        logger.warning(f"--resume true, but {output_dir} holds no {LAST_CHECKPOINT}: training from the start")


class ResumableCheckpoint:
    """The training run's checkpoints, written atomically into ``output_dir`` (ours, not MONAI's ``CheckpointSaver``,
    which can leave no checkpoint after a kill: see :func:`_save_torch`), and resuming from them.

    - ``checkpoint_last.pt``: ``save_dict``'s state dicts (model, optimizer, trainer, ...) plus the evaluator's best
      metric, replaced at the end of every epoch. A run killed at any moment loses at most the epoch under way.
    - ``model.pt``: the network's weights at the best validation epoch (the evaluator's key metric), replaced only
      when that metric improves.

    With ``resume`` the trainer restores ``checkpoint_last.pt`` when it starts and goes on from the epoch after it;
    ``max_epochs`` comes from the config, so a finished run can be extended. :func:`check_run_folder` keeps a new
    run from overwriting an earlier one.

    Args:
        output_dir: the run folder (``--output_dir``).
        save_dict: name -> object with ``state_dict`` / ``load_state_dict``; must hold ``"model"`` and the trainer.
        evaluator: the validation engine whose ``best_metric`` decides ``model.pt``; None saves no ``model.pt``.
        resume: restore ``checkpoint_last.pt`` if there is one (``--resume true``).
        save: write the checkpoints; False on all but one process of a multi-GPU run (every process still resumes).
        record: keywords of :func:`~scripts.networks.weights_record` (variant, ROI, recipe, params) that ``model.pt``
            carries beside the weights, so that inference rebuilds the same network.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        save_dict: dict[str, Any],
        evaluator: Any = None,
        resume: bool = False,
        save: bool = True,
        record: dict[str, Any] | None = None,
    ):
        if "model" not in save_dict:
            raise ValueError(f"save_dict must hold 'model', got keys {sorted(save_dict)}.")
        self.output_dir = Path(output_dir)
        self.save_dict = save_dict
        self.evaluator = evaluator
        self.resume = resume
        self.save = save
        self.record = dict(record or {})
        self.last_path = self.output_dir / LAST_CHECKPOINT
        self.best_path = self.output_dir / BEST_MODEL

    def attach(self, trainer: Engine) -> None:
        """Restore at ``STARTED`` (when resuming), save ``checkpoint_last.pt`` at every ``EPOCH_COMPLETED``."""
        if self.resume and self.last_path.exists():
            trainer.add_event_handler(Events.STARTED, self.load)
        if not self.save:
            return
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def load(self, trainer: Engine) -> None:
        """Restore ``save_dict`` from ``checkpoint_last.pt`` (:class:`CheckedCheckpointLoader`; the trainer keeps the
        configured ``max_epochs``) and the evaluator's best metric."""
        CheckedCheckpointLoader(str(self.last_path), self.save_dict, map_location="cpu")(trainer)
        best = read_checkpoint(self.last_path).get("best")
        if self.evaluator is not None and best:
            self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = best["metric"], best["epoch"]
        trainer.logger.info(
            f"resumed from {self.last_path}: epoch {trainer.state.epoch} of " f"{trainer.state.max_epochs} done"
        )

    def save_last(self, trainer: Engine) -> None:
        state = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        if self.evaluator is not None:
            state["best"] = {
                "metric": self.evaluator.state.best_metric,
                "epoch": self.evaluator.state.best_metric_epoch,
            }
        _save_torch(state, self.last_path)

    def save_best(self, evaluator: Engine) -> None:
        if evaluator.state.best_metric_epoch == evaluator.state.epoch:
            network = self.save_dict["model"]
            save_weights(network, self.best_path, weights_record(network, **self.record))
            evaluator.logger.info(
                f"best {evaluator.state.key_metric_name} {evaluator.state.best_metric:.4f} "
                f"at epoch {evaluator.state.epoch}: {self.best_path}"
            )
