from .cleanup import clean_up
from .memory import MemoryBank
from .propagation import Propagation4DInferer, propagate_4d
from .schedule import dependency_levels, plan_propagation, slice_regions

__all__ = [
    "MemoryBank",
    "clean_up",
    "Propagation4DInferer",
    "dependency_levels",
    "plan_propagation",
    "propagate_4d",
    "slice_regions",
]
