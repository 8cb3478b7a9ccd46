"""The CSTM network (paper §3): key encoder, value encoder, multi-scale memory matching and decoder."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from .blocks import FeatureFusionBlock
from .decoder import Decoder
from .encoders import ResNetEncoder
from .matching import PatchMemoryMatcher


class KeyFeatures(NamedTuple):
    """Key-encoder output of B frames: keys ``key16`` (B, C_k, H/16, W/16), ``key8`` (B, C_k, H/8, W/8) and the
    encoder features ``feat16``, ``feat8``, ``feat4`` that feed the decoder and the value encoder."""

    key16: Tensor
    key8: Tensor
    feat16: Tensor
    feat8: Tensor
    feat4: Tensor


class ValueFeatures(NamedTuple):
    """Value-encoder output of B frames: ``value16`` (B, C_v16, H/16, W/16) and ``value8`` (B, C_v8, H/8, W/8)."""

    value16: Tensor
    value8: Tensor


class Memory(NamedTuple):
    """T memory frames stacked on dim 2: keys (B, C_k, T, h, w) and values (B, C_v, T, h, w) at strides 16 and 8."""

    key16: Tensor
    key8: Tensor
    value16: Tensor
    value8: Tensor


class CSTM(nn.Module):
    """Continuous Spatio-Temporal Memory network (paper §3, STCN lineage).

    The value encoder encodes all classes at once: its input is the image plus the O class probability maps (one-hot
    for an annotation), so each memory frame costs one value pass instead of STCN's one pass per object, and the decoder
    predicts O-class logits directly (a softmax over {bg, RV, Myo, LV}). Defaults are the paper's full variant
    (§3.4: ResNet-50 key encoder, ResNet-18 value encoder, C_k = 32, C_v = 512 / 256, P = 6, K = 4).

    Args:
        num_classes: O, classes including background.
        key_block, key_layers, key_widths: key encoder (ResNet without conv5).
        value_block, value_layers, value_widths: value encoder (ResNet without conv5).
        key_channels: C_k at both strides.
        value_channels: C_v at strides (16, 8).
        decoder_channels: decoder widths at strides 16, 8, 4.
        matching_mode: "plm" or "dense".
        patch_size: P at stride 16 (2P at stride 8).
        top_k: K memory patches per query patch.
        matching_strides: strides at which memory is read, a subset of (16, 8).
        encoder_norm: normalisation of both encoders, "group" or "frozen_batch" (:class:`~.encoders.ResNetEncoder`);
            the paper's frozen BatchNorm presumes ImageNet weights, which this bundle does not have.
    """

    def __init__(
        self,
        num_classes: int = 4,
        key_block: Literal["basic", "bottleneck"] = "bottleneck",
        key_layers: tuple[int, int, int] = (3, 4, 6),
        key_widths: tuple[int, int, int] = (64, 128, 256),
        value_block: Literal["basic", "bottleneck"] = "basic",
        value_layers: tuple[int, int, int] = (2, 2, 2),
        value_widths: tuple[int, int, int] = (64, 128, 256),
        key_channels: int = 32,
        value_channels: tuple[int, int] = (512, 256),
        decoder_channels: tuple[int, int, int] = (512, 256, 256),
        matching_mode: Literal["plm", "dense"] = "plm",
        patch_size: int = 6,
        top_k: int = 4,
        matching_strides: tuple[int, ...] = (16, 8),
        encoder_norm: Literal["group", "frozen_batch"] = "group",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}.")
        self.num_classes = num_classes
        self.config = dict(
            num_classes=num_classes,
            key_block=key_block,
            key_layers=list(key_layers),
            key_widths=list(key_widths),
            value_block=value_block,
            value_layers=list(value_layers),
            value_widths=list(value_widths),
            key_channels=key_channels,
            value_channels=list(value_channels),
            decoder_channels=list(decoder_channels),
            matching_mode=matching_mode,
            patch_size=patch_size,
            top_k=top_k,
            matching_strides=list(matching_strides),
            encoder_norm=encoder_norm,
        )
        """Every argument, as :func:`~.weights.save_weights` records it: ``CSTM(**config)`` rebuilds the network."""
        self.matcher = PatchMemoryMatcher(matching_mode, patch_size, top_k, tuple(matching_strides))
        use16, use8 = 16 in self.matcher.strides, 8 in self.matcher.strides
        # only the modules that the read strides use: DDP (find_unused_parameters=False) needs a gradient for each
        self.key_encoder = ResNetEncoder(1, key_block, tuple(key_layers), tuple(key_widths), norm=encoder_norm)
        self.value_encoder = ResNetEncoder(
            1 + num_classes,
            value_block,
            tuple(value_layers),
            tuple(value_widths),
            with_stride16=use16,
            norm=encoder_norm,
        )
        kc4, kc8, kc16 = self.key_encoder.channels
        _, vc8, vc16 = self.value_encoder.channels
        self.key_proj16 = nn.Conv2d(kc16, key_channels, 3, padding=1) if use16 else None
        self.key_proj8 = nn.Conv2d(kc8, key_channels, 3, padding=1) if use8 else None
        self.value_fuse16 = FeatureFusionBlock(vc16 + kc16, value_channels[0]) if use16 else None
        self.value_fuse8 = FeatureFusionBlock(vc8 + kc8, value_channels[1]) if use8 else None
        readout_channels = (value_channels[0] if use16 else 0, value_channels[1] if use8 else 0)
        self.decoder = Decoder((kc4, kc8, kc16), readout_channels, tuple(decoder_channels), num_classes)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (48 for the paper's P = 6)."""
        return self.matcher.size_multiple

    def _check_image(self, image: Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"expected image (B, 1, H, W), got {tuple(image.shape)}.")
        m, smallest = self.size_multiple, self.matcher.min_size
        if any(s % m or s < smallest for s in image.shape[-2:]):
            raise ValueError(
                f"image size {tuple(image.shape[-2:])} must be multiples of {m} and at least {smallest}; "
                "pad it first."
            )

    def encode_key(self, image: Tensor) -> KeyFeatures:
        """Key encoder (Siamese: shared by query and memory frames).

        Args:
            image: (B, 1, H, W), H and W multiples of :attr:`size_multiple`.
        """
        self._check_image(image)
        feat = self.key_encoder(image)
        return KeyFeatures(
            _project(self.key_proj16, feat.feat16),
            _project(self.key_proj8, feat.feat8),
            feat.feat16,
            feat.feat8,
            feat.feat4,
        )

    def encode_value(self, image: Tensor, mask: Tensor, key: KeyFeatures) -> ValueFeatures:
        """Value encoder on image + class probabilities, fused with the frame's key-encoder features (STCN).

        Args:
            image: (B, 1, H, W).
            mask: (B, O, H, W) class probabilities (one-hot for an annotation).
            key: the same frames' :class:`KeyFeatures`.
        """
        if mask.shape != (image.shape[0], self.num_classes, *image.shape[2:]):
            raise ValueError(
                f"expected mask (B, {self.num_classes}, H, W) for image {tuple(image.shape)}, "
                f"got {tuple(mask.shape)}."
            )
        feat = self.value_encoder(torch.cat([image, mask.to(image.dtype)], 1))
        return ValueFeatures(
            _fuse(self.value_fuse16, feat.feat16, key.feat16), _fuse(self.value_fuse8, feat.feat8, key.feat8)
        )

    def segment(self, query: KeyFeatures, memory: Memory) -> Tensor:
        """Read the memory for the query frames and decode their logits.

        Args:
            query: :class:`KeyFeatures` of B query frames.
            memory: :class:`Memory` of T frames per query.
        Returns:
            logits (B, O, H, W).
        """
        readouts = self.matcher(
            {16: query.key16, 8: query.key8}, {16: memory.key16, 8: memory.key8}, {16: memory.value16, 8: memory.value8}
        )
        return self.decoder(query.feat4, query.feat8, query.feat16, readouts)

    def forward(self, x: Tensor) -> Tensor:
        """Self-readout of annotated frames: each frame is its own one-frame memory (used by ``verify_net_in_out``).

        Args:
            x: (B, 1 + O, H, W): the image and its O class probability maps.
        Returns:
            logits (B, O, H, W).
        """
        image, mask = x[:, :1], x[:, 1:]
        key = self.encode_key(image)
        value = self.encode_value(image, mask, key)
        return self.segment(key, stack_memory([key], [value]))


