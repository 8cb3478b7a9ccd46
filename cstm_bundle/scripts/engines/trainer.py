"""Ignite trainer for 3-frame samples (paper §3.4)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.data import DistributedSampler
from monai.engines import IterationEvents, SupervisedTrainer
from monai.handlers import EarlyStopHandler, ValidationHandler
from monai.utils import CommonKeys
from torch import Tensor, nn

from ..data.transforms import UNLABELLED
from ..networks.cstm import CSTM, stack_memory
from .checkpoint import BEST_MODEL, ResumableCheckpoint, check_run_folder, load_initial_weights
from .tracking import configure_tracking

logger = logging.getLogger(__name__)


def propagate_triplet(
    network: CSTM, frames: Tensor, first_mask: Tensor, second_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Predict frame 2 from frame 1, then frame 3 from frames 1 and 2: frame 2 with its predicted probabilities, or,
    for the samples where ``second_mask`` holds labels, as a second annotated frame (issue 30: a query that reads
    several annotated frames, as the inferer's anchors in memory).

    Args:
        network: the CSTM network.
        frames: (B, 3, 1, H, W) images.
        first_mask: (B, H, W) integer labels of frame 1, all in [0, O): a memory frame is fully labelled.
        second_mask: None, or (B, H, W) integer labels of frame 2 where a sample reads it as annotated, -1 (every
            pixel) where it reads the prediction.
    Returns:
        logits of frames 2 and 3, each (B, O, H, W).
    Raises:
        ValueError: ``first_mask`` holds a value outside [0, O) (e.g. the unlabelled 255 of a partial label).
    """
    b = frames.shape[0]
    low, high = torch.aminmax(first_mask)
    if low < 0 or high >= network.num_classes:
        raise ValueError(
            f"memory mask values must lie in [0, {network.num_classes}) (a memory frame is fully "
            f"labelled), got {sorted(set(torch.unique(first_mask).tolist()))}."
        )
    keys = network.encode_key(frames.flatten(0, 1))  # (B*3, ...) per field
    key1, key2, key3 = (type(keys)(*(t.unflatten(0, (b, 3))[:, i] for t in keys)) for i in range(3))
    value1 = network.encode_value(frames[:, 0], _one_hot(first_mask, network.num_classes), key1)
    logits2 = network.segment(key2, stack_memory([key1], [value1]))
    probs2 = logits2.softmax(1)  # (B, O, H, W)
    if second_mask is not None:
        annotated = (second_mask[:, 0, 0] >= 0)[:, None, None, None]  # (B, 1, 1, 1)
        probs2 = torch.where(annotated, _one_hot(second_mask.clamp(min=0), network.num_classes), probs2)
    value2 = network.encode_value(frames[:, 1], probs2, key2)
    logits3 = network.segment(key3, stack_memory([key1, key2], [value1, value2]))
    return logits2, logits3


