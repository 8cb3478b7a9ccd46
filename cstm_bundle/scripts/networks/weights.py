"""Weights that carry their configuration.

A ``model.pt`` saved by this bundle is a dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"model": state_dict,                       # what MONAI's CheckpointLoader and MONAI Label read
     "network": {...},                          # every CSTM argument: CSTM(**network) rebuilds the architecture
     "variant": "small",                        # the name it was built under (scripts.networks.VARIANTS)
     "roi": {"roi_size": 192, "roi_spacing": 0.9},   # the heart ROI the network was trained on
     "training": {"recipe": "train_real.json", "params": {...}}}   # recipe name, data and knobs (may be empty)

The inference configs build their network from this record (:func:`build_cstm_from_checkpoint`); an explicit
``--variant``/``--matching_mode``/... that contradicts it is refused in one line. A bare state dict (weights saved
before 0.4.0, or by other code) records nothing: the architecture must then be given (``--variant``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CSTMInputError
from ..io import save_torch
from .cstm import CSTM, VARIANTS, build_cstm

logger = logging.getLogger(__name__)

RECORD_KEYS = ("network", "variant", "roi", "training")
"""Keys of a saved ``model.pt`` beside ``"model"``."""
EARLIER_DEFAULTS = {"encoder_norm": "frozen_batch"}
"""CSTM arguments added after 0.4.0, with the value that every record written before them meant."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` (weights only, on the CPU) with a one-line error for a missing or damaged file.

    The network builder, the ROI lookup and the loaders of one run all read the same ``model.pt``: it is loaded once
    per file version (path, size, modification time) and shared; callers must not modify what it returns (MONAI's
    ``CheckpointLoader`` loads the tensors it hands to the network and optimizer afresh).
    """
    if not os.path.isfile(path):
        raise CSTMInputError(path, "checkpoint file not found", "the weights file (--checkpoint PATH)")
    stat = os.stat(path)
    return _load(os.path.realpath(path), stat.st_size, stat.st_mtime_ns, str(path))


@functools.lru_cache(maxsize=4)
def _load(real_path: str, size: int, mtime_ns: int, shown: str) -> dict[str, Any]:
    try:
        state = torch.load(real_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for damaged files
        raise CSTMInputError(
            shown, f"cannot be read as a checkpoint ({first_line(e)})", "a file saved by the training config"
        ) from e
    if not isinstance(state, dict):
        raise CSTMInputError(shown, f"holds a {type(state).__name__}, not a state dict", "a model.pt of this bundle")
    return state


def first_line(error: BaseException, limit: int = 160) -> str:
    """``error``'s message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint: its ``"model"`` entry, or the checkpoint itself for a bare state dict."""
    return checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint


