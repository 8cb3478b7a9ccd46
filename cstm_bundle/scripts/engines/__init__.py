from .losses import BootstrappedCE
from .trainer import CSTMTrainer, propagate_triplet

__all__ = ["BootstrappedCE", "CSTMTrainer", "propagate_triplet"]
