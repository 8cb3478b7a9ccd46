"""``multi_gpu_train.json`` under ``torchrun``: two processes (gloo on the CPU) train one tiny epoch with DDP and end
with the same weights, which rank 0 alone saves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, REPO, torchrun_command

pytestmark = pytest.mark.slow


def test_two_processes_with_gloo_agree_on_the_weights(tmp_path: Path) -> None:
    from scripts.data import write_phantom_studies

    data, out = tmp_path / "phantom", tmp_path / "run"
    write_phantom_studies(
        str(data), num_studies=5, seed=0
    )  # 2 train, 3 validate  # generated once here, not by both ranks at once
    dump = tmp_path / "dump.json"  # every rank saves its final weights (a test-only finalize step)
    dump.write_text(
        json.dumps(
            {
                "finalize": [
                    f"$torch.save(@network.state_dict(), '{tmp_path}/rank' + str(dist.get_rank()) + '.pt')",
                    f"$open('{tmp_path}/val' + str(dist.get_rank()) + '.txt', 'w').write(str(len(@validate#dataloader)))",
                    "$dist.is_initialized() and dist.destroy_process_group()",
                ]
            }
        )
    )
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(dump)]
    cmd = torchrun_command(
        "training",
        configs,
        *("--dataset_dir", str(data), "--num_val", "3", "--max_epochs", "1", "--val_interval", "1"),
        *("--samples_per_study", "2", "--num_workers", "0", "--output_dir", str(out)),
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1))
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert rank0.keys() == rank1.keys() == last["model"].keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(rank0[name], last["model"][name], rtol=0, atol=0, msg=name)
    assert last["trainer"]["epoch_length"] == 1  # 2 training studies shared by 2 ranks
    # validation sharded, not padded: 3 studies as 2 + 1, each scored once
    assert sorted(int((tmp_path / f"val{r}.txt").read_text()) for r in (0, 1)) == [1, 2]
    assert (
        out / "model.pt"
    ).is_file()  # validated (on every rank: MONAI's metrics gather across ranks), saved by rank 0
    log = result.stdout + result.stderr
    assert log.count("] Metrics -- ") == 1 and log.count("train_loss:") == 1  # rank 0 logs alone
    assert "val_dice_es_lv" in log and "val_mean_dice" in log
