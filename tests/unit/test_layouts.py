"""ACDC, M&Ms and datalist layouts load exactly as the same study in the native study-folder layout."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from scripts.data import LoadStudyd, list_studies, prepare_dataset, write_phantom_studies
from scripts.errors import CSTMInputError

LOAD = Compose(
    [
        LoadImaged("image", image_only=True),
        EnsureChannelFirstd("image", channel_dim="no_channel"),
        LoadStudyd("image", with_labels=True),
    ]
)
KEYS = ("annotation", "annotation_slice", "annotation_phase", "label", "ed", "es", "image_spacing", "base_first")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom studies in the native layout (ED = 0, ES = 7 or so)."""
    root = tmp_path_factory.mktemp("native")
    write_phantom_studies(str(root), num_studies=2, seed=5100)
    (root / "datalist.json").unlink(missing_ok=True)
    return root


def _studies(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "image.nii.gz").is_file())


def _write_acdc(native: Path, root: Path) -> None:
    for i, study in enumerate(_studies(native)):
        name = f"patient{i + 1:03d}"
        info = json.loads((study / "info.json").read_text())
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: {info['ed'] + 1}\nES: {info['es'] + 1}\nGroup: NOR\nNbFrame: 16\n")
        shutil.copy(study / "image.nii.gz", folder / f"{name}_4d.nii.gz")
        for key in ("ed", "es"):
            frame = info[key] + 1
            shutil.copy(study / f"label_{key}.nii.gz", folder / f"{name}_frame{frame:02d}_gt.nii.gz")


