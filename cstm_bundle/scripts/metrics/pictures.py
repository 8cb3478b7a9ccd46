"""Pictures of a segmented cine study: the volume-time curves (PNG), a slices × phases overlay montage (PNG) and the
middle slice over the cycle (animated GIF). Images are shown in array order (rows = axis 0), not re-oriented.

Colours: RV blue, myocardium green, LV blood pool red, blended at 40 % over the grey image by MONAI's
``blend_images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from monai.visualize import blend_images
from PIL import Image

from ..io import write_atomic
from .cardiac import PICTURE_FILES

COLOURS = {1: (30, 120, 255), 2: (40, 200, 80), 3: (240, 50, 50)}
LABEL_CMAP = ListedColormap(np.array([(0, 0, 0), *COLOURS.values()]) / 255)
"""Label value v at v / 3 in [0, 1] -> COLOURS[v] (background is left uncoloured)."""
ALPHA = 0.4
GAP = 2
"""Pixels between montage tiles."""
MAX_MONTAGE_SLICES = 12
CURVE_SIZE = (8.0, 4.5)
CURVE_DPI = 100


def overlay(image: np.ndarray, labels: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) image and labels -> (H, W, 3) uint8 RGB: grey image (``low``..``high`` -> 0..255) with coloured labels."""
    grey = np.clip((np.asarray(image, dtype=np.float32) - low) / max(high - low, 1e-6), 0, 1)
    # cmap is typed str, but a Colormap works; rescale_arrays=False keeps each class its colour in every frame
    rgb = blend_images(grey[None], labels[None] / len(COLOURS), ALPHA, LABEL_CMAP, rescale_arrays=False)  # (3, H, W)
    return (np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)


def montage_phases(num_phases: int, ed: int, es: int) -> list[int]:
    """ED, half-way to ES, ES, half-way back to ED (unique, in that order)."""
    to_es = (es - ed) % num_phases
    back = (ed - es) % num_phases
    picks = [ed, (ed + to_es // 2) % num_phases, es, (es + back // 2) % num_phases]
    return list(dict.fromkeys(picks))


def montage_slices(num_slices: int) -> list[int]:
    """Every slice, or :data:`MAX_MONTAGE_SLICES` evenly spaced ones."""
    if num_slices <= MAX_MONTAGE_SLICES:
        return list(range(num_slices))
    return sorted({int(round(z)) for z in np.linspace(0, num_slices - 1, MAX_MONTAGE_SLICES)})


def montage(image: np.ndarray, labels: np.ndarray, slices: Sequence[int], phases: Sequence[int]) -> np.ndarray:
    """Tiles of the overlay, one row per slice and one column per phase, :data:`GAP` black pixels apart.

    Args:
        image: (H, W, Z, T) intensities.
        labels: (H, W, Z, T) labels.
    Returns:
        (len(slices) * (H + GAP) - GAP, len(phases) * (W + GAP) - GAP, 3) uint8.
    """
    h, w = image.shape[:2]
    low, high = np.percentile(image, (1, 99))
    out = np.zeros((len(slices) * (h + GAP) - GAP, len(phases) * (w + GAP) - GAP, 3), dtype=np.uint8)
    for i, z in enumerate(slices):
        for j, t in enumerate(phases):
            out[i * (h + GAP) : i * (h + GAP) + h, j * (w + GAP) : j * (w + GAP) + w] = overlay(
                image[:, :, z, t], labels[:, :, z, t], low, high
            )
    return out


def cycle_frames(image: np.ndarray, labels: np.ndarray, z: int, min_size: int = 256) -> list[np.ndarray]:
    """The overlay of slice ``z`` at every phase, enlarged by an integer factor (nearest) to at least ``min_size``."""
    low, high = np.percentile(image[:, :, z], (1, 99))
    scale = max(1, -(-min_size // max(image.shape[:2])))
    return [
        np.kron(overlay(image[:, :, z, t], labels[:, :, z, t], low, high), np.ones((scale, scale, 1), np.uint8))
        for t in range(image.shape[3])
    ]


def volume_curve_figure(result: dict[str, Any]) -> Any:
    """A matplotlib Figure of the LV and RV blood volumes (mL) over the phases, ED and ES marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=CURVE_SIZE, dpi=CURVE_DPI)
    ax = fig.subplots()
    volumes = result["volumes_ml"]
    phases = np.arange(len(volumes["lv"]))
    ax.plot(phases, volumes["lv"], "o-", color=np.asarray(COLOURS[3]) / 255, label="LV blood pool")
    ax.plot(phases, volumes["rv"], "s-", color=np.asarray(COLOURS[1]) / 255, label="RV blood pool")
    for key, name, style in (("ed_phase", "ED", "--"), ("es_phase", "ES", ":")):
        ax.axvline(result[key], color="k", linestyle=style, linewidth=1)
        ax.annotate(
            f"{name} (t={result[key]})",
            (result[key], ax.get_ylim()[1]),
            textcoords="offset points",
            xytext=(3, -12),
            fontsize=8,
        )
    lv, rv = result["lv"], result["rv"]
    ax.set_title(
        f"LV EF {_percent(lv['ef_percent'])} (EDV {lv['edv_ml']:.0f} mL, ESV {lv['esv_ml']:.0f} mL); "
        f"RV EF {_percent(rv['ef_percent'])}",
        fontsize=10,
    )
    ax.set_xlabel("phase t")
    ax.set_ylabel("volume (mL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def write_pictures(
    image: np.ndarray, labels: np.ndarray, result: dict[str, Any], folder: str | Path, overwrite: bool = False
) -> list[Path]:
    """Write ``volume_curve.png``, ``montage.png`` and ``middle_slice.gif`` into ``folder``, atomically.

    Args:
        image: (H, W, Z, T) intensities.
        labels: (H, W, Z, T) labels.
        result: :func:`~.cardiac.cardiac_function` of ``labels``.
    Returns:
        the written paths.
    """
    folder = Path(folder)
    fig = volume_curve_figure(result)
    paths = [write_atomic(folder / PICTURE_FILES[0], lambda tmp: fig.savefig(tmp, format="png"), overwrite)]
    tiles = montage(
        image,
        labels,
        montage_slices(image.shape[2]),
        montage_phases(image.shape[3], result["ed_phase"], result["es_phase"]),
    )
    paths.append(
        write_atomic(folder / PICTURE_FILES[1], lambda tmp: Image.fromarray(tiles).save(tmp, format="PNG"), overwrite)
    )
    frames = [Image.fromarray(f) for f in cycle_frames(image, labels, image.shape[2] // 2)]
    paths.append(
        write_atomic(
            folder / PICTURE_FILES[2],
            lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0),
            overwrite,
        )
    )
    return paths