def _one_hot(mask: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) integer labels -> (B, O, H, W) float one-hot."""
    return F.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).float()


def annotated_second_frames(masks: Tensor, prob: float) -> Tensor | None:
    """Which samples read frame 2 as an annotated frame (``second_mask`` of :func:`propagate_triplet`): each sample
    whose frame 2 is fully labelled (no :data:`~scripts.data.UNLABELLED` pixel), with probability ``prob``.

    Args:
        masks: (B, 3, H, W) integer labels.
    Returns:
        None when no sample does, else (B, H, W): frame 2's labels where it does, -1 elsewhere.
    """
    if prob <= 0:
        return None
    second = masks[:, 1]
    chosen = (second != UNLABELLED).flatten(1).all(1) & (torch.rand(second.shape[0], device=second.device) < prob)
    if not chosen.any():
        return None
    return torch.where(chosen[:, None, None], second, torch.full_like(second, -1))


class TripletStep(nn.Module):
    """:func:`propagate_triplet` as a module's ``forward(frames, first_mask, second_mask)``, so that
    ``DistributedDataParallel`` can wrap one training step (DDP averages gradients only for what runs through its
    ``forward``; ``CSTM`` exposes named methods instead). Holds no parameters of its own: its state dict is the
    network's with a ``network.`` prefix, and the checkpoints keep saving the plain network (``multi_gpu_train.json``).

    Args:
        network: the CSTM network.
    """

    def __init__(self, network: CSTM):
        super().__init__()
        self.network = network

    def forward(self, frames: Tensor, first_mask: Tensor, second_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """See :func:`propagate_triplet`: frames (B, 3, 1, H, W), first_mask (B, H, W) -> two (B, O, H, W) logits."""
        return propagate_triplet(self.network, frames, first_mask, second_mask)


class CSTMTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration runs :func:`propagate_triplet` on batches of ``frames`` (B, 3, H, W) and
    ``masks`` (B, 3, H, W), with ``loss_function(logits, target, iteration)`` summed over frames 2 and 3.

    Frame 1 must be fully labelled (:class:`~scripts.data.RandTripletd` draws it so); frames 2 and 3 may hold
    unlabelled pixels, which the loss ignores. ``network`` is a module whose ``forward(frames, first_mask)`` runs the
    step: :class:`TripletStep`, wrapped in ``DistributedDataParallel`` for several GPUs (``multi_gpu_train.json``).

    Args:
        grad_clip_norm: clip the gradients' global L2 norm to this before each optimizer step (after unscaling under
            AMP); None or 0 does not clip.
        annotated_memory_prob: probability that frame 3 reads a fully labelled frame 2 as a second annotated frame
            (its labels, not its prediction: :func:`annotated_second_frames`); 0 is the paper's training.
        args, kwargs: ``SupervisedTrainer``'s.
    """

    def __init__(
        self, *args: Any, grad_clip_norm: float | None = None, annotated_memory_prob: float = 0.0, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        if grad_clip_norm is not None and grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be None or >= 0, got {grad_clip_norm}.")
        if not 0.0 <= annotated_memory_prob <= 1.0:
            raise ValueError(f"annotated_memory_prob must lie in [0, 1], got {annotated_memory_prob}.")
        self.grad_clip_norm = grad_clip_norm or None
        self.annotated_memory_prob = annotated_memory_prob

    def _iteration(self, engine: Any, batchdata: dict[str, Tensor]) -> dict:
        device = torch.device(engine.state.device)
        frames = batchdata["frames"].to(device, non_blocking=engine.non_blocking).unsqueeze(2)  # (B, 3, 1, H, W)
        masks = batchdata["masks"].to(device, non_blocking=engine.non_blocking).long()  # (B, 3, H, W)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device.type, enabled=engine.amp):
            second = annotated_second_frames(masks, engine.annotated_memory_prob)
            logits2, logits3 = engine.network(frames, masks[:, 0], second)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            it = engine.state.iteration
            loss = engine.loss_function(logits2, masks[:, 1], it) + engine.loss_function(logits3, masks[:, 2], it)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine.scaler if engine.amp else None
        (scaler.scale(loss) if scaler is not None else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if engine.grad_clip_norm is not None:
            if scaler is not None:
                scaler.unscale_(engine.optimizer)
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.grad_clip_norm)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        engine.state.output = {
            CommonKeys.IMAGE: frames,
            CommonKeys.LABEL: masks,
            CommonKeys.PRED: logits3.detach(),
            CommonKeys.LOSS: loss.detach(),
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI handlers (decollate, StatsHandler) hook here
        return engine.state.output


def attach_early_stop(evaluator: Any, trainer: Any, patience: int = 0, min_delta: float = 0.0) -> None:
    """Stop ``trainer`` when the evaluator's key metric has not improved by more than ``min_delta`` for ``patience``
    validations in a row (MONAI's ``EarlyStopHandler``); ``patience`` 0 never stops early (``--early_stop_patience``).
    The count restarts when a run is resumed."""
    if patience < 0:
        raise ValueError(f"early_stop_patience must be >= 0, got {patience}.")
    if patience == 0:
        return
    EarlyStopHandler(
        patience=patience,
        score_function=lambda e: e.state.metrics[e.state.key_metric_name],
        trainer=trainer,
        min_delta=min_delta,
    ).attach(evaluator)


def run_training(
    trainer: Any,
    evaluator: Any,
    checkpoint: ResumableCheckpoint,
    output_dir: str,
    resume: bool = False,
    init_checkpoint: str | None = None,
    early_stop_patience: int = 0,
    handlers: Sequence[Any] = (),
    tracking_params: dict[str, Any] | None = None,
) -> None:
    """The ``training`` run of ``train.json``, in order: refuse to overwrite an earlier run (:func:`check_run_folder`),
    load ``--init_checkpoint``, attach resuming and checkpointing, early stopping and the ``--tracking`` parameters,
    then train (the last epoch is always validated, so that a run ends with a ``model.pt``).

    Args:
        trainer: the :class:`CSTMTrainer` (``@train#trainer``; its ``network`` may be DDP-wrapped).
        evaluator: the validation engine (``@validate#evaluator``).
        checkpoint: the run's :class:`~.checkpoint.ResumableCheckpoint` (``@train#checkpoint``).
        output_dir: the run folder.
        resume: ``--resume``.
        init_checkpoint: weights to start from (fine-tuning), or None.
        early_stop_patience: validations without a better key metric before stopping (0: never).
        handlers: the trainer's handlers (``@train#handlers``), where ``--tracking mlflow`` adds its own.
        tracking_params: config knobs that ``--tracking mlflow`` logs as parameters.
    """
    check_run_folder(output_dir, resume)
    load_initial_weights(checkpoint.save_dict["model"], init_checkpoint, trainer)
    checkpoint.attach(trainer)
    attach_early_stop(evaluator, trainer, early_stop_patience)
    attach_final_validation(trainer, handlers)
    configure_tracking(handlers, tracking_params or {}, [os.path.join(output_dir, BEST_MODEL)])
    trainer.run()


def attach_final_validation(trainer: Any, handlers: Sequence[Any]) -> None:
    """Validate after the last epoch when ``--val_interval`` does not divide ``--max_epochs`` (or early stopping
    ended the run between validations): without it such a run would end with no ``model.pt``."""
    from ignite.engine import Events

    for handler in handlers:
        if isinstance(handler, ValidationHandler) and handler.epoch_level:
            trainer.add_event_handler(
                Events.COMPLETED, lambda engine, h=handler: engine.state.epoch % h.interval and h(engine)
            )


def rank_handlers(handlers: Sequence[Any], is_rank0: bool) -> list[Any]:
    """The training handlers of one process of a multi-GPU run: all of them on rank 0; on the other ranks only the
    ``ValidationHandler`` (validation is sharded across ranks, its metrics gathered), so that only rank 0 logs and
    tracks. Picked by type, so adding a handler to ``train#handlers`` does not shift what the ranks run."""
    return list(handlers) if is_rank0 else [h for h in handlers if isinstance(h, ValidationHandler)]


def validation_sampler(dataset: Sized) -> DistributedSampler | None:
    """Each rank of a multi-GPU run validates its share of the studies, not padded (``even_divisible=False``), so
    every study is scored once and MONAI's metrics gather the shares. With fewer studies than ranks a rank would have
    none (an ignite engine cannot run on no data): then every rank validates all of them (same metrics), and says so.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return None
    if len(dataset) < world:
        logger.warning(f"{len(dataset)} validation studies for {world} ranks: every rank validates all of them")
        return None
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)
