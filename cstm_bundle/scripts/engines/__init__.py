from .checkpoint import CheckedCheckpointLoader, ResumableCheckpoint, check_run_folder
from .losses import BootstrappedCE
from .trainer import CSTMTrainer, propagate_triplet

__all__ = ["BootstrappedCE", "CheckedCheckpointLoader", "ResumableCheckpoint", "CSTMTrainer", "check_run_folder", "propagate_triplet"]
