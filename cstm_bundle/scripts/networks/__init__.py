"""CSTM network (paper §3): key/value encoders, patch-level memory matching, decoder.

Shape legend used in every docstring of this package:
    B  batch (query frames processed together)        O  classes incl. background (4: bg, RV, Myo, LV)
    T  memory frames                                   Z  slices of a study
    H, W  spatial size at the stride in question       N  patches of a feature map (PLMM)
    P  patch side                                      K  top-k memory patches kept per query patch
    C_k, C_v  key / value channels
Paper "scale 4" is stride 16 and "scale 3" is stride 8; names here carry the stride (``key16``, ``value8``).
"""

from .cstm import CSTM, VARIANTS, KeyFeatures, Memory, ValueFeatures, build_cstm, stack_memory
from .export import PropagationStep
from .initializer import INITIALIZER, InitializerNet, build_initializer_from_checkpoint
from .matching import PatchMemoryMatcher, dense_readout, plm_readout
from .weights import (
    build_cstm_from_checkpoint,
    check_recorded_network,
    read_checkpoint,
    recorded_roi,
    save_weights,
    state_dict_of,
    weights_record,
)

__all__ = [
    "CSTM",
    "INITIALIZER",
    "InitializerNet",
    "VARIANTS",
    "KeyFeatures",
    "Memory",
    "PatchMemoryMatcher",
    "PropagationStep",
    "ValueFeatures",
    "build_cstm",
    "build_cstm_from_checkpoint",
    "build_initializer_from_checkpoint",
    "check_recorded_network",
    "dense_readout",
    "plm_readout",
    "read_checkpoint",
    "recorded_roi",
    "save_weights",
    "stack_memory",
    "state_dict_of",
    "weights_record",
]
