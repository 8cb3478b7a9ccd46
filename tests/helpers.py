"""Paths and helpers shared by the tests (``tests/`` is on ``sys.path``, see pyproject.toml)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "cstm_bundle"
CONFIGS = BUNDLE / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_CSTM = dict(
    key_block="basic",
    key_layers=(1, 1, 1),
    key_widths=(16, 16, 32),
    value_layers=(1, 1, 1),
    value_widths=(8, 16, 16),
    value_channels=(32, 16),
    decoder_channels=(32, 16, 16),
)
"""A CSTM small enough for unit tests (about 0.1 M parameters)."""


EVALUATE = ["inference.json", "evaluate.json"]
"""evaluate.json is layered on inference.json."""


def config_files(config: str | list[str]) -> str:
    """The ``--config_file`` value for one config, or for a list layered in order (``"['a.json','b.json']"``)."""
    if isinstance(config, str):
        return f"cstm_bundle/configs/{config}"
    return "[" + ",".join(f"'cstm_bundle/configs/{c}'" for c in config) + "]"


def bundle_command(run_id: str, config: str | list[str], *overrides: str) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file <config(s)> <overrides>``."""
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_files(config), *overrides]


def run_bundle(
    run_id: str, config: str | list[str], *overrides: str, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run :func:`bundle_command` from the repo root and wait for it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        bundle_command(run_id, config, *overrides), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def start_bundle(run_id: str, config: str | list[str], *overrides: str) -> subprocess.Popen:
    """:func:`bundle_command` started from the repo root, unbuffered, stdout and stderr merged into one text pipe (to
    read its lines as they come, e.g. to interrupt it at a given point)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        bundle_command(run_id, config, *overrides),
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def torchrun_command(run_id: str, configs: list[str], *overrides: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<nproc> -m monai.bundle run <run_id>`` on CPU ranks (gloo)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        repr(configs),
        "--dist_backend",
        "gloo",
        "--device",
        "$torch.device('cpu')",
        *overrides,
    ]


def kill_bundle_at(marker: str, run_id: str, config: str | list[str], *overrides: str) -> list[str]:
    """Start :func:`start_bundle`, SIGKILL it at the first output line that contains ``marker`` (as a crash or a
    killed job would end it), and return the lines it printed.

    Raises:
        AssertionError: the run ended before printing ``marker`` (its last lines are the message).
    """
    proc = start_bundle(run_id, config, *overrides)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return seen
