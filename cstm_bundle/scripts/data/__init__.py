from .batch import StudyBatch, check_study
from .dicom import CineDicomReader, read_cine_dicom, scan_cine_dicom
from .dicom_seg import SaveDicomSegd, cine_segmentation
from .frames import labelled_frames
from .label_app import AnnotationChanneld, CineSliceLabeld
from .layouts import LAYOUTS, convert_layout, prepare_dataset, read_acdc_cfg
from .outputs import MANIFEST_FILE, result_settings
from .phantom import PhantomStudy, make_phantom_study, write_phantom_studies
from .readers import list_studies, read_label, skipped_folders
from .spikes import SuppressKSpaceSpikesd, suppress_kspace_spikes
from .splits import load_split, make_split, mix_datalists, sample_weights
from .study import read_info, slice_classes
from .transforms import (
    UNLABELLED,
    AsCineStudyd,
    LoadStudyd,
    RandFrameJitterd,
    RandHeartCropd,
    RandTripletd,
    SaveStudyLabeld,
    SelectLabelledFramesd,
    check_outputs,
)

__all__ = [
    "UNLABELLED",
    "LAYOUTS",
    "MANIFEST_FILE",
    "AnnotationChanneld",
    "AsCineStudyd",
    "CineSliceLabeld",
    "CineDicomReader",
    "LoadStudyd",
    "PhantomStudy",
    "RandFrameJitterd",
    "RandHeartCropd",
    "RandTripletd",
    "SaveDicomSegd",
    "SaveStudyLabeld",
    "SelectLabelledFramesd",
    "StudyBatch",
    "SuppressKSpaceSpikesd",
    "check_outputs",
    "check_study",
    "cine_segmentation",
    "convert_layout",
    "labelled_frames",
    "list_studies",
    "load_split",
    "make_phantom_study",
    "make_split",
    "mix_datalists",
    "prepare_dataset",
    "read_acdc_cfg",
    "read_cine_dicom",
    "read_info",
    "result_settings",
    "read_label",
    "sample_weights",
    "suppress_kspace_spikes",
    "scan_cine_dicom",
    "skipped_folders",
    "slice_classes",
    "write_phantom_studies",
]
