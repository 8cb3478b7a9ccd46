"""ResNet feature extractors without conv5 (paper §3.4): strides 4, 8 and 16, built from MONAI's ResNet."""

from __future__ import annotations

from typing import Literal, NamedTuple

from monai.networks.nets import ResNet
from torch import Tensor, nn

GROUPS = 8
"""GroupNorm groups of the "group" encoders (Wu & He 2018 use 32 with 64+ channels; the CPU widths start at 16)."""
NORMS = {"group": ("group", {"num_groups": GROUPS}), "frozen_batch": "batch"}
"""``norm`` of :class:`ResNetEncoder` -> MONAI's ``norm`` argument."""


def _batch_to_group_norm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` by a GroupNorm of :data:`GROUPS` groups (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(GROUPS, child.num_features))
        else:
            _batch_to_group_norm(child)


class ResNetFeatures(NamedTuple):
    """Features of one ResNet pass: ``feat4`` (B, C4, H/4, W/4), ``feat8`` (B, C8, H/8, W/8), ``feat16`` (B, C16, H/16, W/16)."""

    feat4: Tensor
    feat8: Tensor
    feat16: Tensor | None


class ResNetEncoder(nn.Module):
    """MONAI ``ResNet`` (2D) truncated after ``layer3`` (conv4_x): the classification head and conv5_x are removed.

    Paper §3.4: key encoder ResNet-50 (``block="bottleneck"``, ``layers=(3, 4, 6)``, widths (64, 128, 256)),
    value encoder ResNet-18 (``block="basic"``, ``layers=(2, 2, 2)``, same widths). Smaller widths and depths give the
    CPU variants.

    Args:
        in_channels: input channels (1 for the key encoder, 1 + O for the value encoder).
        block: residual block type.
        layers: blocks in conv2_x, conv3_x, conv4_x.
        widths: base widths of conv2_x, conv3_x, conv4_x (bottleneck blocks output 4× these).
        with_stride16: build conv4_x; without it ``feat16`` is None (a value encoder that only stride 8 reads).
        norm: "group" (GroupNorm, :data:`GROUPS` groups: normalises from the first iteration, whatever the batch) or
            "frozen_batch" (BatchNorm kept in eval mode, as STCN with ImageNet weights; trained from scratch its
            statistics stay 0 / 1 and it is only an affine map: the 0.4 weights).
    """

    def __init__(
        self,
        in_channels: int,
        block: Literal["basic", "bottleneck"] = "bottleneck",
        layers: tuple[int, int, int] = (3, 4, 6),
        widths: tuple[int, int, int] = (64, 128, 256),
        with_stride16: bool = True,
        norm: Literal["group", "frozen_batch"] = "group",
    ):
        super().__init__()
        if len(layers) != 3 or len(widths) != 3:
            raise ValueError(f"layers and widths need 3 entries (conv2_x..conv4_x), got {layers} and {widths}.")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}.")
        if norm == "group" and any(w % GROUPS for w in widths):
            raise ValueError(f"GroupNorm with {GROUPS} groups needs widths divisible by {GROUPS}, got {widths}.")
        resnet = ResNet(
            block=block,
            layers=[*layers, 1],
            block_inplanes=[*widths, widths[-1]],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            feed_forward=False,
            norm=NORMS[norm],
        )
        if norm == "group":  # MONAI's ResNet blocks build BatchNorm whatever ``norm`` says (stem only): replace them
            _batch_to_group_norm(resnet)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act, resnet.maxpool)  # stride 4
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3 = resnet.layer3 if with_stride16 else None
        expansion = 4 if block == "bottleneck" else 1
        self.channels = tuple(w * expansion for w in widths)

    def forward(self, x: Tensor) -> ResNetFeatures:
        """(B, C_in, H, W), H and W multiples of 16 -> :class:`ResNetFeatures`."""
        feat4 = self.layer1(self.stem(x))
        feat8 = self.layer2(feat4)
        return ResNetFeatures(feat4, feat8, None if self.layer3 is None else self.layer3(feat8))

    def train(self, mode: bool = True) -> ResNetEncoder:
        """Switch the mode but keep every BatchNorm in eval mode (frozen statistics, as STCN); GroupNorm has none."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self
