"""Let PyPI's torchvision 0.28 import with the CPU build of torch 2.13 (MONAI Label environment only).

PyPI has no CPU build of torchvision: its Linux wheel's C++ ops (``torchvision/_C.so``) link torch's CUDA libraries,
which the CPU torch wheel lacks, so they do not load. torchvision guards most of its op registrations for that case
but registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` unguarded, so ``import torchvision``
fails with "operator torchvision::nms does not exist". MONAI Label imports it (``monailabel.transform.post`` uses
``torchvision.utils.make_grid``) and so cannot start.

``install_monailabel_env.sh`` installs this module with a ``.pth`` line that imports it at start-up, only when
``import torchvision`` fails that way. It waits for the first ``import torchvision``; if ``_C.so`` cannot be loaded
then, it declares the schemas of those two ops (no kernels: calling them raises), and torchvision imports with its
C++ ops off, as its own guards intend. With a CPU torchvision wheel (the PyTorch CPU wheel index) none of this is
needed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

_library: Any = None  # a torch.library.Library drops its definitions when collected: keep it


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            _declare_ops_without_kernels()
        return None  # the usual finders import it


def _declare_ops_without_kernels() -> None:
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    try:
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
        return  # torchvision's ops load: nothing to do
    except (OSError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


sys.meta_path.insert(0, _TorchvisionHook())