def _write_mnms(native: Path, root: Path) -> Path:
    """M&Ms: Training/Labeled/<code>/..., the info CSV two levels up, labels 1 LV, 2 Myo, 3 RV."""
    labelled = root / "Training" / "Labeled"
    rows = []
    for i, study in enumerate(_studies(native)):
        code = f"A{i}B{i}C{i}"
        info = json.loads((study / "info.json").read_text())
        image = nib.load(study / "image.nii.gz")
        gt = np.zeros(image.shape, dtype=np.uint8)
        for key in ("ed", "es"):
            ours = np.asarray(nib.load(study / f"label_{key}.nii.gz").dataobj)
            gt[..., info[key]] = np.array([0, 3, 2, 1], dtype=np.uint8)[ours]
        (labelled / code).mkdir(parents=True)
        shutil.copy(study / "image.nii.gz", labelled / code / f"{code}_sa.nii.gz")
        nib.save(nib.Nifti1Image(gt, image.affine), labelled / code / f"{code}_sa_gt.nii.gz")
        rows.append({"External code": code, "VendorName": "Siemens", "ED": info["ed"], "ES": info["es"]})
    with open(root / "mnms_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return labelled


def _write_datalist(native: Path, root: Path) -> Path:
    items = []
    for study in _studies(native):
        info = json.loads((study / "info.json").read_text())
        items.append(
            {
                "study": study.name,
                "image": f"../native/{study.name}/image.nii.gz",
                "label_ed": f"../native/{study.name}/label_ed.nii.gz",
                "label_es": f"../native/{study.name}/label_es.nii.gz",
                "ed": info["ed"],
                "es": info["es"],
            }
        )
    shutil.copytree(native, root / "native")
    (root / "lists").mkdir()
    (root / "lists" / "datalist.json").write_text(json.dumps({"training": items}))
    return root / "lists" / "datalist.json"


@pytest.mark.parametrize("layout", ["acdc", "mnms", "datalist"])
def test_layout_loads_as_the_native_study(layout: str, native: Path, tmp_path: Path) -> None:
    source = tmp_path / layout
    source.mkdir()
    dataset = {
        "acdc": lambda: (_write_acdc(native, source), source)[1],
        "mnms": lambda: _write_mnms(native, source),
        "datalist": lambda: _write_datalist(native, source),
    }[layout]()
    converted = list_studies(prepare_dataset(dataset, layout, tmp_path / "studies"))
    expected = list_studies(native)
    assert len(converted) == len(expected) == 2
    for item, reference in zip(converted, expected, strict=True):
        got, want = LOAD(item), LOAD(reference)
        torch.testing.assert_close(got["image"].as_tensor(), want["image"].as_tensor())
        np.testing.assert_allclose(got["image"].affine, want["image"].affine)
        for key in KEYS:
            torch.testing.assert_close(torch.as_tensor(got[key]), torch.as_tensor(want[key]), msg=f"{layout}: {key}")
        assert (got["label"] == 3).any() and set(torch.unique(got["label"]).tolist()) == {0, 1, 2, 3, 255}

    again = list_studies(prepare_dataset(dataset, layout, tmp_path / "studies"), split="val", num_val=1)
    assert [s["study"] for s in again] == [converted[1]["study"]]  # converting again is harmless


def test_acdc_bad_info_cfg_names_the_file(native: Path, tmp_path: Path) -> None:
    _write_acdc(native, tmp_path / "acdc")
    cfg = tmp_path / "acdc" / "patient002" / "Info.cfg"
    cfg.write_text("ED: one\nES: 8\n")
    with pytest.raises(CSTMInputError, match=f"{cfg}: ED is 'one'"):
        list_studies(prepare_dataset(tmp_path / "acdc", "acdc", tmp_path / "studies"))


def test_unknown_layout_and_missing_mnms_row(native: Path, tmp_path: Path) -> None:
    with pytest.raises(CSTMInputError, match="unknown dataset layout"):
        list_studies(prepare_dataset(native, "nifti", tmp_path / "studies"))
    labelled = _write_mnms(native, tmp_path / "mnms")
    (labelled / "Z9Z9Z9").mkdir()
    shutil.copy(labelled / "A0B0C0" / "A0B0C0_sa.nii.gz", labelled / "Z9Z9Z9" / "Z9Z9Z9_sa.nii.gz")
    with pytest.raises(CSTMInputError, match="mnms_info.csv: no row for Z9Z9Z9"):
        list_studies(prepare_dataset(labelled, "mnms", tmp_path / "studies"))


def test_uncompressed_nii_sources_are_written_compressed(native: Path, tmp_path: Path) -> None:
    """A datalist whose files are ``.nii`` converts to study folders whose ``image.nii.gz`` is really gzipped."""
    source = tmp_path / "nii"
    dataset = _write_datalist(native, source)
    items = json.loads(dataset.read_text())["training"]
    for item in items:
        for key in ("image", "label_ed", "label_es"):
            gz = dataset.parent / item[key]
            nib.save(nib.load(gz), str(gz)[: -len(".gz")])
            item[key] = item[key][: -len(".gz")]
    dataset.write_text(json.dumps({"training": items}))
    converted = list_studies(prepare_dataset(dataset, "datalist", tmp_path / "studies"))
    for item, reference in zip(converted, list_studies(native), strict=True):
        assert Path(item["image"]).read_bytes()[:2] == b"\x1f\x8b"
        got, want = LOAD(item), LOAD(reference)
        torch.testing.assert_close(got["image"].as_tensor(), want["image"].as_tensor())
        torch.testing.assert_close(torch.as_tensor(got["label"]), torch.as_tensor(want["label"]))


def test_a_study_left_from_an_earlier_conversion_is_not_listed(native: Path, tmp_path: Path) -> None:
    dataset = _write_datalist(native, tmp_path / "src")
    assert len(list_studies(prepare_dataset(dataset, "datalist", tmp_path / "studies"))) == 2
    items = json.loads(dataset.read_text())["training"]
    dataset.write_text(json.dumps({"training": items[:1]}))  # the datalist drops a study
    again = list_studies(prepare_dataset(dataset, "datalist", tmp_path / "studies"))
    assert [s["study"] for s in again] == [items[0]["study"]]


@pytest.mark.parametrize("bare_list", [False, True])
def test_a_study_named_like_a_folder_beside_the_datalist_stays_a_name(
    bare_list: bool, native: Path, tmp_path: Path
) -> None:
    """The datalist sits in the dataset folder beside the study folders it names (not load_decathlon_datalist, which
    would make each "study" an absolute path to that folder, and write the conversion into the dataset)."""
    root = tmp_path / "dataset"
    shutil.copytree(native, root)
    items = [{"study": study.name, "image": f"{study.name}/image.nii.gz", "ed": 0, "es": 1} for study in _studies(root)]
    (root / "datalist.json").write_text(json.dumps(items if bare_list else {"training": items}))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    converted = list_studies(prepare_dataset(root / "datalist.json", "datalist", tmp_path / "studies"))
    assert [(s["study"], Path(s["study_dir"]).parent) for s in converted] == [
        (i["study"], tmp_path / "studies") for i in items
    ]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # the dataset is left alone


def test_skipped_folders_are_reported_and_hidden_ones_ignored(
    native: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(native, root)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    shutil.copytree(first, root / ".snapshot")  # hidden: not a study
    broken = root / "uncompressed"
    broken.mkdir()
    nib.save(nib.load(first / "image.nii.gz"), str(broken / "image.nii"))
    with caplog.at_level("WARNING"):
        studies = list_studies(root)
    assert [s["study"] for s in studies] == [p.name for p in sorted(native.iterdir()) if p.is_dir()]
    assert "uncompressed: skipped, not a study" in caplog.text and "image.nii" in caplog.text
    assert ".snapshot" not in caplog.text


def test_train_json_converts_a_layout_once_for_training_and_validation(
    native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversion is train.json's explicit step (``study_folders``), shared by both datalists, not hidden in
    ``list_studies`` (where it ran once per datalist)."""
    from monai.bundle import ConfigParser

    from helpers import CONFIGS
    from scripts.data import layouts

    _write_acdc(native, tmp_path / "acdc")
    calls = []
    convert = layouts.convert_layout
    monkeypatch.setattr(layouts, "convert_layout", lambda *a, **k: calls.append(a) or convert(*a, **k))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(
        {
            "dataset_dir": str(tmp_path / "acdc"),
            "dataset_layout": "acdc",
            "num_val": 1,
            "output_dir": str(tmp_path / "run"),
            "extra_train_datasets": [],
        }
    )
    train, val = parser.get_parsed_content("train#studies"), parser.get_parsed_content("validate#datalist")
    assert len(calls) == 1
    assert [s["study"] for s in train + val] == ["patient001", "patient002"]
    assert all(Path(s["study_dir"]).parent == tmp_path / "run" / "studies" for s in train + val)
