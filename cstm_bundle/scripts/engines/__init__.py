from .checkpoint import CheckedCheckpointLoader, ResumableCheckpoint, check_run_folder
from .losses import BootstrappedCE
from .tracking import configure_tracking
from .trainer import CSTMTrainer, TripletStep, propagate_triplet

__all__ = ["BootstrappedCE", "CheckedCheckpointLoader", "ResumableCheckpoint", "CSTMTrainer", "check_run_folder", "configure_tracking",
           "propagate_triplet", "TripletStep"]
