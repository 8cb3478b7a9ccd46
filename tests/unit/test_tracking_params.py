"""configure_tracking: fills MLflow-like handlers only, leaves the others (and a run without --tracking) alone."""

from __future__ import annotations

from monai.handlers import MLFlowHandler, StatsHandler

from scripts.engines import configure_tracking


def test_configure_tracking_sets_params_and_artifacts_of_mlflow_handlers_only(tmp_path) -> None:
    stats = StatsHandler()
    mlflow = MLFlowHandler(
        tracking_uri=f"sqlite:///{tmp_path}/db.db", artifacts="config.json", experiment_param={"seed": 0}
    )
    params = {"top_k": 4, "matching_strides": [16, 8], "variant": "small"}
    assert configure_tracking([stats], params, ["model.pt"]) == 0  # no --tracking: nothing to do
    assert configure_tracking([stats, mlflow], params, [tmp_path / "model.pt"]) == 1
    assert mlflow.experiment_param == {"seed": 0, "top_k": 4, "matching_strides": "[16, 8]", "variant": "small"}
    assert mlflow.artifacts == ("config.json", str(tmp_path / "model.pt"))
    assert not hasattr(stats, "experiment_param")
