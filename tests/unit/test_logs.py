"""The console of a run (scripts/logs.py, issue 31 item 8): the known library notices are silenced by module or
logger and message, nothing else; a NIfTI study is not offered to the DICOM reader first; a file name that is not
UTF-8 does not break the console."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from monai.data.nvimgcodec_pydicom_plugin import register_as_decoder_plugin
from monai.transforms import LoadImage

from scripts.data import CineDicomReader
from scripts.io import save_nifti
from scripts.logs import quiet_known_noise, robust_console

NOTICE_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


def test_the_nvimagecodec_notice_is_dropped_and_other_lines_of_its_logger_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(NOTICE_LOGGER)
    monkeypatch.setattr(logger, "filters", [])  # as before this fix
    with caplog.at_level(logging.INFO):
        register_as_decoder_plugin()  # no nvImageCodec here: MONAI logs its notice
    assert any("nvImageCodec is not available" in r.getMessage() for r in caplog.records)  # the reproduction
    caplog.clear()
    quiet_known_noise()
    with caplog.at_level(logging.INFO):
        register_as_decoder_plugin()
        logger.warning("another warning of the same logger")
    assert [r.getMessage() for r in caplog.records] == ["another warning of the same logger"]


@pytest.mark.parametrize(
    "module, message, silenced",
    [
        ("monai.data.image_reader", "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register ok", True),
        ("monai.bundle.reference_resolver", "Detected deprecated name 'optional_packages_version' in ...", True),
        ("monai.bundle.reference_resolver", "Detected deprecated name 'other_key' in ...", False),
        ("monai.data.image_reader", "some other warning", False),
    ],
)
def test_only_the_known_warnings_are_silenced(module: str, message: str, silenced: bool) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
    assert (not seen) is silenced


def test_a_nifti_study_loads_without_the_dicom_reader_failing_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ``LoadImage - INFO - CineDicomReader: unable to load .../image.nii.gz`` for every NIfTI study, and the
    nvImageCodec notice (logged and warned) each time the readers were built."""
    image = np.random.default_rng(0).normal(size=(8, 8, 2, 3)).astype(np.float32)
    path = save_nifti(image, np.diag([1.5, 1.5, 8.0, 1.0]), tmp_path / "image.nii.gz")
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = LoadImage(reader=CineDicomReader(), image_only=True)(str(path))
    assert np.array_equal(np.asarray(loaded), image) and np.allclose(loaded.affine, np.diag([1.5, 1.5, 8.0, 1.0]))
    assert not [r.getMessage() for r in caplog.records if "unable to load" in r.getMessage() or "nvImage" in r.msg]
    assert not [str(w.message) for w in seen if "nvImageCodec" in str(w.message)]


def test_the_console_escapes_a_name_that_is_not_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")  # a UTF-8 terminal (not the C locale)
    monkeypatch.setattr(sys, "stdout", strict)
    name = b"/data/bad\xffname".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    with pytest.raises(UnicodeEncodeError):
        print(name, file=strict, flush=True)
    robust_console()
    print(f"bad study {name}", file=sys.stdout, flush=True)
    assert raw.getvalue().endswith(b"bad study /data/bad\\udcffname\n")
