"""Evaluation (Dice / HD95 by region, paper Table 1; agreement of EF, volumes, mass with the truth), clinical outputs
(volumes, EF, mass, pictures), the per-frame quality report, timing."""

from .agreement import (
    QUANTITIES,
    agreement_rows,
    agreement_stats,
    bland_altman_figure,
    format_agreement_table,
    function_values,
    summarize_agreement,
)
from .cardiac import CardiacOutputsd, cardiac_function, phase_volumes, voxel_volume_ml
from .quality import QualityReportd, area_jumps, frame_quality
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
    "QUANTITIES",
    "CardiacOutputsd",
    "EvaluationReport",
    "PhaseClassDice",
    "QualityReportd",
    "StudyTimer",
    "agreement_rows",
    "area_jumps",
    "agreement_stats",
    "bland_altman_figure",
    "cardiac_function",
    "check_evaluation_outputs",
    "dice_hd95",
    "format_agreement_table",
    "format_group_table",
    "format_table",
    "frame_quality",
    "function_values",
    "grid_diagonal",
    "load_models",
    "phase_volumes",
    "score_phase",
    "scored_slices",
    "summarize_agreement",
    "voxel_volume_ml",
]
