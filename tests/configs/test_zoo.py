"""The MONAI Model Zoo's checks, run as the zoo's CI runs them (``ci/unit_tests`` and ``ci/verify_bundle.py``).

- ``ConfigWorkflow(..., workflow_type="train" / "infer")``: ``check_properties()`` finds every required property of
  ``monai/bundle/properties.py`` (and every optional one that the config refers to under its standard id), then
  ``initialize()`` / ``run()`` / ``finalize()`` on a tiny phantom;
- ``python -m monai.bundle verify_net_in_out network_def`` from the bundle folder with ``--bundle_root .``;
- ``python -m monai.bundle ckpt_export`` (traced: ``torch.jit.script`` cannot compile the network);
- ``python -m monai.bundle verify_metadata`` against ``tests/data/bundle_metadata_schema.json``: the zoo's schema
  (``meta_schema_20240725``) cannot be downloaded in CI, so its rules (required keys, the description of network
  inputs and outputs) are written out there; and the fields the zoo's CI checks besides the schema.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from helpers import BUNDLE, CONFIGS, EVALUATE, REPO

SCHEMA = REPO / "tests" / "data" / "bundle_metadata_schema.json"


def _workflow(config: str | list[str], workflow_type: str, **override) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=str(CONFIGS / config) if isinstance(config, str) else [str(CONFIGS / c) for c in config],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **override,
    )


def _check_and_run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    missing = workflow.check_properties()
    assert missing == [], f"missing required properties or optional ones with a wrong id: {missing}"
    workflow.run()
    workflow.finalize()


def test_train_workflow_properties_and_run(tmp_path: Path) -> None:
    out = tmp_path / "train"
    workflow = _workflow(
        "train.json",
        "train",
        demo_dir=str(tmp_path / "phantom"),
        demo_studies=2,
        num_val=1,
        max_epochs=1,
        val_interval=1,
        samples_per_study=1,
        num_workers=0,
        roi_size=96,
        roi_spacing=1.8,
        output_dir=str(out),
    )
    _check_and_run(workflow)
    assert workflow.max_epochs == 1 and workflow.train_dataset is not None and workflow.evaluator is not None
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"] == 1  # 1 epoch of 1 study
    assert (out / "model.pt").is_file()  # validation ran (ValidationHandler) and saved the best epoch


def test_inference_workflow_properties_and_run(phantom_studies: Path, tmp_path: Path) -> None:
    studies = sorted(p for p in phantom_studies.iterdir() if p.is_dir())
    workflow = _workflow(
        "inference.json", "infer", dataset_dir=str(studies[0]), output_dir=str(tmp_path), clinical_pictures=False
    )
    _check_and_run(workflow)
    source = nib.load(studies[0] / "image.nii.gz")
    pred = nib.load(tmp_path / studies[0].name / "label_4d.nii.gz")
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) == {0, 1, 2, 3}
    assert (tmp_path / studies[0].name / "cardiac_function.json").is_file()


def test_evaluate_workflow_properties(phantom_studies: Path, tmp_path: Path) -> None:
    """evaluate.json is an inference-type workflow too (its run is tested in test_evaluate.py)."""
    workflow = _workflow(EVALUATE, "infer", dataset_dir=str(phantom_studies), output_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() == []


def test_metadata_has_the_zoo_fields() -> None:
    """What the zoo's ``verify_bundle.py`` checks beyond the schema: the version has a changelog entry, the versions
    and packages are pinned as in requirements.txt, and the network's input and output are described."""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in (
        "schema",
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "name",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "intended_use",
        "references",
        "data_source",
        "image_classes",
        "label_classes",
    ):
        assert meta.get(key), key
    assert meta["version"] in meta["changelog"]
    pins = dict(
        line.split("==")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert meta["monai_version"] == pins["monai"] and meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for name, version in meta["required_packages_version"].items():
        assert pins.get(name) == version, name
    for tensor in (*meta["network_data_format"]["inputs"].values(), *meta["network_data_format"]["outputs"].values()):
        assert {
            "type",
            "format",
            "num_channels",
            "spatial_shape",
            "dtype",
            "value_range",
            "is_patch_data",
            "channel_def",
        } <= set(tensor)
        assert len(tensor["channel_def"]) == tensor["num_channels"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "rv",
        "2": "myocardium",
        "3": "lv",
    }
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "scripts/__init__.py"):
        assert (BUNDLE / name).is_file(), name
    assert (
        all(p.stat().st_size < 25 * 2**20 for p in BUNDLE.rglob("*") if p.is_file())
        or (BUNDLE / "large_files.yml").is_file()
    )  # the zoo wants files over 25 MB listed in large_files.yml


def test_torch_jit_script_is_not_supported() -> None:
    """ckpt_export's default, ``torch.jit.script``, fails on the network's Python-level shape logic (docs/README.md,
    "TorchScript"), and metadata.json says so; if this starts to pass, drop ``--use_trace`` from the README, the
    metadata's statement and this test."""
    from scripts.networks import build_cstm

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["torchscript"]["script"] is False and meta["torchscript"]["trace"] is True
    assert "--use_trace True" in meta["torchscript"]["note"]
    with pytest.raises(RuntimeError):  # torch.jit.frontend errors are RuntimeErrors
        torch.jit.script(build_cstm("small"))


def _bundle_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` from the bundle folder, as the zoo's ``verify_bundle.py`` runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, capture_output=True, text=True, timeout=300, env=env
    )


def test_verify_net_in_out() -> None:
    result = _bundle_cli(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--bundle_root",
        ".",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_verify_metadata_offline(tmp_path: Path) -> None:
    """``--filepath`` names an existing schema file, so ``verify_metadata`` downloads nothing; a metadata file without
    a required key fails the same check."""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["schema"].endswith("/meta_schema_20240725.json")
    result = _bundle_cli("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr

    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps({k: v for k, v in meta.items() if k != "optional_packages_version"}))
    result = _bundle_cli("verify_metadata", "--meta_file", str(broken), "--filepath", str(SCHEMA))
    assert result.returncode != 0
    assert "optional_packages_version" in result.stdout + result.stderr


def test_ckpt_export_traced_torchscript(tmp_path: Path) -> None:
    """``torch.jit.script`` (ckpt_export's default) cannot compile the network (docs/README.md, "TorchScript"); the
    traced export of ``network_def`` at the inferer's frame size (roi_size 192) loads and matches the eager network."""
    from scripts.networks import build_cstm_from_checkpoint

    exported = tmp_path / "model.ts"
    result = _bundle_cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--bundle_root",
        ".",
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 5, 192, 192]",
        "--key_in_ckpt",
        "model",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    traced = torch.jit.load(str(exported), map_location="cpu").eval()
    network = build_cstm_from_checkpoint(BUNDLE / "models" / "model.pt")  # as the shipped weights record it
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    network.eval()
    torch.manual_seed(0)
    for _ in range(2):  # two inputs: the top-K indices differ, they are not constants of the trace
        image = torch.rand(1, 1, 192, 192)
        mask = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 192, 192)), 4).movedim(-1, 1).float()
        x = torch.cat([image, mask], 1)  # (1, 1 + O, H, W), the traced shape
        with torch.no_grad():
            np.testing.assert_allclose(traced(x).numpy(), network(x).numpy(), atol=1e-4)
    # Only the traced shape is valid: the batch size, the patch grid and K = min(K, T*N) are baked into the trace, and
    # another shape (batch 2, or 240 x 240) runs without an error but gives wrong logits (measured; docs/README.md).
