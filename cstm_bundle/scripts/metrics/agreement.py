"""Agreement of cardiac function with the ground truth (Bland-Altman): LV/RV EDV, ESV, EF and LV mass from the ED and
ES label volumes, ours against the reference, per study and summarised as bias, limits of agreement and MAE.

Which voxels count (one rule for the reference and every method): at each phase, a class counts on the slices that
the truth labels at that phase and on which the class is drawn (:func:`~scripts.metrics.report.scored_slices` without
skipping the annotated frame: the clinical volume includes it). A slice that the truth leaves unlabelled counts for
neither side, so a method is never charged for a slice that nobody drew. Volumes, EF and mass are those of
:func:`~scripts.metrics.cardiac.cardiac_function` on that masked ED/ES pair (summation of discs, no interpolation,
1.05 g/mL). A quantity exists only where its classes are drawn: EDV needs the class at ED, ESV at ES, EF both, LV mass
the myocardium at ED (Sunnybrook: LV EDV, ESV, EF and mass; no RV row).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import SafeDictWriter, write_atomic
from .cardiac import LV, MYO, RV, cardiac_function

AGREEMENT_FILE = "function.csv"
BLAND_ALTMAN_FILE = "bland_altman.png"
AGREEMENT_COLUMNS = ("study", "group", "method", "slices", "quantity", "ours", "reference", "difference")
QUANTITIES = {
    "lv_ef_percent": ("LV EF", "%"),
    "rv_ef_percent": ("RV EF", "%"),
    "lv_edv_ml": ("LV EDV", "mL"),
    "lv_esv_ml": ("LV ESV", "mL"),
    "rv_edv_ml": ("RV EDV", "mL"),
    "rv_esv_ml": ("RV ESV", "mL"),
    "lv_mass_g": ("LV mass", "g"),
}
"""Quantity -> (name, unit), in the order of the tables and the Bland-Altman panels."""
ES_QUANTITIES = ("lv_esv_ml", "lv_ef_percent", "rv_esv_ml", "rv_ef_percent")
"""What copy-ED is scored on: its ED prediction is the truth itself (EDV, mass: no error by construction)."""
EMPTY_SLICE_QUANTITIES = {
    "heart_on_empty_slices_ed_ml": ("heart on empty slices at ED", "mL"),
    "heart_on_empty_slices_es_ml": ("heart on empty slices at ES", "mL"),
}
"""A method's RV + Myo + LV volume on the slices of a complete stack whose truth holds no structure at that phase
(beyond the base and the apex; :func:`empty_slice_volumes`): what it carries past where the heart ends."""
OVER_EMPTY_ML = 5.0
"""A stack counts as carrying the heart past its ends when its heart on empty slices exceeds this at a phase."""
LOA_Z = 1.96
"""95 % limits of agreement: bias ± 1.96 SD (Bland & Altman, Lancet 1986)."""
PANEL_SIZE = (3.6, 3.2)
PANEL_COLUMNS = 4
FIGURE_DPI = 100


def masked_phases(
    labels_ed: np.ndarray,
    labels_es: np.ndarray,
    slices_ed: Mapping[int, Sequence[int]],
    slices_es: Mapping[int, Sequence[int]],
) -> np.ndarray:
    """An ED/ES label pair reduced to what counts: class ``c`` kept on the slices ``slices_<phase>[c]``, 0 elsewhere.

    Args:
        labels_ed: (H, W, Z) labels at ED (any value outside 1-3, e.g. ``UNLABELLED``, counts as no class).
        labels_es: (H, W, Z) labels at ES.
        slices_ed: class -> the z on which it counts at ED (:func:`~scripts.metrics.report.scored_slices`).
        slices_es: the same at ES ({} when ES is not scored).
    Returns:
        (H, W, Z, 2) uint8 labels, phase 0 ED, phase 1 ES.
    """
    out = np.zeros((*labels_ed.shape, 2), dtype=np.uint8)  # (H, W, Z, 2)
    for p, (labels, slices) in enumerate(((labels_ed, slices_ed), (labels_es, slices_es))):
        for c, zs in slices.items():
            zs = list(zs)
            keep = labels[:, :, zs] == c  # (H, W, len(zs))
            out[:, :, zs, p] = np.where(keep, c, out[:, :, zs, p])
    return out


def function_values(
    labels_ed: np.ndarray,
    labels_es: np.ndarray,
    slices_ed: Mapping[int, Sequence[int]],
    slices_es: Mapping[int, Sequence[int]],
    voxel_ml: float,
) -> dict[str, float | None]:
    """The :data:`QUANTITIES` that the drawn classes define, from one ED/ES label pair on the given slices.

    Args:
        labels_ed, labels_es, slices_ed, slices_es: as :func:`masked_phases`.
        voxel_ml: voxel volume in mL (:func:`~scripts.metrics.cardiac.voxel_volume_ml`).
    Returns:
        quantity -> value (mL, %, g, rounded as :func:`~scripts.metrics.cardiac.cardiac_function`); EF is None when
        the EDV is 0. A quantity whose class is not drawn at the phase it needs is absent.
    """
    result = cardiac_function(masked_phases(labels_ed, labels_es, slices_ed, slices_es), voxel_ml, ed=0, es=1)
    out: dict[str, float | None] = {}
    for name, c in (("lv", LV), ("rv", RV)):
        if c in slices_ed:
            out[f"{name}_edv_ml"] = result[name]["edv_ml"]
        if c in slices_es:
            out[f"{name}_esv_ml"] = result[name]["esv_ml"]
        if c in slices_ed and c in slices_es:
            out[f"{name}_ef_percent"] = result[name]["ef_percent"]
    if MYO in slices_ed:
        out["lv_mass_g"] = result["lv_mass_g"]
    return out


def empty_slice_volumes(
    pred: np.ndarray, label: np.ndarray, phases: Mapping[str, int], voxel_ml: float
) -> dict[str, float]:
    """:data:`EMPTY_SLICE_QUANTITIES` of one study whose labels are complete over the stack.

    Args:
        pred: (H, W, Z, T) predicted labels.
        label: (H, W, Z, T) ground truth; a slice counts when it holds only background (0) at the phase.
        phases: "ed" / "es" -> t.
        voxel_ml: voxel volume in mL.
    Returns:
        quantity -> mL (0 where no slice is empty), rounded to 0.01.
    """
    out = {}
    for name, t in phases.items():
        empty = [z for z in range(label.shape[2]) if not label[:, :, z, t].any()]
        voxels = int(np.isin(pred[:, :, empty, t], (RV, MYO, LV)).sum()) if empty else 0
        out[f"heart_on_empty_slices_{name}_ml"] = round(voxels * voxel_ml, 2)
    return out


def agreement_rows(
    study: str,
    group: str,
    method: str,
    ours: Mapping[str, float | None],
    reference: Mapping[str, float | None],
    quantities: Iterable[str] = QUANTITIES,
) -> list[dict[str, Any]]:
    """``function.csv`` rows of one study and method: one per quantity that the reference defines (a reference EF
    of an absent structure, None, gives no row); ``ours`` None (our EDV 0) is kept with ``difference`` None."""
    rows = []
    for q in quantities:
        ref = reference.get(q)
        if q not in ours or ref is None:
            continue
        value = ours[q]
        rows.append(
            {
                "study": study,
                "group": group,
                "method": method,
                "quantity": q,
                "ours": value,
                "reference": ref,
                "difference": None if value is None else round(value - ref, 4),
            }
        )
    return rows


def agreement_stats(differences: Sequence[float | None]) -> dict[str, float | int]:
    """Bland-Altman statistics of ours − reference over studies.

    Args:
        differences: one per study; None (ours undefined) is counted in ``n_undefined`` and left out.
    Returns:
        {"n", "n_undefined", "bias" (mean), "sd" (sample SD, ddof 1; NaN for n < 2), "loa_low", "loa_high"
        (bias ∓ 1.96 SD), "mae" (mean |difference|)}; NaN where n = 0.
    """
    d = np.asarray([x for x in differences if x is not None], dtype=float)
    n = int(d.size)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return {
        "n": n,
        "n_undefined": len(differences) - n,
        "bias": bias,
        "sd": sd,
        "loa_low": bias - LOA_Z * sd,
        "loa_high": bias + LOA_Z * sd,
        "mae": float(np.abs(d).mean()) if n else math.nan,
    }


def summarize_agreement(
    rows: Sequence[Mapping[str, Any]], group: str | None = None, slices: str = "every"
) -> dict[str, Any]:
    """method -> quantity -> :func:`agreement_stats` plus "unit", "mean_ours", "mean_reference", over the rows (of
    one ``group`` if given) counted on ``slices`` ("every" or "labelled", :data:`~.report.SLICE_SETS`; rows without
    the key count as "every"); then, for complete stacks, the :data:`EMPTY_SLICE_QUANTITIES` with "n_over_5ml"."""
    selected = [r for r in rows if (group is None or r["group"] == group) and r.get("slices", "every") == slices]
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in selected):
        out[method] = {}
        for q, (_, unit) in {**QUANTITIES, **EMPTY_SLICE_QUANTITIES}.items():
            sel = [r for r in selected if r["method"] == method and r["quantity"] == q]
            if not sel:
                continue
            defined = [r for r in sel if r["ours"] is not None]
            out[method][q] = {
                **agreement_stats([r["difference"] for r in sel]),
                "unit": unit,
                "mean_ours": float(np.mean([r["ours"] for r in defined])) if defined else math.nan,
                "mean_reference": float(np.mean([r["reference"] for r in defined])) if defined else math.nan,
            }
            if q in EMPTY_SLICE_QUANTITIES:
                out[method][q]["n_over_5ml"] = sum(r["ours"] > OVER_EMPTY_ML for r in defined)
    return out


def write_agreement_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``function.csv`` (:data:`AGREEMENT_COLUMNS`), atomically; None is written as an empty cell."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = SafeDictWriter(f, AGREEMENT_COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: ("" if v is None else round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                )

    return write_atomic(path, write, overwrite)


def bland_altman_figure(rows: Sequence[Mapping[str, Any]], method: str = "model") -> Any:
    """A matplotlib Figure (Agg, no pyplot state): one Bland-Altman panel per quantity that ``method`` has, x the
    mean of ours and the reference, y ours − reference, a solid bias line and dashed 95 % limits of agreement;
    points coloured by group."""
    from matplotlib.figure import Figure

    quantities = [q for q in QUANTITIES if any(r["method"] == method and r["quantity"] == q for r in rows)]
    ncols = max(1, min(PANEL_COLUMNS, len(quantities)))
    nrows = max(1, math.ceil(len(quantities) / ncols))
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), dpi=FIGURE_DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, q in zip(axes, quantities, strict=False):
        name, unit = QUANTITIES[q]
        sel = [r for r in rows if r["method"] == method and r["quantity"] == q and r["ours"] is not None]
        for g in groups:
            pts = [r for r in sel if r["group"] == g]
            if pts:
                mean = [(r["ours"] + r["reference"]) / 2 for r in pts]
                ax.scatter(mean, [r["difference"] for r in pts], s=14, color=colours[g], label=g or None)
        stats = agreement_stats([r["difference"] for r in sel])
        if stats["n"]:
            ax.axhline(stats["bias"], color="k", linewidth=1.2)
            if not math.isnan(stats["sd"]):
                for key in ("loa_low", "loa_high"):
                    ax.axhline(stats[key], color="k", linestyle="--", linewidth=1)
        ax.axhline(0, color="0.6", linewidth=0.6, linestyle=":")
        ax.set_title(
            f"{name} (n={stats['n']}): bias {_num(stats['bias'])} {unit}, "
            f"LoA [{_num(stats['loa_low'])}, {_num(stats['loa_high'])}]",
            fontsize=8,
        )
        ax.set_xlabel(f"mean of {method} and reference ({unit})", fontsize=8)
        ax.set_ylabel(f"{method} − reference ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(quantities) :]:
        ax.set_axis_off()
    if not quantities:
        axes[0].text(0.5, 0.5, f"no function rows for {method!r}", ha="center", va="center")
    elif any(groups):
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Bland-Altman: {method} vs ground truth (n = {len({r['study'] for r in rows})} studies)", fontsize=10)
    fig.tight_layout()
    return fig


def write_bland_altman(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = False, method: str = "model"
) -> Path:
    """:func:`bland_altman_figure` as a PNG, atomically."""
    fig = bland_altman_figure(rows, method)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite)


def format_agreement_table(summary: Mapping[str, Any], slices: str = "every") -> str:
    """Markdown: per group (then "all") and method, each quantity's ``bias [95 % LoA] MAE``; where stacks are
    complete, the mean heart volume on empty slices at ED and ES (and how many stacks exceed 5 mL).

    Args:
        summary: ``summary.json`` (or :meth:`~scripts.metrics.EvaluationReport.write`'s result) with "agreement"
            ("agreement_labelled") and, per group, "groups" -> g -> "agreement".
        slices: "every" or "labelled" (:data:`~.report.SLICE_SETS`).
    """
    key = "agreement" if slices == "every" else "agreement_labelled"
    empty = list(EMPTY_SLICE_QUANTITIES) if slices == "every" else []
    columns = [f"{name} {unit}" for name, unit in QUANTITIES.values()]
    columns += [f"{EMPTY_SLICE_QUANTITIES[q][0]} mL (n > 5)" for q in empty]
    lines = [
        f"Agreement with the ground truth on {'every slice' if slices == 'every' else 'the labelled slices only'} "
        "(ours − reference over studies): bias [95% limits of agreement] MAE; '-' = not annotated",
        "| group (n) | method | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    blocks = [(f"{g} ({b['studies']})", b.get(key, {})) for g, b in summary.get("groups", {}).items()]
    blocks.append((f"all ({len(summary.get('studies', []))})", summary.get(key, {})))
    for name, agreement in blocks:
        for method, by_quantity in agreement.items():
            cells = []
            for q in QUANTITIES:
                s = by_quantity.get(q)
                if not s or not s["n"]:
                    cells.append("-")
                else:
                    cells.append(f"{_num(s['bias'])} [{_num(s['loa_low'])}, {_num(s['loa_high'])}] {_num(s['mae'])}")
            for q in empty:
                s = by_quantity.get(q)
                cells.append(f"{_num(s['mean_ours'])} ({s['n_over_5ml']} of {s['n']})" if s and s["n"] else "-")
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"
