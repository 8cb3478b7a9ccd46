"""Evaluation (Dice / HD95 by region, paper Table 1), clinical outputs (volumes, EF, mass, pictures), timing."""

from .cardiac import CardiacOutputsd, cardiac_function, phase_volumes, voxel_volume_ml
from .report import (
    EvaluationReport,
    check_evaluation_outputs,
    format_group_table,
    format_table,
    load_models,
    scored_slices,
)
from .segmentation import CLASS_NAMES, EMPTY_BOTH, dice_hd95, grid_diagonal, score_phase
from .timing import StudyTimer
from .validation import PhaseClassDice

__all__ = [
    "CLASS_NAMES",
    "EMPTY_BOTH",
    "CardiacOutputsd",
    "EvaluationReport",
    "PhaseClassDice",
    "StudyTimer",
    "cardiac_function",
    "check_evaluation_outputs",
    "dice_hd95",
    "format_group_table",
    "format_table",
    "grid_diagonal",
    "load_models",
    "phase_volumes",
    "score_phase",
    "scored_slices",
    "voxel_volume_ml",
]
