"""The console of a run: library notices that say nothing to our users silenced where they are raised, a console that
never fails on a file name, and the debug log (``--debug true``) that holds the tracebacks the console leaves out.

Console logging itself is configured by ``configs/logging.conf``; MONAI's runner applies it before any code of the
bundle runs, and allows only ``logging``'s own classes in it, so what needs code is here.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

KNOWN_WARNINGS = (
    # MONAI's optional GPU DICOM decoder (nvImageCodec): not installed; pydicom's own decoders read the pixels
    ("monai.data.image_reader", r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"),
    # the Model Zoo schema (meta_schema_20240725) requires the key that MONAI 1.6 calls deprecated
    ("monai.bundle.reference_resolver", r"Detected deprecated name 'optional_packages_version'"),
)
"""(module that warns, start of the message) of each ``UserWarning`` silenced; nothing else is filtered."""

KNOWN_LOG_LINES = {
    "monai.data.nvimgcodec_pydicom_plugin": ("nvImageCodec is not available; skipping pydicom decoder plugin",)
}
"""Logger name -> starts of the messages dropped from that logger only."""

DEBUG_LOG = "debug.log"
"""``--debug true`` writes the run's log and the traceback of its error to ``<output_dir>/debug.log``."""


class DropMessages(logging.Filter):
    """Drop the records of one logger whose message starts with one of ``starts``.

    Args:
        starts: message beginnings to drop.
    """

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_known_noise() -> None:
    """Silence the library notices of :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_LINES`, each by its module or logger
    and message, so that any other warning of the same libraries still shows. Idempotent."""
    for module, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)
    for name, starts in KNOWN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.starts == starts for f in logger.filters):
            logger.addFilter(DropMessages(starts))


def robust_console() -> None:
    """Make stdout and stderr escape what they cannot encode (``backslashreplace``): a study folder whose name is not
    UTF-8 (``bad\\xffname``) reaches the log as Python's surrogate escape, which a UTF-8 console refuses with a
    "--- Logging error ---" traceback (``errors="strict"``) or writes as a raw byte that makes the log itself invalid
    UTF-8 (``surrogateescape``, the C locale's); it is written ``bad\\udcffname`` instead."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def open_debug_log(output_dir: str | os.PathLike) -> Path | None:
    """Copy the run's log (INFO and above, every logger) into ``<output_dir>/debug.log`` (``debug.rank<r>.log`` on
    rank r > 0 under ``torchrun``), appended to, beside the console.

    Returns:
        the file, or None where it cannot be opened (the folder is not writable: that error is the run's own to
        report).
    """
    rank = os.environ.get("RANK", "0")
    path = Path(output_dir) / (DEBUG_LOG if rank == "0" else f"debug.rank{rank}.log")
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.absolute():
            return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    console = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(console or logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    logging.getLogger(__name__).info(f"--debug true: the log of this run and the traceback of its error go to {path}")
    return path
