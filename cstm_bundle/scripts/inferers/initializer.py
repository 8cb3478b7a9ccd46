"""The automatic first frame: a study without annotation gets one from the initialiser (``models/init.pt``).

:class:`FrameInitializer` segments single frames with the 2D :class:`~scripts.networks.InitializerNet` and picks the
anchor (:meth:`FrameInitializer.anchor`):

1. the phase: ``info["ed"]`` where the study gives it, else the phase of the largest LV area that the initialiser
   finds in the middle slice (ED is the phase of the largest LV);
2. the slice: every slice of that phase is segmented; of the slices between the first and the last one holding LV,
   the middle half are candidates (the paper's middle slice, where all three structures are clear), those drawing
   every class found at that phase first; the candidate of highest confidence (mean largest class probability over
   its heart pixels, as the quality report's, :func:`~.propagation.frame_confidence`) is the anchor;
3. its label map: the initialiser's, each class reduced to its largest 2D component (an island would propagate).

:class:`AutoAnchord` puts it into the inference chain after ``LoadStudyd``: for a study without annotation
(``--annotation if_missing``, the default) or for every study (``--annotation auto``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Hashable, Literal, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import KeepLargestConnectedComponent, MapTransform
from torch import Tensor

from ..data.roi import class_argmax, resize_to_spacing
from ..data.study import read_info
from ..errors import CSTMInputError
from ..networks.initializer import InitializerNet, build_initializer_from_checkpoint
from ..networks.weights import read_checkpoint, state_dict_of
from .propagation import frame_confidence

logger = logging.getLogger(__name__)

LV = 3
GENERATED = "generated"
"""``anchor_source`` of a study whose anchor the initialiser made (else the annotation file's name)."""
ANNOTATION_MODES = ("if_missing", "auto", "required")
"""``--annotation``: the initialiser for studies without annotation / for every study / never (no annotation: error)."""


class FrameInitializer:
    """The initialiser network, loaded on first use, and what it does: segment frames, choose an anchor.

    Args:
        checkpoint: ``models/init.pt`` (weights with their record, from ``train_init.json``); None: no initialiser
            (a study that needs one is an error).
        device: where the network runs.
        max_batch: frames per forward pass.
    """

    def __init__(self, checkpoint: str | os.PathLike | None, device: torch.device | str = "cpu", max_batch: int = 16):
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.device = torch.device(device)
        self.max_batch = max_batch
        self._network: InitializerNet | None = None
        self._spacing: float | None = None

    @property
    def available(self) -> bool:
        """Weights exist at :attr:`checkpoint`."""
        return self.checkpoint is not None and self.checkpoint.is_file()

    def network(self) -> tuple[InitializerNet, float]:
        """The network in eval mode and the pixel size (mm) it works at, loaded once.

        Raises:
            CSTMInputError: no checkpoint configured or found, or one that is not an initialiser's.
        """
        if self._network is None:
            if not self.available:
                raise CSTMInputError(
                    self.checkpoint or "--initializer_checkpoint",
                    "no initialiser weights",
                    "models/init.pt (--initializer_checkpoint), or an annotation.nii.gz in the study",
                )
            network = build_initializer_from_checkpoint(self.checkpoint)
            state = read_checkpoint(self.checkpoint)
            network.load_state_dict(state_dict_of(state))
            self._network = network.to(self.device).eval()
            self._spacing = float(state["roi"]["roi_spacing"])
        return self._network, self._spacing

    @torch.no_grad()
    def segment(self, frames: Tensor, spacing: tuple[float, float]) -> Tensor:
        """Class probabilities of single frames, each on its own.

        Args:
            frames: (N, H, W) intensities scaled to [0, 1] (as the inference chain scales the study).
            spacing: (row, column) pixel spacing of the frames in mm.
        Returns:
            (N, O, H, W) float32 probabilities on the frames' grid, on the CPU.
        """
        network, pixel = self.network()
        size = frames.shape[-2:]
        x = resize_to_spacing(frames[:, None].float(), spacing, pixel).clamp(0, 1)  # (N, 1, h, w)
        multiple = network.size_multiple
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % multiple, -w % multiple
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        out = []
        for chunk in x.split(self.max_batch):
            logits = network(chunk.to(self.device)).float()
            logits = logits[..., pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w]
            out.append(F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1).cpu())
        return torch.cat(out)

    def labels(self, frames: Tensor, spacing: tuple[float, float]) -> Tensor:
        """(N, H, W) uint8 label maps of single frames (:meth:`segment`, arg-maxed)."""
        return class_argmax(self.segment(frames, spacing), 1).to(torch.uint8)

    def anchor(self, image: Tensor, spacing: tuple[float, float], ed: int | None = None) -> dict[str, Any]:
        """Choose and label the anchor frame of a study (module docstring).

        Args:
            image: (H, W, Z, T) intensities scaled to [0, 1].
            spacing: (row, column) in-plane spacing in mm.
            ed: the ED phase where the study gives it; None: the phase of the largest LV area in the middle slice.
        Returns:
            ``frame`` (z, t), ``label`` (H, W) uint8, ``confidence`` (float), ``phase_source`` ("info.json" or
            "largest LV area").
        Raises:
            ValueError: the initialiser finds no LV at that phase (no heart to start from).
        """
        num_slices, num_phases = image.shape[2:]
        if ed is None:
            middle = self.labels(image[:, :, num_slices // 2].permute(2, 0, 1), spacing)  # (T, H, W)
            phase, source = int((middle == LV).sum((1, 2)).argmax()), "largest LV area"
        else:
            phase, source = ed, "info.json"
        probs = self.segment(image[:, :, :, phase].permute(2, 0, 1), spacing)  # (Z, O, H, W)
        labels = class_argmax(probs, 1)
        with_lv = [z for z in range(num_slices) if (labels[z] == LV).any()]
        if not with_lv:
            raise ValueError(f"the initialiser finds no LV in any slice of phase {phase}")
        first, last = with_lv[0], with_lv[-1]
        span = last - first
        candidates = [z for z in with_lv if first + span / 4 <= z <= last - span / 4] or with_lv
        found = set(labels[candidates].unique().tolist()) - {0}
        complete = [z for z in candidates if set(labels[z].unique().tolist()) - {0} == found] or candidates
        confidence = frame_confidence(probs[complete, None])[:, 0]  # (len(complete),)
        best = int(confidence.argmax())
        z = complete[best]
        keep = KeepLargestConnectedComponent(applied_labels=sorted(found), is_onehot=False, independent=True)
        label = torch.as_tensor(keep(labels[z][None])[0]).to(torch.uint8)
        return {"frame": (z, phase), "label": label, "confidence": float(confidence[best]), "phase_source": source}


class AutoAnchord(MapTransform):
    """Give a study without annotation (or, with ``annotation="auto"``, every study) the initialiser's anchor.

    Runs after ``LoadStudyd`` and the intensity scaling, on the item's image (1, H, W, Z, T). A study whose
    ``anchor_source`` is None (``LoadStudyd(annotation="if_missing")`` found no annotation; ``"auto"`` reads none)
    gets ``annotation``, ``annotation_slice``, ``annotation_phase``, ``anchor_frames`` (1, 2), ``anchor_labels``
    (1, H, W) as :func:`~scripts.data.transforms.read_annotation` gives them, ``anchor_source`` "generated", and
    ``generated_anchor``: {"z", "t", "confidence", "phase_source", "checkpoint"} (the quality report's ``qc.json``
    repeats it); the log says which frame was chosen and how confident the initialiser was.

    Args:
        keys: the image key.
        initializer: the :class:`FrameInitializer`.
        annotation: :data:`ANNOTATION_MODES`; "required" passes every item through unchanged.
    Raises:
        CSTMInputError: a study needs the initialiser and there are no weights, or it finds no heart.
    """

    def __init__(
        self,
        keys: KeysCollection,
        initializer: FrameInitializer,
        annotation: Literal["if_missing", "auto", "required"] = "if_missing",
    ):
        super().__init__(keys)
        if annotation not in ANNOTATION_MODES:
            raise ValueError(f"annotation must be one of {ANNOTATION_MODES}, got {annotation!r}.")
        self.initializer, self.annotation = initializer, annotation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.annotation == "required" or d.get("anchor_source") is not None:
            return d
        image = torch.as_tensor(d[self.first_key(d)])[0]  # (H, W, Z, T)
        study = Path(d["study_dir"])
        ed = read_info(study).get("ed")
        try:
            anchor = self.initializer.anchor(image, tuple(d["image_spacing"].tolist()), ed)
        except ValueError as e:
            raise CSTMInputError(study, f"has no annotation and {e}", "an annotation.nii.gz of one frame") from e
        z, t = anchor["frame"]
        d.update(
            {
                "annotation": anchor["label"],
                "annotation_slice": z,
                "annotation_phase": t,
                "anchor_frames": torch.tensor([[z, t]], dtype=torch.long),
                "anchor_labels": anchor["label"][None],
                "anchor_source": GENERATED,
                "generated_anchor": {
                    "z": z,
                    "t": t,
                    "confidence": round(anchor["confidence"], 4),
                    "phase_source": anchor["phase_source"],
                    "checkpoint": str(self.initializer.checkpoint),
                },
            }
        )
        logger.info(
            f"{d.get('study', study.name)}: anchor generated by the initialiser: slice {z}, phase {t} ({anchor['phase_source']}), "
            f"confidence {anchor['confidence']:.3f}"
        )
        return d
