"""Single labelled frames as 2D samples: the initialiser's training and validation data (``train_init.json``)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from .roi import resize_to_spacing
from .transforms import UNLABELLED

logger = logging.getLogger(__name__)


def labelled_frames(
    studies: Sequence[dict[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]], spacing: float
) -> list[dict[str, Any]]:
    """Every fully labelled frame of ``studies`` as a 2D item on square pixels of ``spacing`` mm.

    Args:
        studies: study dicts (:func:`~.splits.load_split`).
        transform: the study loading chain with labels (``train.json``'s ``load_study``: image (1, H, W, Z, T) scaled
            to [0, 1], ``label`` (1, H, W, Z, T) with :data:`~.transforms.UNLABELLED` off the labelled frames).
        spacing: pixel size in mm of the items.
    Returns:
        one dict per frame: ``image`` (1, h, w) float32, ``label`` (1, h, w) uint8, ``study_dir``, ``dataset``,
        ``frame`` (z, t). Frames with any unlabelled pixel (partial labels) are left out: the initialiser learns
        every class on every frame.
    """
    items: list[dict[str, Any]] = []
    for study in studies:
        d = transform(dict(study))
        image, label = torch.as_tensor(d["image"])[0], torch.as_tensor(d["label"])[0]  # (H, W, Z, T)
        labelled = (label != UNLABELLED).all(dim=0).all(dim=0)  # (Z, T)
        frames = labelled.nonzero().tolist()
        if not frames:
            continue
        zs, ts = zip(*frames, strict=True)
        images = image[:, :, zs, ts].permute(2, 0, 1)[:, None]  # (N, 1, H, W)
        labels = label[:, :, zs, ts].permute(2, 0, 1)[:, None]
        spacing_in = tuple(d["image_spacing"].tolist())
        images = resize_to_spacing(images.float(), spacing_in, spacing).clamp(0, 1)
        labels = resize_to_spacing(labels, spacing_in, spacing, mode="nearest")
        for (z, t), img, lab in zip(frames, images, labels, strict=True):
            items.append(
                {
                    "image": img,
                    "label": lab,
                    "study_dir": study["study_dir"],
                    "dataset": study.get("dataset"),
                    "frame": (z, t),
                }
            )
    logger.info(f"{len(items)} labelled frames of {len(studies)} studies at {spacing} mm")
    return items
