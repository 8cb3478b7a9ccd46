"""The initialiser: a 2D segmentation network that makes the first annotated frame of a study without one.

MONAI's ``DynUNet`` (nnU-Net's 2D U-Net), with the record that :func:`~.weights.save_weights` writes beside its
weights (``config``: every argument), so that ``models/init.pt`` rebuilds it (:func:`build_initializer_from_checkpoint`).
It segments whole frames resampled to the pixel size it was trained at (``roi["roi_spacing"]`` of its record).
"""

from __future__ import annotations

import os
from typing import Sequence

from monai.networks.nets import DynUNet

from ..errors import CSTMInputError
from .weights import read_checkpoint

INITIALIZER = "initializer"
"""The ``variant`` that an initialiser's record carries (a CSTM record names a CSTM variant)."""


class InitializerNet(DynUNet):
    """2D ``DynUNet`` (nnU-Net's plain blocks): 3 × 3 kernels, stride 1 then 2 at every further level, instance norm.

    Args:
        num_classes: output channels incl. background (4: background, RV, Myo, LV).
        filters: channels per level; the input side must be a multiple of ``2 ** (len(filters) - 1)``.
    Shapes:
        (B, 1, H, W) intensities in [0, 1] -> (B, num_classes, H, W) logits.
    """

    def __init__(self, num_classes: int = 4, filters: Sequence[int] = (16, 32, 64, 128, 256)):
        if num_classes < 2 or len(filters) < 2:
            raise ValueError(f"need num_classes >= 2 and >= 2 levels, got {num_classes} and filters {list(filters)}.")
        levels = len(filters)
        super().__init__(
            spatial_dims=2,
            in_channels=1,
            out_channels=num_classes,
            kernel_size=[3] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(filters),
            norm_name="instance",
            res_block=False,
        )
        self.num_classes = num_classes
        self.config = dict(num_classes=num_classes, filters=list(filters))
        """Every argument: ``InitializerNet(**config)`` rebuilds the network."""

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.config["filters"]) - 1)


def build_initializer_from_checkpoint(checkpoint: str | os.PathLike) -> InitializerNet:
    """The :class:`InitializerNet` that ``checkpoint`` (``models/init.pt``) records (weights not loaded).

    Raises:
        CSTMInputError: the file is missing, damaged, or not an initialiser's (a CSTM ``model.pt``, a bare state dict).
    """
    state = read_checkpoint(checkpoint)
    if state.get("variant") != INITIALIZER or not isinstance(state.get("network"), dict):
        raise CSTMInputError(
            checkpoint,
            f"records variant {state.get('variant')!r}, not an initialiser",
            "weights saved by train_init.json (models/init.pt)",
        )
    return InitializerNet(**state["network"])
