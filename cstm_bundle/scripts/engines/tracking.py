"""Experiment tracking: what ``--tracking mlflow`` logs beyond MONAI's defaults (scripts never import mlflow)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def configure_tracking(
    handlers: Sequence[Any], params: Mapping[str, Any], artifacts: Sequence[str | os.PathLike] = ()
) -> int:
    """Give the tracking handlers that ``--tracking mlflow`` appended to ``train#handlers`` the run's parameters and
    the files to log when training completes; without ``--tracking`` there are none and this does nothing.

    MONAI's default MLflow settings (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) log only ``max_epochs`` and
    ``epoch_length`` as parameters, and as artifact the executed config. A tracking handler is recognised by its
    ``experiment_param`` and ``artifacts`` attributes (``monai.handlers.MLFlowHandler``), so mlflow is not imported.

    Args:
        handlers: the trainer's handlers (``@train#handlers``, after ``--tracking`` patched it).
        params: name -> value of the config knobs to record (``@tracking_params``); lists become strings.
        artifacts: files logged when training completes (the best weights, ``model.pt``).
    Returns:
        the number of tracking handlers configured.
    """
    configured = 0
    for handler in handlers:
        if not (hasattr(handler, "experiment_param") and hasattr(handler, "artifacts")):
            continue
        values = {
            name: value if isinstance(value, (int, float, str, bool)) else str(value) for name, value in params.items()
        }
        handler.experiment_param = {**(handler.experiment_param or {}), **values}
        handler.artifacts = (*(a for a in handler.artifacts if a), *(str(a) for a in artifacts))
        configured += 1
    if configured:
        logger.info(f"tracking {len(params)} parameters and artifacts {[str(a) for a in artifacts]}")
    return configured
