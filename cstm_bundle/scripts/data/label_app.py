"""MONAI Label's entry: the transforms of ``inference.json``'s ``pre_transforms`` and ``post_transforms``.

MONAI Label's ``BundleInferTask`` (monailabel 0.8.5) reads the first of these keys it finds in this order, the later
one winning: ``preprocessing`` then ``pre_transforms``, ``postprocessing`` then ``post_transforms``. The bundle's own
``preprocessing``/``postprocessing`` read and write study folders; ``pre_transforms``/``post_transforms`` are the chain
for MONAI Label's request instead: ``{"image": <cine slice (H, W, T)>, "label": <annotation file>, ...}`` in, a label
map on the image's (H, W, T) grid out (MONAI Label then writes it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from ..errors import CSTMInputError
from .readers import LABEL_VALUES


def _source(d: Mapping[Hashable, Any], key: Hashable) -> str:
    x = d[key]
    return str(getattr(x, "meta", {}).get("filename_or_obj") or d.get("image_path") or key)


class AnnotationChanneld(MapTransform):
    """Add the annotated frame, from the file named by the request's ``annotation_key`` ("label": MONAI Label's
    uploaded label file, or the path given in the request), as a second channel of the image, as
    :class:`~scripts.inferers.Propagation4DInferer` reads it without annotation arguments.

    Args:
        keys: the image key; the image a cine slice (1, H, W, T) after ``LoadImaged`` + ``EnsureChannelFirstd``.
        annotation_key: the item holding the annotation's path: labels 0-3 on the image's (H, W, T) grid, 0 except on
            the annotated phases; every labelled phase is an anchor (a correction sent back with the earlier ones).
    Returns:
        the image as (2, H, W, T): intensities, then annotation labels.
    Raises:
        CSTMInputError: no annotation in the request, an unreadable one, a 4D image (MONAI Label handles 2D/3D
            images: run studies with ``monai.bundle run inference``), another grid or affine, values outside 0-3, or
            no labelled pixel.
    """

    def __init__(self, keys: KeysCollection = "image", annotation_key: str = "label"):
        super().__init__(keys)
        self.annotation_key = annotation_key
        self.loader = LoadImage(image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, source = d[key], _source(d, key)
            if image.ndim != 4:
                raise CSTMInputError(
                    source,
                    f"image has shape {tuple(image.shape[1:])}",
                    "a single-slice cine (H, W, T) from MONAI Label (run 4D studies with "
                    "'monai.bundle run inference')",
                )
            path = d.get(self.annotation_key)
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise CSTMInputError(
                    source,
                    f"the request has no annotation ({self.annotation_key!r})",
                    f"the annotated frame as a label file on the image grid in "
                    f"{self.annotation_key!r} (upload it as the request's label)",
                )
            if not Path(path).is_file():
                raise CSTMInputError(path, "annotation file not found", "a label file on the image grid")
            try:
                label = self.loader(str(path))
            except Exception as e:  # MONAI's readers raise many types for unreadable files
                raise CSTMInputError(
                    path, f"annotation cannot be read ({type(e).__name__})", "a NIfTI label file on the image grid"
                ) from e
            if tuple(label.shape) != tuple(image.shape[1:]):
                raise CSTMInputError(
                    path, f"annotation has shape {tuple(label.shape)}", f"the image grid {tuple(image.shape[1:])}"
                )
            if isinstance(image, MetaTensor) and not np.allclose(label.affine.numpy(), image.affine.numpy(), atol=1e-3):
                raise CSTMInputError(path, "annotation affine differs from the image affine", "the image's grid")
            values = np.unique(label.numpy())  # float32 as MONAI loads it
            if not np.isin(values, LABEL_VALUES).all():
                shown = [int(v) if float(v).is_integer() else float(v) for v in values]
                raise CSTMInputError(
                    path, f"annotation values {shown} outside {list(LABEL_VALUES)}", "0 background, 1 RV, 2 Myo, 3 LV"
                )
            if not (values > 0).any():
                raise CSTMInputError(
                    path, "annotation is empty (no labelled pixel)", "labels 1-3 on one or more phases"
                )
            d[key] = torch.cat([image, label.as_tensor()[None].to(image.dtype)])  # keeps the image's meta
        return d


class CineSliceLabeld(MapTransform):
    """The inverse of :class:`~scripts.data.AsCineStudyd` for the label map: (1, H, W, 1, T) of a single-slice cine
    back to (1, H, W, T), the grid of the image MONAI Label sent (it writes the map with the image's affine)."""

    def __init__(self, keys: KeysCollection = "pred"):
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim != 5 or x.shape[3] != 1:
                raise ValueError(
                    f"expected the label map of a single-slice cine, (1, H, W, 1, T), " f"got {tuple(x.shape)}."
                )
            d[key] = x[:, :, :, 0]
        return d
