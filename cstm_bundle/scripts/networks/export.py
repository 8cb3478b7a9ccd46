"""One propagation step of CSTM as a single-call module, for ``torch.jit.trace`` (docs/README.md, "TorchScript")."""

from __future__ import annotations

from torch import Tensor, nn

from .cstm import CSTM, Memory


class PropagationStep(nn.Module):
    """Segment query frames from T memory frames (image + class probabilities) in one ``forward`` call.

    This is the call that the 4D inferer makes per frame (paper §3.3: T = 2, or 3 at apex slices), written as one
    tensor-in, tensor-out function so that it can be traced; the inferer itself calls ``encode_key`` /
    ``encode_value`` / ``segment`` so that each frame's features are computed once. A trace is valid only for the
    shapes it was traced with (B, T, H, W are constants of the trace).

    Args:
        network: a :class:`CSTM` (its weights are shared, not copied).
    """

    def __init__(self, network: CSTM):
        super().__init__()
        self.network = network

    def forward(self, query: Tensor, memory_images: Tensor, memory_masks: Tensor) -> Tensor:
        """Read the memory for the query frames and decode their logits.

        Args:
            query: (B, 1, H, W) query frames, H and W multiples of ``network.size_multiple``.
            memory_images: (B, T, H, W) the memory frames' images.
            memory_masks: (B, T, O, H, W) their class probabilities (one-hot for an annotation).
        Returns:
            logits (B, O, H, W).
        Raises:
            ValueError: the memory shapes disagree with the query (the message quotes them).
        """
        b, t, h, w = memory_images.shape
        if memory_masks.shape[:2] != (b, t) or memory_masks.shape[3:] != (h, w) or query.shape[-2:] != (h, w):
            raise ValueError(
                f"expected query (B, 1, H, W), memory_images (B, T, H, W), memory_masks (B, T, O, H, W); "
                f"got {tuple(query.shape)}, {tuple(memory_images.shape)}, {tuple(memory_masks.shape)}."
            )
        images = memory_images.reshape(b * t, 1, h, w)  # all memory frames through each encoder at once
        key = self.network.encode_key(images)
        value = self.network.encode_value(images, memory_masks.flatten(0, 1), key)
        memory = Memory(
            *(
                f.unflatten(0, (b, t)).transpose(1, 2)  # (B, C, T, h, w), as stack_memory
                for f in (key.key16, key.key8, value.value16, value.value8)
            )
        )
        return self.network.segment(self.network.encode_key(query), memory)