def weights_record(
    network: CSTM,
    variant: str | None = None,
    roi_size: int | None = None,
    roi_spacing: float | None = None,
    recipe: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`save_weights` stores beside the weights (see the module docstring)."""
    return {
        "network": dict(network.config),
        "variant": variant,
        "roi": {"roi_size": roi_size, "roi_spacing": roi_spacing},
        "training": {"recipe": recipe, "params": dict(params or {})},
    }


def save_weights(network: CSTM, path: str | os.PathLike, record: dict[str, Any] | None = None) -> Path:
    """Write ``{"model": state_dict, **record}`` atomically (a temporary file renamed over ``path``).

    Args:
        network: the CSTM whose weights and arguments are saved; ``record["network"]`` is always its own.
        record: from :func:`weights_record`; None records the architecture only.
    """
    record = {**(record or weights_record(network)), "network": dict(network.config)}
    state = {"model": network.state_dict(), **record}
    return save_torch(state, path, overwrite=True)


def build_cstm_from_checkpoint(
    checkpoint: str | os.PathLike,
    variant: str | None = None,
    num_classes: int | None = None,
    matching_mode: str | None = None,
    patch_size: int | None = None,
    top_k: int | None = None,
    matching_strides: list[int] | None = None,
) -> CSTM:
    """The CSTM that ``checkpoint`` was trained as (``network_def`` of the inference configs); weights not loaded.

    Every argument left None comes from the checkpoint's record; one that is given must agree with it.

    Raises:
        CSTMInputError: the file is missing or damaged; an argument contradicts the record (one line naming both); a
            bare state dict without ``variant``.
    """
    state = read_checkpoint(checkpoint)
    requested = {
        k: v
        for k, v in dict(
            num_classes=num_classes,
            matching_mode=matching_mode,
            patch_size=patch_size,
            top_k=top_k,
            matching_strides=matching_strides,
        ).items()
        if v is not None
    }
    if "network" not in state:
        if variant is None:
            raise CSTMInputError(
                checkpoint,
                "is a bare state dict that records no architecture",
                f"a model.pt saved by this bundle, or --variant one of {sorted(VARIANTS)}",
            )
        logger.warning(f"{checkpoint}: no recorded configuration; building variant {variant!r} as configured")
        return build_cstm(variant, **requested)
    recorded = recorded_network(state)
    if variant is not None and state.get("variant") not in (None, variant):
        raise CSTMInputError(
            checkpoint,
            f"was trained as variant {state['variant']!r}, not --variant {variant}",
            "no --variant (it is taken from the checkpoint) or a checkpoint of that variant",
        )
    for name, value in requested.items():
        if _normalised(recorded.get(name)) != _normalised(value):
            raise CSTMInputError(
                checkpoint,
                f"was trained with {name} {recorded.get(name)!r}, not --{name} {value!r}",
                f"no --{name} (it is taken from the checkpoint) or a checkpoint trained with it",
            )
    return CSTM(**recorded)


def recorded_network(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The CSTM arguments that a checkpoint records, completed with :data:`EARLIER_DEFAULTS` for older records."""
    return {**EARLIER_DEFAULTS, **checkpoint["network"]}


def check_recorded_network(network: CSTM, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse weights whose record says they were trained as another network than ``network`` (matching mode, P, K,
    strides or architecture): the matching has no parameters, so ``load_state_dict`` alone would not notice.

    Raises:
        CSTMInputError: naming the first argument that differs.
    """
    if not checkpoint.get("network"):
        return
    recorded = recorded_network(checkpoint)
    for name, value in network.config.items():
        if name in recorded and _normalised(recorded[name]) != _normalised(value):
            raise CSTMInputError(
                path,
                f"was trained with {name} {recorded[name]!r}, the network here has {value!r}",
                f"weights trained with {name} {value!r}, or that setting",
            )


def recorded_roi(
    checkpoint: str | os.PathLike, roi_size: int | None = None, roi_spacing: float | None = None
) -> dict[str, Any]:
    """The heart ROI to infer with: ``roi_size`` / ``roi_spacing`` where given, else the checkpoint's record.

    Returns:
        ``{"roi_size": int, "spacing": float}`` (the keywords of the inferer).
    Raises:
        CSTMInputError: neither given nor recorded.
    """
    roi = read_checkpoint(checkpoint).get("roi") or {}
    size = roi_size if roi_size is not None else roi.get("roi_size")
    spacing = roi_spacing if roi_spacing is not None else roi.get("roi_spacing")
    if size is None or spacing is None:
        raise CSTMInputError(checkpoint, "records no heart ROI", "--roi_size and --roi_spacing (e.g. 192 and 0.9)")
    for name, given, kept in (
        ("roi_size", roi_size, roi.get("roi_size")),
        ("roi_spacing", roi_spacing, roi.get("roi_spacing")),
    ):
        if given is not None and kept is not None and given != kept:
            logger.warning(f"--{name} {given} differs from the {kept} that {checkpoint} was trained with")
    return {"roi_size": int(size), "spacing": float(spacing)}


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
