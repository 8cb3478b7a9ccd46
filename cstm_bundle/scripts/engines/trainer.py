"""Ignite trainer for 3-frame samples (paper §3.4)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import IterationEvents, SupervisedTrainer
from monai.handlers import EarlyStopHandler
from monai.utils import CommonKeys
from torch import Tensor, nn

from ..networks.cstm import CSTM, stack_memory


def propagate_triplet(network: CSTM, frames: Tensor, first_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Predict frame 2 from frame 1, then frame 3 from frames 1 and 2 (frame 2 with its predicted probabilities).

    Args:
        network: the CSTM network.
        frames: (B, 3, 1, H, W) images.
        first_mask: (B, H, W) integer labels of frame 1.
    Returns:
        logits of frames 2 and 3, each (B, O, H, W).
    """
    b = frames.shape[0]
    keys = network.encode_key(frames.flatten(0, 1))  # (B*3, ...) per field
    key1, key2, key3 = (type(keys)(*(t.unflatten(0, (b, 3))[:, i] for t in keys)) for i in range(3))
    onehot = F.one_hot(first_mask.long().clamp(max=network.num_classes - 1), network.num_classes)
    value1 = network.encode_value(frames[:, 0], onehot.permute(0, 3, 1, 2).float(), key1)
    logits2 = network.segment(key2, stack_memory([key1], [value1]))
    value2 = network.encode_value(frames[:, 1], logits2.softmax(1), key2)
    logits3 = network.segment(key3, stack_memory([key1, key2], [value1, value2]))
    return logits2, logits3


class TripletStep(nn.Module):
    """:func:`propagate_triplet` as a module's ``forward(frames, first_mask)``, so that ``DistributedDataParallel`` can
    wrap one training step (DDP averages gradients only for what runs through its ``forward``; ``CSTM`` exposes named
    methods instead). Holds no parameters of its own: its state dict is the network's with a ``network.`` prefix, and
    the checkpoints keep saving the plain network (``multi_gpu_train.json``).

    Args:
        network: the CSTM network.
    """

    def __init__(self, network: CSTM):
        super().__init__()
        self.network = network

    def forward(self, frames: Tensor, first_mask: Tensor) -> tuple[Tensor, Tensor]:
        """See :func:`propagate_triplet`: frames (B, 3, 1, H, W), first_mask (B, H, W) -> two (B, O, H, W) logits."""
        return propagate_triplet(self.network, frames, first_mask)


class CSTMTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration runs :func:`propagate_triplet` on batches of ``frames`` (B, 3, H, W) and
    ``masks`` (B, 3, H, W), with ``loss_function(logits, target, iteration)`` summed over frames 2 and 3.

    Frame 1 must be fully labelled (:class:`~scripts.data.RandTripletd` draws it so); frames 2 and 3 may hold
    unlabelled pixels, which the loss ignores. ``network`` is a module whose ``forward(frames, first_mask)`` runs the
    step: :class:`TripletStep`, wrapped in ``DistributedDataParallel`` for several GPUs (``multi_gpu_train.json``).

    Args:
        grad_clip_norm: clip the gradients' global L2 norm to this before each optimizer step (after unscaling under
            AMP); None or 0 does not clip.
        args, kwargs: ``SupervisedTrainer``'s.
    """

    def __init__(self, *args: Any, grad_clip_norm: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if grad_clip_norm is not None and grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be None or >= 0, got {grad_clip_norm}.")
        self.grad_clip_norm = grad_clip_norm or None

    def _iteration(self, engine: Any, batchdata: dict[str, Tensor]) -> dict:
        device = torch.device(engine.state.device)
        frames = batchdata["frames"].to(device, non_blocking=engine.non_blocking).unsqueeze(2)  # (B, 3, 1, H, W)
        masks = batchdata["masks"].to(device, non_blocking=engine.non_blocking).long()  # (B, 3, H, W)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device.type, enabled=engine.amp):
            logits2, logits3 = engine.network(frames, masks[:, 0])
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
        engine.state.output = {CommonKeys.IMAGE: frames, CommonKeys.LABEL: masks, CommonKeys.PRED: logits3.detach(),
                               CommonKeys.LOSS: loss.detach()}
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
    EarlyStopHandler(patience=patience, score_function=lambda e: e.state.metrics[e.state.key_metric_name],
                     trainer=trainer, min_delta=min_delta).attach(evaluator)
