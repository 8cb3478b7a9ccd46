"""MONAI Label's stock monaibundle app runs this bundle on a single-slice cine with an uploaded annotation.

MONAI Label lives in its own environment (``tests/monailabel/install_monailabel_env.sh`` creates
``.venv-monailabel``); this test runs ``check_monailabel_app.py`` with that environment's python, named by
``CSTM_MONAILABEL_PYTHON`` or found at ``.venv-monailabel/bin/python``, and skips when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def monailabel_python() -> Path | None:
    named = os.environ.get("CSTM_MONAILABEL_PYTHON")
    if named:
        return Path(named)
    default = REPO / ".venv-monailabel" / "bin" / "python"
    return default if default.exists() else None


@pytest.mark.slow
def test_stock_monaibundle_app_segments_a_cine_slice() -> None:
    python = monailabel_python()
    if python is None:
        pytest.skip(
            "no MONAI Label environment: run tests/monailabel/install_monailabel_env.sh, or set "
            "CSTM_MONAILABEL_PYTHON to the python of an environment with monailabel installed"
        )
    if not python.exists():
        pytest.fail(f"CSTM_MONAILABEL_PYTHON={python} does not exist")
    run = subprocess.run(
        [str(python), str(HERE / "check_monailabel_app.py")], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    sys.stdout.write(run.stdout)
    assert (
        run.returncode == 0
    ), f"check_monailabel_app.py failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-6000:]}"
    assert "MONAI Label check passed" in run.stdout
