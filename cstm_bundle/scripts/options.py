"""Typed config options.

``python -m monai.bundle run`` hands ``--overwrite false`` to the config as the *string* ``'false'`` (fire parses
Python literals only: ``False`` is a bool, ``false`` a string), and a non-empty string is true. Every config therefore
routes the options a user types through one ``options`` component, :func:`typed_options`, that converts the spellings
users type and refuses anything else with one line naming the option; the components read ``$@options.<name>``.

Spellings accepted: booleans ``true``/``false`` in any case, ``1``/``0``, ``yes``/``no``, ``on``/``off``; integers as
``5`` or ``'5'``; floats as ``0.5``, ``'0.5'`` or ``'1e-4'``; ``null``/``none`` where an option may be unset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .errors import CSTMInputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"null", "none", ""}


@dataclass(frozen=True)
class Option:
    """How one option is typed.

    Args:
        kind: "bool", "int", "float", "choice", "strides" (a non-empty subset of (16, 8)) or "path" (a string).
        low, high: inclusive bounds of an int or float.
        choices: the values of a "choice".
        optional: None (``null``) is allowed.
        positive: a float must be above ``low`` rather than at least ``low``.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    positive: bool = False

    def expected(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "strides":
            text = "a list of strides from [16, 8], e.g. [16, 8] or [16]"
        elif self.kind == "path":
            text = "a folder path"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                text += f" in [{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text += f" {'>' if self.positive else '>='} {self.low:g}"
        return text + (" (or null)" if self.optional else "")


_BOOL = Option("bool")


def _int(low: int, optional: bool = False) -> Option:
    return Option("int", low=low, optional=optional)


OPTIONS: dict[str, Option] = {
    # inference / evaluation
    "overwrite": _BOOL,
    "amp": _BOOL,
    "progress": _BOOL,
    "debug": _BOOL,
    "clinical_outputs": _BOOL,
    "clinical_pictures": _BOOL,
    "clinical_phases": Option("choice", choices=("info", "volume")),
    "dicom_seg": _BOOL,
    "quality_report": _BOOL,
    "demo_studies": _int(1),
    "demo_seed": _int(0),
    "max_batch": _int(1),
    "on_error": Option("choice", choices=("continue", "stop")),
    "skip_done": _BOOL,
    "annotation": Option("choice", choices=("if_missing", "auto", "required")),
    "initializer_checkpoint": Option("path", optional=True),
    # network and propagation
    "variant": Option("choice", choices=("small", "full"), optional=True),
    "matching_mode": Option("choice", choices=("plm", "dense"), optional=True),
    "patch_size": _int(1, optional=True),
    "top_k": _int(1, optional=True),
    "num_classes": _int(2, optional=True),
    "matching_strides": Option("strides", optional=True),
    "continuity": Option("choice", choices=("both", "spatial", "temporal")),
    "time_memory_size": _int(1),
    "slice_memory_size": _int(1),
    "anchor_memory": _int(0),
    "reference_anchors": Option("int", low=1, high=3),
    "skip_reference_anchors": Option("int", low=1, high=3, optional=True),
    "largest_component": _BOOL,
    "fill_holes": _BOOL,
    "suppress_spikes": _BOOL,
    "time_direction": Option("choice", choices=("forward", "both")),
    "cache_dir": Option("path", optional=True),
    "cache_max_gb": Option("float", low=0, positive=True, optional=True),
    "roi_size": _int(48, optional=True),
    "roi_spacing": Option("float", low=0, positive=True, optional=True),
    # training
    "resume": _BOOL,
    "max_epochs": _int(1),
    "val_interval": _int(1),
    "num_val": _int(1),
    "batch_size": _int(1),
    "samples_per_study": _int(1),
    "num_workers": _int(0),
    "early_stop_patience": _int(0),
    "max_slice_distance": _int(1),
    "learning_rate": Option("float", low=0, positive=True),
    "grad_clip_norm": Option("float", low=0, positive=True, optional=True),
    "partial_margin_mm": Option("float", low=0),
    "flip_prob": Option("float", low=0, high=1),
    "elastic_prob": Option("float", low=0, high=1),
    "static_prob": Option("float", low=0, high=1),
    "frame_jitter_prob": Option("float", low=0, high=1),
    "annotated_memory_prob": Option("float", low=0, high=1),
    "mixed_prob": Option("float", low=0, high=1),
    "edge_prob": Option("float", low=0, high=1),
    "es_prob": Option("float", low=0, high=1),
    "contraction_power": Option("float", low=0, high=4),
    "encoder_norm": Option("choice", choices=("group", "frozen_batch")),
    "dataset_weight": Option("float", low=0, positive=True),
    "dataset_layout": Option("choice", choices=("study", "acdc", "mnms", "datalist")),
    "crop_size": _int(16),
    "samples_per_frame": _int(1),
    "pixel_spacing": Option("float", low=0, positive=True),
}
"""The typed options of every config, by config id."""


def typed_options(**values: Any) -> SimpleNamespace:
    """Convert and check the options of a config (each keyword is a config id of :data:`OPTIONS`).

    Returns:
        a namespace of the converted values (``@options.overwrite`` is a ``bool``).
    Raises:
        CSTMInputError: ``--name: got 'maybe'; expected true or false.`` for the first bad option.
        KeyError: a keyword that :data:`OPTIONS` does not type (a config bug, not a user error).
    """
    return SimpleNamespace(**{name: convert(name, value) for name, value in values.items()})


def convert(name: str, value: Any) -> Any:
    """One option's value, converted as :data:`OPTIONS` types ``name``; see :func:`typed_options`."""
    option = OPTIONS[name]
    text = value.strip().lower() if isinstance(value, str) else None
    if option.optional and (value is None or text in _NONE):
        return None
    try:
        if option.kind == "bool":
            return _to_bool(value, text)
        if option.kind == "choice":
            if text in option.choices:
                return text
            raise ValueError
        if option.kind == "strides":
            return _to_strides(value)
        if option.kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise ValueError
            return str(value)
        number = _to_int(value, text) if option.kind == "int" else _to_float(value, text)
        if option.low is not None and (number < option.low or (option.positive and number == option.low)):
            raise ValueError
        if option.high is not None and number > option.high:
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise CSTMInputError(f"--{name}", f"got {value!r}", option.expected()) from None


def _to_bool(value: Any, text: str | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError


def _to_int(value: Any, text: str | None) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if text is not None:
        return int(text)
    raise ValueError


def _to_float(value: Any, text: str | None) -> float:
    if isinstance(value, bool):
        raise ValueError
    number = float(text) if text is not None else float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _to_strides(value: Any) -> list[int]:
    if isinstance(value, str):
        value = [int(s) for s in value.strip("[]() ").replace(",", " ").split()]
    if not isinstance(value, Sequence) or not value or any(isinstance(s, bool) for s in value):
        raise ValueError
    strides = [int(s) for s in value]
    if len(set(strides)) != len(strides) or not set(strides) <= {16, 8}:
        raise ValueError
    return strides
