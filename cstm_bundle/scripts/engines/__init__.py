from .checkpoint import CheckedCheckpointLoader, ResumableCheckpoint, check_run_folder, load_initial_weights
from .losses import BootstrappedCE
from .tracking import configure_tracking
from .trainer import (
    CSTMTrainer,
    TripletStep,
    attach_early_stop,
    propagate_triplet,
    rank_handlers,
    run_training,
    validation_sampler,
)

__all__ = [
    "BootstrappedCE",
    "CheckedCheckpointLoader",
    "ResumableCheckpoint",
    "CSTMTrainer",
    "TripletStep",
    "attach_early_stop",
    "check_run_folder",
    "configure_tracking",
    "load_initial_weights",
    "propagate_triplet",
    "rank_handlers",
    "run_training",
    "validation_sampler",
]
