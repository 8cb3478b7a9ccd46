from .checkpoint import CheckedCheckpointLoader
from .losses import BootstrappedCE
from .trainer import CSTMTrainer, propagate_triplet

__all__ = ["BootstrappedCE", "CheckedCheckpointLoader", "CSTMTrainer", "propagate_triplet"]
