"""``--tracking mlflow``: a short training run logs params, per-iteration loss, validation Dice and the model."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.utils import path_to_sqlite_uri

from helpers import run_bundle

pytestmark = pytest.mark.slow


def test_training_with_mlflow_logs_params_loss_dice_and_model(tmp_path: Path) -> None:
    out, store = tmp_path / "train", path_to_sqlite_uri(str(tmp_path / "store" / "mlflow.db"))
    (tmp_path / "store").mkdir()
    result = run_bundle(
        "training",
        "train.json",
        "--tracking",
        "mlflow",
        "--tracking_uri",
        store,
        "--experiment_name",
        "cstm_test",
        "--demo_dir",
        str(tmp_path / "phantom"),
        "--demo_studies",
        "3",
        "--num_val",
        "1",
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--samples_per_study",
        "2",
        "--num_workers",
        "0",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (out / "mlruns.db").exists()  # the store is where --tracking_uri says, not the default

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("cstm_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss] == [1, 2]  # one value per iteration: 2 training studies, 1 epoch
    assert all(m.value > 0 for m in loss)
    dice = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert [m.step for m in dice] == [1] and 0.0 <= dice[0].value <= 1.0
    es_lv = client.get_metric_history(run.info.run_id, "val_dice_es_lv")  # per class and phase, too
    assert [m.step for m in es_lv] == [1] and 0.0 <= es_lv[0].value <= 1.0
    params = run.data.params
    assert params["max_epochs"] == "1" and params["epoch_length"] == "2"
    assert params["variant"] == "small" and params["matching_mode"] == "plm" and params["top_k"] == "4"
    assert params["learning_rate"] == "0.0003" and params["dataset_dir"] == str(tmp_path / "phantom")
    assert "model.pt" in [a.path for a in client.list_artifacts(run.info.run_id)]
