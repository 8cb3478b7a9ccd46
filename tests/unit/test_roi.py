from __future__ import annotations

import pytest
import torch

from scripts.data.roi import Box, crop_resize, foreground_center, heart_box, paste_labels


def test_heart_box_covers_the_roi_in_mm() -> None:
    box = heart_box((50.0, 40.0), (1.8, 1.2), roi_size=192, spacing=0.9)
    assert (box.height, box.width) == (96, 144)  # 172.8 mm / 1.8 mm and / 1.2 mm
    assert (box.top, box.left) == (2, -32)  # centred, may leave the image


def test_foreground_center_and_empty_mask() -> None:
    mask = torch.zeros(10, 20, dtype=torch.uint8)
    assert foreground_center(mask) == (4.5, 9.5)
    mask[2:4, 6:10] = 3
    assert foreground_center(mask) == (2.5, 7.5)


def test_crop_resize_reads_zeros_outside_the_image() -> None:
    x = torch.ones(1, 1, 8, 8)
    out = crop_resize(x, Box(-4, 0, 8, 8), 8, "nearest")
    assert out[0, 0, :4].sum() == 0 and out[0, 0, 4:].eq(1).all()


@pytest.mark.parametrize("box", [Box(10, 12, 40, 40), Box(-10, 30, 60, 60), Box(5, 5, 20, 30)])
def test_paste_labels_round_trip(box: Box) -> None:
    labels = torch.zeros(1, 64, 64, dtype=torch.uint8)
    labels[0, 20:40, 25:45] = 3
    labels[0, 28:32, 30:34] = 1
    roi = crop_resize(labels[:, None], box, 96, "nearest")[:, 0]
    back = paste_labels(roi, box, (64, 64), 4)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[max(box.top, 0): box.top + box.height, max(box.left, 0): box.left + box.width] = True
    assert back[0][~inside].eq(0).all()  # background outside the ROI
    agreement = (back[0][inside] == labels[0][inside]).float().mean()
    assert agreement > 0.98
