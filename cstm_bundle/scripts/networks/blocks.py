"""Small convolutional blocks shared by the encoders and the decoder (STCN's ResBlock / UpsampleBlock)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (pre-activation, as STCN); 1×1 projection when channels change.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return r + (x if self.skip is None else self.skip(x))


class UpsampleBlock(nn.Module):
    """×2 bilinear upsampling of the coarse path, plus a projected skip feature, then a ResBlock (STCN decoder).

    Args:
        skip_channels: channels of the finer skip feature.
        up_channels: channels of the coarse input.
        out_channels: output channels.
    """

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        """skip (B, C_skip, 2H, 2W), up (B, C_up, H, W) -> (B, C_out, 2H, 2W)."""
        x = self.skip_conv(skip) + F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out_conv(x)


class FeatureFusionBlock(nn.Module):
    """Fuses value-encoder features with the key encoder's features of the same frame (STCN), two ResBlocks.

    Args:
        in_channels: value-encoder channels + key-encoder channels.
        out_channels: C_v.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block1 = ResBlock(in_channels, out_channels)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_v, H, W)."""
        return self.block2(self.block1(x))
