"""Run this bundle in MONAI Label's stock ``monaibundle`` app on a single-slice phantom cine and check the result.

Runs inside the MONAI Label environment (``tests/monailabel/install_monailabel_env.sh``):

    .venv-monailabel/bin/python tests/monailabel/check_monailabel_app.py

What it does, as a user would with ``monailabel start_server``, without opening a port:

1. writes a phantom cine slice (H, W, T) into a studies folder (MONAI Label's local datastore) and its annotation
   (the ED phase labelled, 0 elsewhere) next to it;
2. copies the stock app (``monailabel apps --download --name monaibundle``) and links this bundle as its
   ``model/cstm_bundle``;
3. gives MONAI Label the settings ``monailabel start_server -a APP -s STUDIES -c models cstm_bundle ...`` gives it
   and starts its FastAPI server app in-process (``fastapi.testclient``): ``GET /info/``, then
   ``POST /infer/cstm_bundle?image=cine&output=image`` with the annotation uploaded as the request's ``label`` (the
   way a client sends a label with an inference request), and the same request without it, which must fail saying so;
4. calls the app object as Python would, ``app.infer({"model": ..., "image": "cine", "label": <path>})``, then
   again with the ES phase drawn into the same label file (a correction): both phases must come back as drawn.

Both label maps must be (H, W, T), equal, hold the annotated phase unchanged, and reach a mean ES Dice (RV, Myo, LV)
against the phantom truth above copy-ED + 0.05. Prints the numbers; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "cstm_bundle"
MODEL = "cstm_bundle"
CLASSES = (1, 2, 3)
# The stock app's options for a bundle from a local folder: no model-zoo look-up, no SAM2 model download.
CONF = {"models": MODEL, "zoo_source": "github", "sam2": "false", "preload": "false"}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice of RV, Myo, LV between two label arrays."""
    return float(
        np.mean([2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in CLASSES])
    )


def write_inputs(root: Path, seed: int) -> tuple[Path, Path, np.ndarray, int, int]:
    """A phantom cine slice in ``root/studies/cine.nii.gz`` and its ED annotation in ``root/annotation.nii.gz``."""
    sys.path.insert(0, str(BUNDLE))
    from scripts.data import make_phantom_study

    sys.path.remove(str(BUNDLE))
    study = make_phantom_study(seed=seed)
    z = study.image.shape[2] // 2
    truth = study.label[:, :, z]  # (H, W, T)
    annotation = np.zeros(truth.shape, np.uint8)
    annotation[..., study.ed] = truth[..., study.ed]
    studies = root / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(study.image[:, :, z], study.affine), studies / "cine.nii.gz")
    nib.save(nib.Nifti1Image(annotation, study.affine), root / "annotation.nii.gz")
    return studies, root / "annotation.nii.gz", truth, study.ed, study.es


