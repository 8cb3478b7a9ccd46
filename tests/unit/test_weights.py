"""Weights carry their configuration (scripts.networks.weights), and the review's defects around them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from helpers import BUNDLE, CONFIGS, EVALUATE, TINY_CSTM
from scripts.engines import ResumableCheckpoint, check_run_folder, load_initial_weights, propagate_triplet
from scripts.errors import CSTMInputError, check_overrides
from scripts.networks import (
    CSTM,
    build_cstm,
    build_cstm_from_checkpoint,
    build_initializer_from_checkpoint,
    read_checkpoint,
    recorded_roi,
    save_weights,
    state_dict_of,
    weights_record,
)

MODELS = BUNDLE / "models"


def _parser(files: list[str], **overrides: object) -> ConfigParser:
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / f) for f in files]))
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


@pytest.mark.parametrize(
    "name, mode, recipe, norm",
    [
        ("model.pt", "plm", "train_robust.json", "group"),
        ("model_dense.pt", "dense", "train_real.json", "frozen_batch"),
        ("model_phantom.pt", "plm", "train.json", "frozen_batch"),
    ],
)
def test_shipped_weights_record_how_they_were_trained(name: str, mode: str, recipe: str, norm: str) -> None:
    state = read_checkpoint(MODELS / name)
    assert state["variant"] == "small" and state["network"]["matching_mode"] == mode
    assert state["network"]["encoder_norm"] == norm
    assert state["roi"] == {"roi_size": 192, "roi_spacing": 0.9}
    assert state["training"]["recipe"] == recipe and state["training"]["params"]["matching_mode"] == mode
    network = CSTM(**state["network"])
    network.load_state_dict(state["model"])  # strict: the record rebuilds exactly these weights' network
    if name == "model.pt":  # 0.7.1: every stage of its training is recorded (0.5.0's two, 0.6.0's, 0.7.0's, its own)
        stages = state["training"]["stages"]
        assert [s["recipe"] for s in stages] == [
            "pretrain_static.json",
            "train_acdc.json",
            "train_acdc.json",
            "train_robust.json",
            "train_robust.json",
        ]
        assert stages[4]["from"] == "model.pt 0.7.0" and stages[4]["amp"].startswith("bfloat16")
        assert stages[2]["from"].startswith("model.pt 0.5.0") and stages[2]["iterations"] == 2424
        assert stages[3]["from"] == "model.pt 0.6.0" and state["training"]["params"]["dataset_weights"].keys() == {
            "acdc_cine",
            "acdc_dev",
            "acdc_frames",
        }


def test_shipped_initializer_records_how_it_was_trained() -> None:
    state = read_checkpoint(MODELS / "init.pt")
    assert state["variant"] == "initializer" and state["training"]["recipe"] == "train_init.json"
    assert state["roi"]["roi_spacing"] == state["training"]["params"]["pixel_spacing"]
    network = build_initializer_from_checkpoint(MODELS / "init.pt")
    network.load_state_dict(state["model"])  # strict
    assert network.config["filters"] == state["training"]["params"]["filters"]


def test_inference_config_builds_the_network_its_checkpoint_records() -> None:
    dense = _parser(["inference.json"], checkpoint=str(MODELS / "model_dense.pt")).get_parsed_content("network_def")
    assert dense.matcher.mode == "dense"
    plm = _parser(["inference.json"]).get_parsed_content("network_def")
    assert plm.matcher.mode == "plm" and plm.config == read_checkpoint(MODELS / "model.pt")["network"]
    # what MONAI Label and the Model Zoo do: network_def, then the "model" entry of models/model.pt
    plm.load_state_dict(torch.load(MODELS / "model.pt", map_location="cpu", weights_only=True)["model"])
    with pytest.raises(Exception) as raised:
        _parser(["inference.json"], checkpoint=str(MODELS / "model_dense.pt"), matching_mode="plm").get_parsed_content(
            "network_def"
        )
    assert "was trained with matching_mode 'dense', not --matching_mode 'plm'" in str(raised.value.__cause__)


def test_evaluate_scores_dense_weights_as_dense_and_refuses_plm_weights_as_dense() -> None:
    models = _parser(EVALUATE, device="$torch.device('cpu')").get_parsed_content("extra_models")
    assert models["dense"].matcher.mode == "dense"
    with pytest.raises(Exception) as raised:
        _parser(EVALUATE, dense_checkpoint=str(MODELS / "model.pt")).get_parsed_content("extra_models")
    assert "was trained with matching_mode 'plm', not --matching_mode 'dense'" in str(raised.value.__cause__)


def test_a_saved_network_is_rebuilt_from_its_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    network = build_cstm("small", **TINY_CSTM, matching_mode="dense", top_k=2, matching_strides=[16])
    save_weights(network, tmp_path / "model.pt", weights_record(network, "tiny", 96, 1.8, "train.json", {"a": 1}))
    rebuilt = build_cstm_from_checkpoint(tmp_path / "model.pt")
    rebuilt.load_state_dict(state_dict_of(read_checkpoint(tmp_path / "model.pt")))
    x = torch.rand(1, 5, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), network.eval()(x))
    assert recorded_roi(tmp_path / "model.pt") == {"roi_size": 96, "spacing": 1.8}
    with caplog.at_level(logging.WARNING):
        assert recorded_roi(tmp_path / "model.pt", roi_spacing=0.9) == {"roi_size": 96, "spacing": 0.9}
    assert "--roi_spacing 0.9 differs from the 1.8" in caplog.text
    with pytest.raises(CSTMInputError, match="was trained with top_k 2, not --top_k 4"):
        build_cstm_from_checkpoint(tmp_path / "model.pt", top_k=4)
    with pytest.raises(CSTMInputError, match=r"was trained with matching_strides \[16\], not --matching_strides"):
        build_cstm_from_checkpoint(tmp_path / "model.pt", matching_strides=[16, 8])


def test_fine_tuning_refuses_weights_trained_with_other_matching(tmp_path: Path) -> None:
    """``load_state_dict`` cannot see the matching (it has no parameters); the record can."""
    dense = build_cstm("small", **TINY_CSTM, matching_mode="dense")
    save_weights(dense, tmp_path / "model.pt")
    with pytest.raises(CSTMInputError, match="was trained with matching_mode 'dense', the network here has 'plm'"):
        load_initial_weights(build_cstm("small", **TINY_CSTM), tmp_path / "model.pt", Engine(lambda e, b: None))
    load_initial_weights(
        build_cstm("small", **TINY_CSTM, matching_mode="dense"), tmp_path / "model.pt", Engine(lambda e, b: None)
    )


@pytest.mark.parametrize("strides", [[16, 8], [16], [8]])
def test_every_parameter_gets_a_gradient_whatever_the_strides(strides: list[int]) -> None:
    """DDP with find_unused_parameters=False fails at iteration 2 on a parameter without gradient."""
    network = build_cstm("small", **TINY_CSTM, matching_strides=strides)
    logits2, logits3 = propagate_triplet(network, torch.rand(2, 3, 1, 96, 96), torch.randint(0, 4, (2, 96, 96)))
    (logits2.logsumexp(1).mean() + logits3.logsumexp(1).mean()).backward()
    assert [n for n, p in network.named_parameters() if p.grad is None] == []


def test_unlabelled_memory_pixels_are_refused() -> None:
    network = build_cstm("small", **TINY_CSTM)
    mask = torch.zeros(1, 96, 96, dtype=torch.uint8)
    mask[0, :4] = 255  # UNLABELLED: must never become LV in a memory frame
    with pytest.raises(ValueError, match=r"memory mask values must lie in \[0, 4\)"):
        propagate_triplet(network, torch.rand(1, 3, 1, 96, 96), mask)


def test_resume_without_last_checkpoint_does_not_overwrite_model_pt(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights of an earlier run")
    with pytest.raises(CSTMInputError, match="model.pt: there is no checkpoint_last.pt beside it to resume from"):
        check_run_folder(tmp_path, resume=True)
    check_run_folder(tmp_path / "fresh", resume=True)  # nothing there: a warning, then a fresh start


def _train(folder: Path, max_epochs: int, resume: bool, out_features: int = 1) -> tuple[Engine, Engine]:
    """Two iterations per epoch of SGD on a linear layer, checkpointed by ResumableCheckpoint into ``folder``."""
    model = torch.nn.Linear(2, out_features)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(engine: Engine, batch: int) -> None:
        optimizer.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()

    trainer, evaluator = Engine(step), Engine(lambda e, b: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = (-1.0, -1) if resume else (0.5, 1)
    ResumableCheckpoint(
        folder, {"model": model, "optimizer": optimizer, "trainer": trainer}, evaluator, resume=resume
    ).attach(trainer)
    trainer.run([0, 1], max_epochs=max_epochs)
    return trainer, evaluator


def test_resume_goes_on_from_the_last_epoch_and_refuses_a_finished_or_other_run(tmp_path: Path) -> None:
    _train(tmp_path, 2, resume=False)
    for max_epochs in (2, 1):  # reached (ours) or passed (MONAI's CheckpointLoader refuses it): the same message
        with pytest.raises(CSTMInputError, match="checkpoint_last.pt: the run already finished its 2 epochs"):
            _train(tmp_path, max_epochs, resume=True)
    with pytest.raises(CSTMInputError, match="checkpoint_last.pt: does not fit this training config"):
        _train(tmp_path, 4, resume=True, out_features=2)
    trainer, evaluator = _train(tmp_path, 4, resume=True)
    assert (trainer.state.epoch, trainer.state.max_epochs, trainer.state.iteration) == (4, 4, 8)  # 2 epochs more
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.5, 1)


def test_override_check_reads_config_file_given_with_equals() -> None:
    config = CONFIGS / "inference.json"
    check_overrides(["run", "inference", f"--config_file={config}", "--overwrite=true", "--max_batch", "4"])
    with pytest.raises(CSTMInputError, match="--max_batc: no such option"):
        check_overrides(["run", "inference", f"--config_file={config}", "--max_batc", "4"])