def _project(conv: nn.Module | None, feat: Tensor) -> Tensor:
    """A key projection, or (B, 0, h, w) at a stride that is not read (the matcher skips it)."""
    return feat[:, :0] if conv is None else conv(feat)


def _fuse(block: nn.Module | None, value_feat: Tensor | None, key_feat: Tensor) -> Tensor:
    """Value features fused with the key encoder's (STCN), or (B, 0, h, w) at a stride that is not read."""
    return key_feat[:, :0] if block is None else block(torch.cat([value_feat, key_feat], 1))


def stack_memory(keys: list[KeyFeatures], values: list[ValueFeatures]) -> Memory:
    """Stack T frames' keys and values into a :class:`Memory` (frames on dim 2)."""
    return Memory(
        torch.stack([k.key16 for k in keys], 2),
        torch.stack([k.key8 for k in keys], 2),
        torch.stack([v.value16 for v in values], 2),
        torch.stack([v.value8 for v in values], 2),
    )


VARIANTS: dict[str, dict] = {
    "full": {},  # the paper's (§3.4): the constructor defaults
    "small": {  # narrow encoders for CPU training and the shipped demo weights
        "key_block": "basic",
        "key_layers": (1, 1, 1),
        "key_widths": (32, 64, 128),
        "value_block": "basic",
        "value_layers": (1, 1, 1),
        "value_widths": (16, 32, 64),
        "value_channels": (128, 64),
        "decoder_channels": (128, 64, 64),
    },
}


def build_cstm(variant: Literal["full", "small"] = "full", **kwargs) -> CSTM:
    """A :class:`CSTM` of a named size: "full" (paper, 46 M parameters) or "small" (2.1 M, CPU).

    Args:
        variant: a key of :data:`VARIANTS`.
        kwargs: further :class:`CSTM` arguments (num_classes, matching options); they override the variant's.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CSTM variant {variant!r}; expected one of {sorted(VARIANTS)}.")
    return CSTM(**{**VARIANTS[variant], **kwargs})