def stock_app(root: Path) -> Path:
    """The stock monaibundle app, copied by MONAI Label's own CLI, with this bundle as ``model/cstm_bundle``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monailabel.main",
            "apps",
            "--download",
            "--name",
            "monaibundle",
            "--output",
            str(root / "apps"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    app_dir = root / "apps" / "monaibundle"
    (app_dir / "model").mkdir(exist_ok=True)
    (app_dir / "model" / MODEL).symlink_to(BUNDLE, target_is_directory=True)
    return app_dir


def check(name: str, labels: np.ndarray, truth: np.ndarray, annotation: np.ndarray, ed: int, es: int) -> list[str]:
    """Failures of one returned label map; prints its numbers."""
    failures = []
    if labels.shape != truth.shape:
        return [f"{name}: label map shape {labels.shape}, expected {truth.shape} (H, W, T)"]
    if not np.array_equal(labels[..., ed], annotation[..., ed]):
        failures.append(f"{name}: the annotated phase {ed} was not reproduced exactly")
    model, copy_ed = dice(labels[..., es], truth[..., es]), dice(annotation[..., ed], truth[..., es])
    print(
        f"{name}: label map {labels.shape} {labels.dtype}; ES mean Dice (RV, Myo, LV): model {model:.3f}, "
        f"copy-ED {copy_ed:.3f}"
    )
    if not model > copy_ed + 0.05:
        failures.append(f"{name}: ES Dice {model:.3f} is not above copy-ED {copy_ed:.3f} + 0.05")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5002, help="phantom seed (5000+ are never trained on)")
    parser.add_argument("--verbose", action="store_true", help="MONAI Label's INFO log")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (one slice is small: more only contend on a busy 2-core machine)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    import monailabel
    import torch
    from fastapi.testclient import TestClient
    from monailabel.config import settings

    torch.set_num_threads(args.threads)
    print(f"monailabel {monailabel.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    root = Path(tempfile.mkdtemp(prefix="cstm_monailabel_"))
    failures: list[str] = []
    app = None
    try:
        studies, annotation_path, truth, ed, es = write_inputs(root, args.seed)
        annotation = np.asarray(nib.load(annotation_path).dataobj)
        app_dir = stock_app(root)

        # what `monailabel start_server -a APP -s STUDIES -c models cstm_bundle -c zoo_source github -c sam2 false`
        # sets before uvicorn serves monailabel.app:app
        settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = str(app_dir), str(studies)
        settings.MONAI_LABEL_APP_CONF = CONF
        sys.path.append(str(app_dir))
        from monailabel.app import app as server
        from monailabel.interfaces.utils.app import app_instance

        start = time.perf_counter()
        with TestClient(server) as client:
            print(f"app started in {time.perf_counter() - start:.1f} s")
            app = app_instance()
            info = client.get("/info/").json()
            model_info = info["models"].get(MODEL)
            print(
                f"/info/ models: {sorted(info['models'])}; {MODEL}: type {model_info and model_info['type']}, "
                f"labels {model_info and model_info['labels']}, dimension {model_info and model_info['dimension']}"
            )
            if model_info is None:
                return _fail([f"the app did not load the bundle: models {sorted(info['models'])}"])
            datastore = client.get("/datastore/?output=all").json()
            print(f"datastore images: {sorted(datastore['objects'])}")

            start = time.perf_counter()
            with open(annotation_path, "rb") as f:
                response = client.post(
                    f"/infer/{MODEL}?image=cine&output=image",
                    files={"label": ("annotation.nii.gz", f, "application/octet-stream")},
                )
            print(f"POST /infer/{MODEL}: HTTP {response.status_code} in {time.perf_counter() - start:.1f} s")
            if response.status_code != 200:
                return _fail([f"POST /infer/{MODEL} answered {response.status_code}: {response.text[:2000]}"])
            served = nib.Nifti1Image.from_bytes(_gunzip(response.content))
            labels_http = np.asarray(served.dataobj)
            failures += check("HTTP /infer", labels_http, truth, annotation, ed, es)
            image_affine = nib.load(studies / "cine.nii.gz").affine
            if not np.allclose(served.affine, image_affine, atol=1e-3):
                failures.append(f"HTTP /infer: label affine {served.affine.tolist()} differs from the image's")

            network = app._infers[MODEL]._networks["cpu"][0]  # the task's loaded network (not strict)
            shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
            loaded = network.state_dict()
            if loaded.keys() != shipped.keys() or not all(torch.equal(loaded[k], shipped[k]) for k in shipped):
                failures.append("the app's network does not hold the weights of models/model.pt")
            print(f"network: {type(network).__name__} with the {len(shipped)} tensors of models/model.pt")

            try:  # no annotation: MONAI Label answers 500; the test client re-raises the server's error
                client.post(f"/infer/{MODEL}?image=cine&output=image")
                failures.append("a request without an annotation did not fail")
            except Exception as e:  # MONAI wraps the transform's error; the chain must say what is missing
                message = next((str(x) for x in _chain(e) if "has no annotation ('label')" in str(x)), None)
                print(f"without a label: {message or type(e).__name__}")
                if message is None:
                    failures.append(f"a request without an annotation failed without saying so: {e!r}"[:500])

            start = time.perf_counter()
            result = app.infer({"model": MODEL, "image": "cine", "label": str(annotation_path), "device": "cpu"})
            print(f"app.infer: {time.perf_counter() - start:.1f} s, latencies {result['params'].get('latencies')}")
            labels_py = np.asarray(nib.load(result["file"]).dataobj)
            os.remove(result["file"])
            failures += check("app.infer", labels_py, truth, annotation, ed, es)
            if labels_py.shape == labels_http.shape and not np.array_equal(labels_py, labels_http):
                failures.append("app.infer and HTTP /infer returned different label maps")

            # the correction loop: the ES phase drawn into the same label file, beside ED, and sent again
            corrected = annotation.copy()
            corrected[..., es] = truth[..., es]
            corrected_path = annotation_path.with_name("corrected.nii.gz")
            nib.save(nib.Nifti1Image(corrected, nib.load(annotation_path).affine), corrected_path)
            result = app.infer({"model": MODEL, "image": "cine", "label": str(corrected_path), "device": "cpu"})
            labels_fix = np.asarray(nib.load(result["file"]).dataobj)
            os.remove(result["file"])
            if not (
                np.array_equal(labels_fix[..., ed], truth[..., ed])
                and np.array_equal(labels_fix[..., es], truth[..., es])
            ):
                failures.append("a label with two annotated phases did not come back with both phases as drawn")
            between = [t for t in range(truth.shape[-1]) if t not in (ed, es)]
            before, after = (
                np.mean([dice(x[..., t], truth[..., t]) for t in between]) for x in (labels_py, labels_fix)
            )
            print(f"correction (ED + ES annotated): mean Dice of the other phases {before:.3f} -> {after:.3f}")
    finally:
        observer = getattr(app.datastore(), "_observer", None) if app is not None else None
        if observer is not None:  # the datastore's file watcher, before its folder goes
            observer.stop()
            observer.join()
        shutil.rmtree(root, ignore_errors=True)
    return _fail(failures)


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _fail(failures: list[str]) -> int:
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    print("MONAI Label check " + ("failed" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
