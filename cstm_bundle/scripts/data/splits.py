"""Which studies train and validate: the bundle's fixed split of the real data by patient
(``configs/datalist_acdc.json``) and reading it, and the mix of training datasets by weight (:func:`mix_datalists`).

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

import nibabel as nib
import numpy as np

from ..errors import CSTMInputError
from .layouts import prepare_dataset
from .readers import check_image_file, list_studies, study_image
from .study import label_file, labelled_slices, read_info

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
DATASETS = ("acdc_dev", "acdc_cine", "acdc_frames", "sunnybrook")
FIXED_TEST = {"DCM": ("patient008", "patient009", "patient010")}
"""Patients put in the test split before the draw (see the module docstring)."""


LABELS_COMPLETE = {"acdc_cine": True, "acdc_dev": True, "acdc_frames": True, "sunnybrook": False}
"""Dataset -> whether its ground truth is complete over the stack (:func:`~.study.labels_complete`)."""
LABELS_COMPLETE_NOTE = (
    "ACDC draws every slice that holds the RV, myocardium or LV, so a slice it leaves out is background; "
    "Sunnybrook's contours are partial, so there it is unknown"
)


def load_split(
    datalist_file: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike,
    dataset_weights: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The study dicts of one split, as :func:`~.readers.list_studies` returns them, plus "dataset", "patient",
    "group", "sample_weight" and "labels_complete" (the split file's ``labels_complete``: dataset -> whether its
    ground truth draws every slice that holds a structure; a study's ``info.json`` may say otherwise,
    :func:`~.study.labels_complete`)."

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
        content = json.loads(Path(datalist_file).read_text(encoding="utf-8"))
        items, complete = content[split], dict(content.get("labels_complete", {}))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CSTMInputError(
            datalist_file, f"cannot be read as a split file ({e!r})", f"a JSON file with lists {list(SPLITS)}"
        ) from e
    if dataset_weights is not None:
        items = [s for s in items if dataset_weights.get(s["dataset"], 0) > 0]
    if not items:
        raise CSTMInputError(
            datalist_file,
            f"split {split!r} keeps no study with weights {dataset_weights}",
            "a positive weight for at least one dataset of the split",
        )
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
        studies.append(
            {
                **s,
                "image": str(image),
                "study": f"{s['dataset']}_{folder.name}",
                "study_dir": str(folder),
                "sample_weight": weights[s["dataset"]] / total / counts[s["dataset"]],
                "labels_complete": bool(complete.get(s["dataset"], False)),
            }
        )
    logger.info(f"{split}: {len(studies)} studies ({', '.join(f'{n} {c}' for n, c in sorted(counts.items()))})")
    return studies


def make_split(
    data_root: str | os.PathLike,
    output: str | os.PathLike,
    seed: int = 2025,
    fractions: tuple[float, float] = (0.2, 0.27),
) -> dict[str, list[dict[str, Any]]]:
    """Draw the split once (``python -m scripts.data.splits <data_root> <output>``) and write it as a datalist.

    Per group, after :data:`FIXED_TEST`, round(n × ``fractions[1]``) patients go to test and round(n × ``fractions[0]``)
    to validation, drawn with ``seed``; the rest train. Patients are the ACDC patient ids (every study folder of the
    patient follows it) and the Sunnybrook cases (group "SCD-HF-I").
    """
    root = Path(data_root)
    patients: dict[str, dict[str, Any]] = {}
    for dataset in DATASETS:
        for folder in sorted(p for p in (root / dataset).iterdir() if study_image(p)):
            info = read_info(folder)
            group = info.get("group", "SCD-HF-I" if dataset == "sunnybrook" else "unknown")
            entry = patients.setdefault(folder.name, {"group": group, "studies": []})
            entry["studies"].append(
                {"study_dir": f"{dataset}/{folder.name}", "dataset": dataset, "patient": folder.name, "group": group}
            )
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for group in sorted({p["group"] for p in patients.values()}):
        members = sorted(name for name, p in patients.items() if p["group"] == group)
        fixed = [m for m in FIXED_TEST.get(group, ()) if m in members]
        rest = [members[i] for i in rng.permutation(len(members)) if members[i] not in fixed]
        n_test = max(len(fixed), round(len(members) * fractions[1]))
        n_val = max(1, round(len(members) * fractions[0]))
        test = fixed + rest[: n_test - len(fixed)]
        val = rest[n_test - len(fixed) : n_test - len(fixed) + n_val]
        for split, names in (("test", test), ("validation", val)):
            chosen[split] += [s for name in sorted(names) for s in patients[name]["studies"]]
        chosen["training"] += [
            s for name in sorted(set(members) - set(test) - set(val)) for s in patients[name]["studies"]
        ]
    document = {
        "description": "CSTM bundle split of the real data by patient, stratified by group "
        f"(scripts.data.splits.make_split, seed {seed}); paths relative to the data folder",
        "labels_complete": LABELS_COMPLETE,
        "labels_complete_note": LABELS_COMPLETE_NOTE,
        **chosen,
    }
    Path(output).write_text(json.dumps(document, indent=1) + "\n")
    return chosen


def mix_datalists(
    datalist: list[dict[str, Any]],
    extra_datasets: list[dict[str, Any]] | None = None,
    weight: float = 1.0,
    layout_dir: str | os.PathLike | None = None,
    demo_dir: str | os.PathLike | None = None,
    demo_studies: int = 4,
) -> list[dict[str, Any]]:
    """Training studies from several datasets, each item with the ``sample_weight`` that makes a weighted sampler
    (:func:`sample_weights`) draw each dataset with probability proportional to its weight, whatever its size.

    Args:
        datalist: the main dataset's training studies (:func:`~.readers.list_studies`, ``split="train"``).
        extra_datasets: more training datasets (``--extra_train_datasets``), all of whose studies are used: dicts with
            "dataset_dir", optional "weight" (1.0), "dataset_layout" ("study") and "info_csv".
        weight: the main dataset's weight (``--dataset_weight``).
        layout_dir: where datasets in another layout are converted (one subfolder each).
        demo_dir, demo_studies: as :func:`~.readers.list_studies` (an extra dataset may be the phantom demo folder).
    Returns:
        the studies of all datasets, each dict with "sample_weight" = dataset weight / number of its studies; a main
        datalist whose studies carry a "sample_weight" already (:func:`load_split`, summing to 1) keeps
        their proportions, scaled by ``weight``.
    Raises:
        CSTMInputError: an extra dataset without "dataset_dir", an unknown key, or a negative weight.
    """
    _check_weight(weight, "dataset_weight")
    sources = [(datalist, weight)]
    if extra_datasets:
        logger.info(f"training data: {len(datalist)} studies of the main dataset at weight {weight}")
    allowed = {"dataset_dir", "weight", "dataset_layout", "info_csv"}
    for i, extra in enumerate(extra_datasets or []):
        where = f"extra_train_datasets[{i}]"
        if not isinstance(extra, dict) or "dataset_dir" not in extra or set(extra) - allowed:
            raise CSTMInputError(
                where, f"is {extra!r}", f"a dict with 'dataset_dir' and optional {sorted(allowed - {'dataset_dir'})}"
            )
        _check_weight(extra.get("weight", 1.0), where)
        folders = prepare_dataset(
            extra["dataset_dir"],
            extra.get("dataset_layout", "study"),
            None if layout_dir is None else Path(layout_dir) / f"extra{i}",
            extra.get("info_csv"),
        )
        studies = list_studies(folders, demo_dir=demo_dir, demo_studies=demo_studies)
        sources.append((studies, extra.get("weight", 1.0)))
        logger.info(f"training data: {len(studies)} studies from {extra['dataset_dir']} at weight {sources[-1][1]}")
    return [
        {**s, "sample_weight": float(w) * s.get("sample_weight", 1.0 / len(studies))}
        for studies, w in sources
        for s in studies
    ]


def _check_weight(weight: Any, where: str) -> None:
    if not isinstance(weight, (int, float)) or weight < 0:
        raise CSTMInputError(where, f"weight is {weight!r}", "a number >= 0")


def sample_weights(datalist: list[dict[str, Any]], contraction_power: float = 0.0) -> list[float]:
    """The ``sample_weight`` of each study (:func:`mix_datalists`), for ``WeightedRandomSampler``.

    Args:
        datalist: training studies with ``sample_weight`` (and ``dataset``).
        contraction_power: with ``p > 0``, each study's weight is multiplied by ``(LV EDV / LV ESV) ** p``
            (:func:`lv_contraction`), then rescaled so that each dataset keeps its share: hearts that contract strongly
            (the small ES cavities of HCM, where ES errs most) are drawn more often within their dataset.
    """
    weights = [float(s["sample_weight"]) for s in datalist]
    if not contraction_power:
        return weights
    scaled = [w * lv_contraction(s["study_dir"]) ** contraction_power for w, s in zip(weights, datalist, strict=True)]
    for name in {s.get("dataset") for s in datalist}:
        members = [i for i, s in enumerate(datalist) if s.get("dataset") == name]
        ratio = sum(weights[i] for i in members) / sum(scaled[i] for i in members)
        for i in members:
            weights[i] = scaled[i] * ratio
    return weights


def lv_contraction(study_dir: str | os.PathLike) -> float:
    """LV EDV / LV ESV of a study from its ED and ES labels, on the slices labelled at both phases (>= 1; 1 where a
    label file is missing or either volume is empty: nothing known about the contraction)."""
    study = Path(study_dir)
    info = read_info(study)
    volumes = []
    for phase in ("ed", "es"):
        path = study / label_file(phase)
        if not path.exists():
            return 1.0
        volumes.append(np.asarray(nib.load(str(path)).dataobj) == 3)  # (H, W, Z)
    num_slices = volumes[0].shape[2]
    both = sorted(
        set(labelled_slices(info, "ed", num_slices, study)) & set(labelled_slices(info, "es", num_slices, study))
    )
    ed, es = (int(v[:, :, both].sum()) for v in volumes)
    return max(1.0, ed / es) if ed and es else 1.0


if __name__ == "__main__":
    import fire

    fire.Fire(make_split)
