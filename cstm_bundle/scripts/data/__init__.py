from .phantom import PhantomStudy, make_phantom_study, write_phantom_studies
from .readers import list_studies, read_info, read_label
from .transforms import UNLABELLED, AsCineStudyd, LoadStudyd, RandHeartCropd, RandTripletd, SaveStudyLabeld, SelectLabelledFramesd, check_outputs

__all__ = [
    "UNLABELLED", "AsCineStudyd", "LoadStudyd", "PhantomStudy", "RandHeartCropd", "RandTripletd", "SaveStudyLabeld", "SelectLabelledFramesd",
    "check_outputs", "list_studies", "make_phantom_study", "read_info", "read_label", "write_phantom_studies",
]
