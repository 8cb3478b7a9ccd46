from .dicom import CineDicomReader, read_cine_dicom, scan_cine_dicom
from .phantom import PhantomStudy, make_phantom_study, write_phantom_studies
from .readers import list_studies, read_info, read_label
from .transforms import UNLABELLED, AsCineStudyd, LoadStudyd, RandHeartCropd, RandTripletd, SaveStudyLabeld, SelectLabelledFramesd, check_outputs

__all__ = [
    "UNLABELLED", "AsCineStudyd", "CineDicomReader", "LoadStudyd", "PhantomStudy", "RandHeartCropd", "RandTripletd", "SaveStudyLabeld", "SelectLabelledFramesd",
    "check_outputs", "list_studies", "make_phantom_study", "read_cine_dicom", "read_info", "read_label",
    "scan_cine_dicom", "write_phantom_studies",
]
