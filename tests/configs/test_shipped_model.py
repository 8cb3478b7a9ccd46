"""The shipped weights (models/model.pt) against the copy-ED floor on phantom studies never seen in training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from conftest import BUNDLE, CONFIGS

CLASSES = {1: "RV", 2: "Myo", 3: "LV"}


def es_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-class Dice (RV, Myo, LV) of two (H, W, Z) label volumes, over the whole volume."""
    p = one_hot(torch.as_tensor(pred)[None, None].long(), 4)
    t = one_hot(torch.as_tensor(truth)[None, None].long(), 4)
    return compute_dice(p, t, include_background=False)[0].numpy()


@pytest.fixture(scope="module")
def inference_parts() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    return parser


def test_shipped_model_beats_copy_ed(inference_parts: ConfigParser, phantom_studies: Path) -> None:
    network = inference_parts.get_parsed_content("network")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu"))
    network.eval()
    preprocessing = inference_parts.get_parsed_content("preprocessing")
    inferer = inference_parts.get_parsed_content("inferer")
    model, copy_ed = [], []
    for study in sorted(p for p in phantom_studies.iterdir() if p.is_dir()):
        info = json.loads((study / "info.json").read_text())
        d = preprocessing({"image": str(study / "image.nii.gz"), "study": study.name, "study_dir": str(study)})
        labels = inferer(d["image"][None], network, annotation=d["annotation"][None],
                         annotation_slice=d["annotation_slice"], annotation_phase=d["annotation_phase"])
        truth_es = np.asarray(nib.load(study / "label_es.nii.gz").dataobj)
        truth_ed = np.asarray(nib.load(study / "label_ed.nii.gz").dataobj)
        model.append(es_dice(labels[0, 0, ..., info["es"]].numpy(), truth_es))
        copy_ed.append(es_dice(truth_ed, truth_es))
    model_mean, copy_mean = np.mean(model, 0), np.mean(copy_ed, 0)
    print("\nES Dice on fresh phantom studies (RV, Myo, LV):")
    print(f"  shipped model: {np.round(model_mean, 3).tolist()}  mean {model_mean.mean():.3f}")
    print(f"  copy-ED:       {np.round(copy_mean, 3).tolist()}  mean {copy_mean.mean():.3f}")
    assert model_mean.mean() > copy_mean.mean() + 0.05
