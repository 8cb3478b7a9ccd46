"""Optional clean-up of a propagated 4D label map, with MONAI's transforms.

- ``largest_component``: per class, keep only the largest 3D connected component of each phase (the slices of one
  phase stacked; MONAI ``KeepLargestConnectedComponent``, full connectivity): removes stray islands far from the heart,
  which dominate HD95.
- ``fill_holes``: per class, fill the holes of each 2D frame (MONAI ``FillHoles`` on the class's binary mask): a
  background pixel enclosed by one class takes that class; pixels of another class are never changed (on a label map,
  ``FillHoles`` would fill the LV blood pool with the myocardium that rings it). Classes are filled from the highest
  label down, so that a hole in the LV blood pool (3), which the myocardial ring (2) also encloses, becomes LV.

Whether each is on by default is decided on the validation split (docs/README.md, "Clean-up").
"""

from __future__ import annotations

import torch
from monai.transforms import FillHoles, KeepLargestConnectedComponent
from torch import Tensor


def clean_up(labels: Tensor, num_classes: int, largest_component: bool = False, fill_holes: bool = False) -> Tensor:
    """Clean a label map of one study.

    Args:
        labels: (Z, T, H, W) integer labels, 0 background.
        num_classes: classes including the background (4: bg, RV, Myo, LV).
        largest_component: keep each class's largest 3D component per phase.
        fill_holes: fill each class's 2D holes per frame.
    Returns:
        the cleaned labels, (Z, T, H, W), same dtype (a new tensor; ``labels`` is not changed).
    """
    if labels.ndim != 4:
        raise ValueError(f"labels must be (Z, T, H, W), got shape {tuple(labels.shape)}.")
    out = labels.clone()
    if not (largest_component or fill_holes):
        return out
    classes = list(range(1, num_classes))
    if largest_component:
        keep_largest = KeepLargestConnectedComponent(applied_labels=classes, is_onehot=False, independent=True)
        for t in range(out.shape[1]):
            out[:, t] = torch.as_tensor(keep_largest(out[None, :, t])[0], dtype=out.dtype)
    if fill_holes:
        fill = FillHoles(connectivity=1)
        for z in range(out.shape[0]):
            for t in range(out.shape[1]):
                frame = out[z, t]
                for c in reversed(classes):
                    filled = torch.as_tensor(fill(frame[None] == c)[0], dtype=torch.bool)
                    frame[filled & (frame == 0)] = c
    return out
