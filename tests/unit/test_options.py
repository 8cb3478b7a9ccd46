"""Typed options: every boolean, integer and choice option of every config, as ``monai.bundle run`` passes them."""

from __future__ import annotations

from types import SimpleNamespace

import fire
import monai.bundle.scripts
import pytest
from monai.bundle import ConfigParser

import scripts.options
from helpers import CONFIGS, EVALUATE
from scripts.errors import CSTMInputError, find_input_error
from scripts.options import OPTIONS, convert

CONFIG_SETS = {
    "inference": ["inference.json"],
    "evaluate": EVALUATE,
    "training": ["train.json"],
    "training_real": ["train.json", "train_real.json"],
    "training_acdc": ["train.json", "train_acdc.json"],
    "training_static": ["train.json", "train_acdc.json", "pretrain_static.json"],
    "training_init": ["train_init.json"],
}


def _options_of(files: list[str]) -> dict:
    """The ``options`` component of a layered config: option name -> its reference."""
    config = ConfigParser.load_config_files([str(CONFIGS / f) for f in files])
    return {k: v for k, v in config["options"].items() if not k.startswith("_")}


def _run_options(files: list[str], *flags: str, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``python -m monai.bundle run options --config_file ... <flags>`` in this process (fire parses the command
    line as it does for ``python -m monai.bundle``); returns what the config's ``options`` component built."""
    built = []
    real = scripts.options.typed_options
    monkeypatch.setattr(scripts.options, "typed_options", lambda **kw: built.append(real(**kw)) or built[-1])
    config_file = "[" + ",".join(repr(str(CONFIGS / f)) for f in files) + "]"
    fire.Fire(monai.bundle.scripts.run, command=["options", "--config_file", config_file, *flags])
    return built[-1]


@pytest.mark.parametrize("name", sorted(CONFIG_SETS))
def test_every_option_of_every_config_is_typed(name: str) -> None:
    options = _options_of(CONFIG_SETS[name])
    assert options and set(options) <= set(OPTIONS)
    assert all(ref == f"@{key}" for key, ref in options.items())  # each option reads its own top-level id


@pytest.mark.parametrize("name", sorted(CONFIG_SETS))
def test_boolean_flags_through_the_bundle_runner_both_ways(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = CONFIG_SETS[name]
    flags = [k for k in _options_of(files) if OPTIONS[k].kind == "bool"]
    assert flags
    for spelling, value in (
        ("true", True),
        ("false", False),
        ("True", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("FALSE", False),
        ("yes", True),
        ("off", False),
    ):
        args = [a for flag in flags for a in (f"--{flag}", spelling)]
        built = _run_options(files, *args, monkeypatch=monkeypatch)
        assert {flag: getattr(built, flag) for flag in flags} == {flag: value for flag in flags}, spelling
        assert all(type(getattr(built, flag)) is bool for flag in flags)


def test_integer_float_and_choice_flags_through_the_bundle_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _run_options(
        ["train.json"],
        "--max_epochs",
        "7",
        "--learning_rate",
        "1e-4",
        "--variant",
        "Full",
        "--matching_strides",
        "[16]",
        "--grad_clip_norm",
        "null",
        monkeypatch=monkeypatch,
    )
    assert (built.max_epochs, built.learning_rate, built.variant, built.matching_strides, built.grad_clip_norm) == (
        7,
        1e-4,
        "full",
        [16],
        None,
    )
    built = _run_options(["inference.json"], "--max_batch=4", "--continuity", "spatial", monkeypatch=monkeypatch)
    assert (built.max_batch, built.continuity, built.variant, built.roi_size) == (4, "spatial", None, None)
    assert (built.on_error, built.skip_done) == ("continue", False)  # the defaults
    built = _run_options(["inference.json"], "--on_error", "Stop", "--skip_done", "yes", monkeypatch=monkeypatch)
    assert (built.on_error, built.skip_done) == ("stop", True)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("overwrite", "maybe", "--overwrite: got 'maybe'; expected true or false."),
        ("amp", "2", "--amp: got 2; expected true or false."),
        ("max_batch", "0", "--max_batch: got 0; expected an integer >= 1."),
        ("continuity", "diagonal", "--continuity: got 'diagonal'; expected one of both, spatial, temporal."),
        ("max_batch", "many", "--max_batch: got 'many'; expected an integer >= 1."),
        ("on_error", "skip", "--on_error: got 'skip'; expected one of continue, stop."),
        ("skip_done", "done", "--skip_done: got 'done'; expected true or false."),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    flag: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Exception) as raised:
        _run_options(["inference.json"], f"--{flag}", value, monkeypatch=monkeypatch)
    assert str(find_input_error(raised.value)) == expected


def test_training_options_refuse_out_of_range_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag, value, expected in (
        ("num_val", "0", "--num_val: got 0; expected an integer >= 1."),
        ("max_epochs", "0", "--max_epochs: got 0; expected an integer >= 1."),
        ("flip_prob", "1.5", "--flip_prob: got 1.5; expected a number in [0, 1]."),
        ("learning_rate", "0", "--learning_rate: got 0; expected a number > 0."),
        ("resume", "ja", "--resume: got 'ja'; expected true or false."),
    ):
        with pytest.raises(Exception) as raised:
            _run_options(["train.json"], f"--{flag}", value, monkeypatch=monkeypatch)
        assert str(find_input_error(raised.value)) == expected


def test_convert_spellings() -> None:
    assert [convert("overwrite", v) for v in (True, 1, "TRUE", " on ", False, 0, "No")] == [True] * 4 + [False] * 3
    assert convert("max_epochs", 5.0) == 5 and convert("max_epochs", "12") == 12
    assert convert("roi_spacing", "0.9") == 0.9 and convert("roi_spacing", "None") is None
    assert convert("matching_strides", "16,8") == [16, 8] and convert("matching_strides", (8,)) == [8]
    for name, value in (
        ("overwrite", None),
        ("max_epochs", True),
        ("max_epochs", 2.5),
        ("roi_spacing", "nan"),
        ("matching_strides", [16, 16]),
        ("matching_strides", []),
        ("continuity", None),
    ):
        with pytest.raises(CSTMInputError, match=f"--{name}: got"):
            convert(name, value)


@pytest.mark.parametrize("name", sorted(set(CONFIG_SETS) - {"training_init"}))  # the CSTM configs
def test_every_config_builds_its_network_and_inferer(name: str) -> None:
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / f) for f in CONFIG_SETS[name]]))
    parser.update({"bundle_root": str(CONFIGS.parent)})
    network = parser.get_parsed_content("network_def")
    inferer = parser.get_parsed_content("validate#inferer" if name.startswith("training") else "inferer")
    assert network.matcher.mode == "plm" and network.matcher.strides == (16, 8)
    assert (inferer.roi_size, inferer.spacing) == (192, 0.9) and inferer.roi_size % network.size_multiple == 0


def test_initializer_config_builds_its_network() -> None:
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / "train_init.json")]))
    parser.update({"bundle_root": str(CONFIGS.parent)})
    network = parser.get_parsed_content("network_def")
    assert network.config == {"num_classes": 4, "filters": [16, 32, 64, 128, 256]}
    assert parser.get_parsed_content("crop_size") % network.size_multiple == 0
