from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scripts.data.roi import Box, crop_resize, foreground_center, heart_box, paste_labels
from scripts.inferers import Propagation4DInferer
from scripts.networks import KeyFeatures, Memory, ValueFeatures


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
    inside[max(box.top, 0) : box.top + box.height, max(box.left, 0) : box.left + box.width] = True
    assert back[0][~inside].eq(0).all()  # background outside the ROI
    agreement = (back[0][inside] == labels[0][inside]).float().mean()
    assert agreement > 0.98


INTENSITY = torch.tensor([1 / 3, 0.0, 2 / 3, 1.0])
"""Image intensity of bg, RV, Myo, LV: classes that touch (RV-bg, bg-Myo, Myo-LV) are neighbours in intensity, so an
interpolated boundary pixel reads as one of the two classes it lies between."""


class OracleNetwork(torch.nn.Module):
    """Stands in for CSTM in the 4D inferer: it "predicts" the class whose :data:`INTENSITY` is nearest the query
    image, so whatever the inferer's crop -> predict -> paste path gets wrong (box placement, scale, flips, the
    annotated frame) shows up against the labels the image was made from."""

    num_classes, size_multiple = 4, 48

    def encode_key(self, image: torch.Tensor) -> KeyFeatures:
        return KeyFeatures(image[..., :1, :1], image[..., :1, :1], image, image, image)

    def encode_value(self, image: torch.Tensor, mask: torch.Tensor, key: KeyFeatures) -> ValueFeatures:
        return ValueFeatures(key.key16, key.key8)

    def segment(self, query: KeyFeatures, memory: Memory) -> torch.Tensor:
        classes = (query.feat4[:, 0, ..., None] - INTENSITY).abs().argmin(-1)  # (B, S, S)
        return 10.0 * F.one_hot(classes, 4).movedim(3, 1).float()


@pytest.mark.parametrize(
    "pixel_mm, min_dice",
    [(1.2, 1.0), (1.4, 0.94), (0.6, 0.95)],
    ids=["roi_same_scale", "roi_upsampled", "roi_downsampled"],
)
def test_oracle_through_the_roi_path_recovers_the_labels(pixel_mm: float, min_dice: float) -> None:
    """At the ROI's own scale the path is exact; resampled twice (crop, then paste), the rings of 4-6 pixels keep
    Dice 0.948 (1.4 mm) and 0.958 (0.6 mm) as measured, a misplaced or flipped box would fall far below."""
    h = w = round(140 / pixel_mm)  # 140 mm field of view: the 115 mm ROI lies inside the image
    rows, cols = torch.meshgrid(torch.arange(h) * pixel_mm, torch.arange(w) * pixel_mm, indexing="ij")  # mm
    labels = torch.zeros(h, w, 3, 4, dtype=torch.uint8)  # (H, W, Z, T): the LV shrinks and moves over t
    for t in range(4):
        r = torch.hypot(rows - 70 - 2 * t, cols - 75)
        frame = torch.where(r < 14 - t, 3, torch.where(r < 20 - t, 2, 0))
        frame[(torch.hypot(rows - 70, cols - 47) < 10) & (frame == 0)] = 1
        labels[..., t] = frame[..., None].to(torch.uint8)
    image = INTENSITY[labels.long()]
    inferer = Propagation4DInferer(roi_size=96, spacing=1.2)
    out = inferer(
        image[None, None],
        OracleNetwork(),
        annotation=labels[None, :, :, 1, 0],
        annotation_slice=1,
        annotation_phase=0,
        image_spacing=torch.tensor([[pixel_mm, pixel_mm]]),
    )[0, 0]
    assert out.shape == labels.shape
    for c in (1, 2, 3):
        p, t = out == c, labels == c
        assert 2 * (p & t).sum() / (p.sum() + t.sum()) >= min_dice, c
    assert out[..., 1, 0].equal(labels[..., 1, 0])  # the annotated frame comes back exactly


def test_class_argmax_equals_torch_argmax_ties_included():
    from scripts.data.roi import class_argmax

    torch.manual_seed(0)
    probs = torch.rand(3, 4, 9, 9).round(decimals=1)  # many ties
    for dim in (0, 1, -3):
        assert torch.equal(class_argmax(probs, dim), probs.argmax(dim))


def _disc(center: tuple[int, int], radius: int, size: int = 96) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((rows - center[0]) ** 2 + (cols - center[1]) ** 2) <= radius**2).to(torch.uint8) * 3


def test_anchor_box_of_one_anchor_is_the_single_anchor_roi() -> None:
    from scripts.data.roi import anchor_box

    lab = _disc((40, 52), 9)
    for frame in [(0, 0), (4, 7), (9, 3)]:
        assert anchor_box({frame: lab}, 10, (1.5, 1.2), 96, 1.2) == heart_box(
            foreground_center(lab), (1.5, 1.2), 96, 1.2
        )
    empty = torch.zeros(96, 96, dtype=torch.uint8)
    assert anchor_box({(2, 2): empty}, 10, (1.0, 1.0), 48, 1.0) == heart_box((47.5, 47.5), (1.0, 1.0), 48, 1.0)


def test_anchor_box_is_order_free_and_an_added_frame_inside_does_not_move_it() -> None:
    """Issue 31 item 5: the ROI followed the primary frame, which an added frame can become."""
    from scripts.data.roi import anchor_box

    ed_mid, ed_base, es_mid, ed_apex = _disc((40, 50), 12), _disc((44, 46), 14), _disc((41, 49), 8), _disc((36, 55), 5)
    base = anchor_box({(5, 0): ed_mid}, 10, (1.5, 1.5), 64, 1.5)
    added = {(5, 0): ed_mid, (1, 0): ed_base, (5, 9): es_mid, (8, 0): ed_apex}
    for order in (list(added), list(reversed(added)), sorted(added)):
        assert anchor_box({f: added[f] for f in order}, 10, (1.5, 1.5), 64, 1.5) == base
    # a frame on a slice nearer the middle (Z // 2 = 5) at the same phase, or at an earlier phase, is the seed
    assert anchor_box({(5, 3): ed_mid, (4, 0): ed_base}, 10, (1.5, 1.5), 64, 1.5) == heart_box(
        foreground_center(ed_base), (1.5, 1.5), 64, 1.5
    )
    # labels reaching outside the seed's ROI: centred on all anchors' labels together
    far = _disc((10, 90), 4)
    box = anchor_box({(5, 0): ed_mid, (6, 0): far}, 10, (1.5, 1.5), 32, 1.5)
    assert box == heart_box(foreground_center((ed_mid > 0) | (far > 0)), (1.5, 1.5), 32, 1.5) and box != heart_box(
        foreground_center(ed_mid), (1.5, 1.5), 32, 1.5
    )
