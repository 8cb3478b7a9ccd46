"""The bundle's fixed split of the real data by patient (``configs/datalist_acdc.json``), and reading it.

A patient is in exactly one of "training", "validation" (the only data that selects checkpoints and settings) and
"test" (read once, for the model card's table), with every study folder of that patient: the ACDC cine
(``acdc_dev/`` or ``acdc_cine/``) and the full ED/ES stacks (``acdc_frames/``) of the same patient go together.
The split is stratified by pathology group (``info.json["group"]``) and drawn once with a fixed seed
(:func:`make_split`); the DCM test patients are 008–010, the three that the 0.4 weights never trained on, so that the
model card can compare the previous model on the same test studies.

Each item of the datalist is ``{"study_dir": "<dataset>/<study>", "dataset": ..., "patient": ..., "group": ...}``,
relative to the shared data folder (``--data_root``). It is read as plain JSON, not with MONAI's
``load_decathlon_datalist``: that one turns every value naming an existing path into an absolute path, and the dataset
names are folder names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CSTMInputError
from .readers import check_image_file, study_image

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
DATASETS = ("acdc_dev", "acdc_cine", "acdc_frames", "sunnybrook")
FIXED_TEST = {"DCM": ("patient008", "patient009", "patient010")}
"""Patients put in the test split before the draw (see the module docstring)."""


def load_split(datalist_file: str | os.PathLike, split: str, data_root: str | os.PathLike,
               dataset_weights: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The study dicts of one split, as :func:`~.readers.list_studies` returns them, plus "dataset", "patient",
    "group" and "sample_weight".

    Args:
        datalist_file: the split file (``configs/datalist_acdc.json``).
        split: "training", "validation" or "test".
        data_root: the folder that holds the datasets (``../shared/data``).
        dataset_weights: sampling weight per dataset name (training); a dataset of weight 0 or absent is left out.
            None keeps every dataset, each study at weight 1 / number of studies.
    Returns:
        the studies in file order; their "sample_weight" values sum to 1 (weights divided by their sum, each
        dataset's share spread evenly over its studies).
    Raises:
        CSTMInputError: unknown split, a study folder that is missing or holds no readable image, or weights that
            leave nothing.
    """
    if split not in SPLITS:
        raise CSTMInputError(datalist_file, f"has no split {split!r}", f"one of {list(SPLITS)}")
    if not Path(data_root).is_dir():
        raise CSTMInputError(data_root, "data folder does not exist", f"the folder that holds {', '.join(DATASETS)}")
    try:
        items = json.loads(Path(datalist_file).read_text(encoding="utf-8"))[split]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CSTMInputError(datalist_file, f"cannot be read as a split file ({e!r})",
                             f"a JSON file with lists {list(SPLITS)}") from e
    if dataset_weights is not None:
        items = [s for s in items if dataset_weights.get(s["dataset"], 0) > 0]
    if not items:
        raise CSTMInputError(datalist_file, f"split {split!r} keeps no study with weights {dataset_weights}",
                             "a positive weight for at least one dataset of the split")
    counts = {name: sum(s["dataset"] == name for s in items) for name in {s["dataset"] for s in items}}
    weights = {name: (1.0 if dataset_weights is None else float(dataset_weights[name])) for name in counts}
    total = sum(weights.values())
    studies = []
    for s in items:
        folder = Path(data_root) / s["study_dir"]
        image = study_image(folder)
        if image is None:
            raise CSTMInputError(folder, f"study of split {split!r} not found", f"a study folder under {data_root}")
        check_image_file(image)
        studies.append({**s, "image": str(image), "study": f"{s['dataset']}_{folder.name}", "study_dir": str(folder),
                        "sample_weight": weights[s["dataset"]] / total / counts[s["dataset"]]})
    logger.info(f"{split}: {len(studies)} studies ({', '.join(f'{n} {c}' for n, c in sorted(counts.items()))})")
    return studies


def make_split(data_root: str | os.PathLike, output: str | os.PathLike, seed: int = 2025,
               fractions: tuple[float, float] = (0.2, 0.27)) -> dict[str, list[dict[str, Any]]]:
    """Draw the split once (``python -m scripts.data.splits <data_root> <output>``) and write it as a datalist.

    Per group, after :data:`FIXED_TEST`, round(n × ``fractions[1]``) patients go to test and round(n × ``fractions[0]``)
    to validation, drawn with ``seed``; the rest train. Patients are the ACDC patient ids (every study folder of the
    patient follows it) and the Sunnybrook cases (group "SCD-HF-I").
    """
    root = Path(data_root)
    patients: dict[str, dict[str, Any]] = {}
    for dataset in DATASETS:
        for folder in sorted(p for p in (root / dataset).iterdir() if study_image(p)):
            info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").is_file() else {}
            group = info.get("group", "SCD-HF-I" if dataset == "sunnybrook" else "unknown")
            entry = patients.setdefault(folder.name, {"group": group, "studies": []})
            entry["studies"].append({"study_dir": f"{dataset}/{folder.name}", "dataset": dataset,
                                     "patient": folder.name, "group": group})
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for group in sorted({p["group"] for p in patients.values()}):
        members = sorted(name for name, p in patients.items() if p["group"] == group)
        fixed = [m for m in FIXED_TEST.get(group, ()) if m in members]
        rest = [members[i] for i in rng.permutation(len(members)) if members[i] not in fixed]
        n_test = max(len(fixed), round(len(members) * fractions[1]))
        n_val = max(1, round(len(members) * fractions[0]))
        test = fixed + rest[: n_test - len(fixed)]
        val = rest[n_test - len(fixed): n_test - len(fixed) + n_val]
        for split, names in (("test", test), ("validation", val)):
            chosen[split] += [s for name in sorted(names) for s in patients[name]["studies"]]
        chosen["training"] += [s for name in sorted(set(members) - set(test) - set(val))
                               for s in patients[name]["studies"]]
    document = {"description": "CSTM bundle split of the real data by patient, stratified by group "
                               f"(scripts.data.splits.make_split, seed {seed}); paths relative to the data folder",
                **chosen}
    Path(output).write_text(json.dumps(document, indent=1) + "\n")
    return chosen


if __name__ == "__main__":
    import fire

    fire.Fire(make_split)
