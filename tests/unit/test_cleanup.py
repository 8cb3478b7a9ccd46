"""The optional clean-up of a propagated label map (largest 3D component per class and phase, 2D hole filling)."""

import torch

from scripts.inferers import clean_up


def _ring_study() -> torch.Tensor:
    """(Z, T, H, W) = (3, 2, 24, 24): an LV (3) in a myocardial ring (2), an RV (1) beside it, on every frame."""
    labels = torch.zeros(3, 2, 24, 24, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    r2 = (yy - 12) ** 2 + (xx - 10) ** 2
    labels[:, :, r2 < 36] = 2
    labels[:, :, r2 < 16] = 3
    labels[:, :, 8:16, 17:21] = 1
    return labels


def test_largest_component_removes_islands_of_each_class_per_phase():
    labels = _ring_study()
    noisy = labels.clone()
    noisy[1, 0, 0:2, 0:2] = 3  # a stray LV island, one frame
    noisy[2, 1, 22:24, 22:24] = 1  # a stray RV island, the other phase
    cleaned = clean_up(noisy, 4, largest_component=True)
    assert torch.equal(cleaned, labels)
    assert noisy[1, 0, 0, 0] == 3  # the input is not changed


def test_largest_component_is_3d_per_phase():
    labels = _ring_study()
    labels[0:2, 0, 20:23, 2:5] = 1  # an RV piece over two slices: 18 px against the main RV's 3 x 32
    cleaned = clean_up(labels, 4, largest_component=True)
    assert (cleaned[:2, 0, 20:23, 2:5] == 0).all()
    bridge = _ring_study()
    bridge[:, 0, 16:19, 17:21] = 1  # the RV grown downwards at t = 0: one component
    assert torch.equal(clean_up(bridge, 4, largest_component=True), bridge)


def test_fill_holes_fills_background_enclosed_by_one_class_but_not_the_lv_in_the_ring():
    labels = _ring_study()
    holed = labels.clone()
    holed[0, 1, 11:13, 9:11] = 0  # a hole in the LV blood pool
    holed[2, 0, 10:12, 18:20] = 0  # a hole in the RV
    cleaned = clean_up(holed, 4, fill_holes=True)
    assert torch.equal(cleaned, labels)
    assert (clean_up(labels, 4, fill_holes=True) == labels).all()


def test_no_clean_up_returns_an_equal_copy():
    labels = _ring_study()
    labels[0, 0, 0, 0] = 3
    out = clean_up(labels, 4)
    assert torch.equal(out, labels) and out is not labels
