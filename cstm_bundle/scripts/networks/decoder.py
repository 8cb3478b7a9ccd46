"""STCN-style mask decoder with readouts at strides 16 and 8 (paper §3.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ResBlock, UpsampleBlock


class Decoder(nn.Module):
    """Three residual layers (the last two upsample ×2) and one 3×3 conv to stride-4 logits, then ×4 bilinear.

    At stride 16 the readout is concatenated with the query's key-encoder features and compressed by a ResBlock; at
    stride 8 the readout (when matched there) is concatenated with the query's stride-8 features as the skip of the first
    up-block; the stride-4 features enter the second up-block as a plain skip (paper §3.4, "scale 2").

    Args:
        feat_channels: key-encoder channels at strides (4, 8, 16).
        readout_channels: C_v at strides (16, 8); 0 where memory is not read at that stride.
        channels: decoder widths after the stride-16, stride-8 and stride-4 layers.
        num_classes: O, output channels (incl. background).
    """

    def __init__(
        self,
        feat_channels: tuple[int, int, int],
        readout_channels: tuple[int, int],
        channels: tuple[int, int, int],
        num_classes: int,
    ):
        super().__init__()
        c4, c8, c16 = feat_channels
        self.compress = ResBlock(c16 + readout_channels[0], channels[0])
        self.up16_8 = UpsampleBlock(c8 + readout_channels[1], channels[0], channels[1])
        self.up8_4 = UpsampleBlock(c4, channels[1], channels[2])
        self.pred = nn.Conv2d(channels[2], num_classes, 3, padding=1)

    def forward(self, feat4: Tensor, feat8: Tensor, feat16: Tensor, readouts: dict[int, Tensor]) -> Tensor:
        """Decode query features and memory readouts.

        Args:
            feat4: (B, C4, H/4, W/4); feat8: (B, C8, H/8, W/8); feat16: (B, C16, H/16, W/16) of the query frame.
            readouts: stride -> (B, C_v, H/stride, W/stride), for strides 16 and/or 8.
        Returns:
            logits (B, O, H, W).
        """
        x16 = torch.cat([feat16, readouts[16]], 1) if 16 in readouts else feat16
        skip8 = torch.cat([feat8, readouts[8]], 1) if 8 in readouts else feat8
        x = self.up8_4(feat4, self.up16_8(skip8, self.compress(x16)))
        logits = self.pred(F.relu(x))  # (B, O, H/4, W/4)
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)  # (B, O, H, W)
