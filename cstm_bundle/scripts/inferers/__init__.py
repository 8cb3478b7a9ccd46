from .cleanup import clean_up
from .initializer import ANNOTATION_MODES, GENERATED, AutoAnchord, FrameInitializer
from .memory import MemoryBank
from .propagation import QC_CONFIDENCE, QC_DISAGREEMENT, Propagation4DInferer, frame_confidence, propagate_4d
from .schedule import dependency_levels, plan_propagation, slice_regions

__all__ = [
    "ANNOTATION_MODES",
    "AutoAnchord",
    "FrameInitializer",
    "GENERATED",
    "MemoryBank",
    "QC_CONFIDENCE",
    "QC_DISAGREEMENT",
    "frame_confidence",
    "clean_up",
    "Propagation4DInferer",
    "dependency_levels",
    "plan_propagation",
    "propagate_4d",
    "slice_regions",
]
