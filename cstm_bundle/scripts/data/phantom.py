"""Synthetic 4D short-axis cine MRI phantom: the embedded default data set (SPEC "Data conventions").

All geometry lives in continuous mm coordinates and the slices are fixed in space while the heart moves through them.
Scene frame: X runs down the rows (anterior to posterior), Y along the columns, z from the base slice (z = 0) towards
the apex. The LV cavity and the epicardium are truncated prolate spheroids sharing the base plane; the RV cavity is an
ellipse offset to one side minus the LV epicardium (a crescent sharing the septum); its thin free wall is background,
as in ACDC. During systole the base descends towards the almost fixed apex, the LV shrinks at constant myocardial
volume (so the wall thickens) and the RV contracts. Labels (0 bg, 1 RV, 2 Myo, 3 LV) are drawn at each slice centre;
the image averages three sub-slice positions (through-plane partial volume) and adds atria above the base plane,
distractors with blood-like intensity (descending aorta on every slice, stomach, liver), coil shading, a slight blur,
Rician noise and a per-slice in-plane shift (breath-hold misalignment, shared by image and label).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
from monai.data.utils import affine_to_spacing
from scipy import ndimage

from ..errors import CSTMInputError
from ..io import save_json, save_nifti
from .study import IMAGE_FILE, INFO_FILE, label_file

logger = logging.getLogger(__name__)

_TRUNC = 0.2  # the spheroid's equator lies 0.2 lengths above the base plane (truncated prolate)
_BULLET = 3.0  # radius profile sqrt(1 - w^3): blunter than an ellipse (2), like a real LV
_SUBSLICE = (-0.3, 0.0, 0.3)  # sub-slice offsets (in slice spacings) averaged into the image
_ATRIUM_DEPTH = 35.0  # mm of atria drawn above the base plane
_RV_WALL, _ATRIUM_WALL, _FAT = 2.5, 2.5, 3.0  # mm


class PhantomStudy(NamedTuple):
    """One synthetic cine study.

    Attributes:
        image: (H, W, Z, T) float32 magnitude image, roughly 0..1.5 (not normalised).
        label: (H, W, Z, T) uint8 ground truth at every phase: 0 bg, 1 RV, 2 Myo, 3 LV blood pool.
        affine: (4, 4) float64 voxel-to-world (RAS) matrix, ACDC-like diag(-dx, -dy, dz); z runs from base to apex.
        ed: end-diastole phase (0).
        es: end-systole phase.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    ed: int
    es: int


class _Heart(NamedTuple):
    """Per-study heart parameters (mm and radians, scene frame, ED unless stated)."""

    centre: np.ndarray  # (2,) LV centre
    shift: np.ndarray  # (2,) in-plane displacement of the LV centre at ES
    angle: float  # orientation of the (slightly elliptic) LV cross-section
    ellipticity: float
    rv_angle: float  # direction from the LV centre to the RV
    rc: float  # equatorial cavity radius
    wall: float  # wall thickness
    z_base: float  # base plane
    z_apex: float  # epicardial apex
    descent: float  # base descent at ES
    apex_wall: tuple[float, float]  # apical wall thickness at ED and ES
    ef: float  # LV ejection fraction
    rv_size: float  # RV ellipse semi-axis towards the RV
    rv_aspect: float  # RV ellipse: perpendicular / radial semi-axis
    rv_shrink: float  # linear RV contraction at ES
    rv_length: float  # RV length / LV length


class _Motion(NamedTuple):
    """Heart state per phase; every field is (T, 1, 1) so it broadcasts against (H, W) grids."""

    cx: np.ndarray
    cy: np.ndarray
    z_base: np.ndarray
    z_apex_epi: np.ndarray
    z_apex_cav: np.ndarray
    rc: np.ndarray
    re: np.ndarray
    rv_scale: np.ndarray


def _profile(u: np.ndarray) -> np.ndarray:
    """Relative radius of a truncated (blunt) prolate spheroid at normalised depth u (0 base, 1 apex); 0 outside."""
    w = np.clip((u + _TRUNC) / (1.0 + _TRUNC), 0.0, 1.0)
    return np.where((u >= 0) & (u < 1), np.sqrt(1.0 - w**_BULLET), 0.0)


def _cycle(num_phases: int, es: int) -> np.ndarray:
    """Contraction c(t) in [0, 1]: 0 at ED (t = 0), 1 at ES, smooth and periodic; (T,)."""
    phase, s = np.arange(num_phases) / num_phases, es / num_phases
    systole = 0.5 * (1.0 - np.cos(np.pi * phase / s))
    filling = np.clip((phase - s) / (1.0 - s), 0.0, 1.0) ** 0.7  # rapid early filling, then diastasis
    return np.where(phase <= s, systole, 0.5 * (1.0 + np.cos(np.pi * filling)))


def _sample_heart(rng: np.random.Generator, z_last: float, slice_spacing: float) -> _Heart:
    """Draw the heart of one study; ``z_last`` is the z (mm) of the most apical slice."""
    rc, wall = 24.0 * rng.uniform(0.85, 1.15), rng.uniform(6.5, 9.0)
    return _Heart(
        centre=rng.uniform(-12.0, 12.0, 2),
        shift=rng.uniform(-3.0, 3.0, 2),
        angle=rng.uniform(0.0, np.pi),
        ellipticity=rng.uniform(1.0, 1.1),
        rv_angle=np.pi + 0.9 + rng.uniform(-0.35, 0.35),
        rc=rc,
        wall=wall,
        z_base=-rng.uniform(0.4, 0.8) * slice_spacing,
        z_apex=z_last + rng.uniform(0, 10),
        descent=rng.uniform(10.0, 14.0),
        apex_wall=(rng.uniform(6.0, 8.0), rng.uniform(10.0, 13.0)),
        ef=rng.uniform(0.48, 0.68),
        rv_size=(rc + wall) * rng.uniform(0.8, 0.95),
        rv_aspect=rng.uniform(1.7, 2.0),
        rv_shrink=rng.uniform(0.12, 0.2),
        rv_length=rng.uniform(0.75, 0.85),
    )


def _motion(h: _Heart, c: np.ndarray) -> _Motion:
    """Heart state over the cycle at contraction ``c`` (T,): LV volume follows the EF, myocardial volume is kept."""
    c = c[:, None, None]
    z_base = h.z_base + h.descent * c
    z_apex_epi = h.z_apex - 1.5 * c
    z_apex_cav = z_apex_epi - (h.apex_wall[0] + (h.apex_wall[1] - h.apex_wall[0]) * c)
    lc_ed, le_ed = h.z_apex - h.apex_wall[0] - h.z_base, h.z_apex - h.z_base
    myo = (h.rc + h.wall) ** 2 * le_ed - h.rc**2 * lc_ed  # myocardial volume / (pi * profile integral)
    lc, le = z_apex_cav - z_base, z_apex_epi - z_base
    rc2 = h.rc**2 * (1.0 - h.ef * c) * lc_ed / lc  # V = pi * k * r^2 * L for a spheroid of fixed profile
    centre = h.centre[:, None, None, None] + h.shift[:, None, None, None] * c
    return _Motion(
        cx=centre[0],
        cy=centre[1],
        z_base=z_base,
        z_apex_epi=z_apex_epi,
        z_apex_cav=z_apex_cav,
        rc=np.sqrt(rc2),
        re=np.sqrt((myo + rc2 * lc) / le),
        rv_scale=1.0 - h.rv_shrink * c,
    )


def _ellipse_sdf(
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray | float,
    cy: np.ndarray | float,
    angle: float,
    a: np.ndarray | float,
    b: np.ndarray | float,
) -> np.ndarray:
    """First-order signed distance (mm, < 0 inside) to an ellipse with semi-axes a (along ``angle``) and b.

    All arguments broadcast, e.g. x, y (H, W) against centres and semi-axes (T, 1, 1); a or b <= 0 means absent
    (an ellipse absent everywhere gives the scalar 1e3). Computed in float32 for speed.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    present = (a > 0) & (b > 0)
    if not present.any():
        return np.float32(1e3)
    du, dv = x - np.asarray(cx, np.float32), y - np.asarray(cy, np.float32)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    a, b = np.where(present, a, np.float32(1)), np.where(present, b, np.float32(1))
    ua, vb = (du * cos + dv * sin) / a, (dv * cos - du * sin) / b
    grad = 2.0 * np.sqrt((ua / a) ** 2 + (vb / b) ** 2) + 1e-6
    return np.where(present, (ua * ua + vb * vb - 1.0) / grad, np.float32(1e3))


def _heart_sdfs(h: _Heart, m: _Motion, x: np.ndarray, y: np.ndarray, z: float) -> dict[str, np.ndarray]:
    """Signed distances (mm) of the cardiac structures at height z; each (T, H, W) from x, y (H, W)."""
    e = np.sqrt(h.ellipticity)
    u = (z - m.z_base) / (m.z_apex_epi - m.z_base)
    rc = m.rc * _profile((z - m.z_base) / (m.z_apex_cav - m.z_base))
    re = m.re * _profile(u)
    lam = m.rv_scale * _profile((z - m.z_base) / (h.rv_length * (m.z_apex_epi - m.z_base)))
    d = np.array([np.cos(h.rv_angle), np.sin(h.rv_angle)])
    rv_off = 0.2 * re + 0.8 * lam * h.rv_size
    depth = np.clip((m.z_base - z) / _ATRIUM_DEPTH, 0.0, 1.0)  # 0 at the base plane, 1 at the atrial roof
    above = (z < m.z_base) & (depth < 1.0)
    r_la = np.where(above, 0.9 * h.rc * np.sqrt(1.0 - depth**2), 0.0)
    r_ra = np.where(above, 0.8 * h.rv_size * np.sqrt(1.0 - depth**2), 0.0)
    pap_r = np.where((u > 0.2) & (u < 0.75), 3.5 * h.rc / 24.0, 0.0)
    sdf = {
        "cav": _ellipse_sdf(x, y, m.cx, m.cy, h.angle, rc * e, rc / e),
        "epi": _ellipse_sdf(x, y, m.cx, m.cy, h.angle, re * e, re / e),
        "rv": _ellipse_sdf(
            x, y, m.cx + d[0] * rv_off, m.cy + d[1] * rv_off, h.rv_angle, lam * h.rv_size, lam * h.rv_size * h.rv_aspect
        ),
        "la": _ellipse_sdf(x, y, m.cx - d[0] * 0.3 * h.rc, m.cy - d[1] * 0.3 * h.rc, h.angle, r_la, r_la),
        "ra": _ellipse_sdf(
            x,
            y,
            m.cx + d[0] * (h.rc + 1.1 * h.rv_size),
            m.cy + d[1] * (h.rc + 1.1 * h.rv_size),
            h.rv_angle,
            r_ra,
            r_ra * 1.2,
        ),
    }
    for name, side in (("pap_a", -0.6), ("pap_b", 0.6)):  # papillary muscles opposite the RV (labelled LV, as ACDC)
        p = d * np.cos(np.pi + side) + np.array([-d[1], d[0]]) * np.sin(np.pi + side)
        sdf[name] = _ellipse_sdf(x, y, m.cx + p[0] * 0.6 * rc, m.cy + p[1] * 0.6 * rc, 0.0, pap_r, pap_r)
    return sdf


def _heart_label(sdf: dict[str, np.ndarray]) -> np.ndarray:
    """ACDC label (T, H, W) uint8 from the signed distances: LV cavity over myocardium over RV cavity."""
    label = np.zeros(sdf["epi"].shape, np.uint8)
    label[sdf["rv"] < 0] = 1
    label[sdf["epi"] < 0] = 2
    label[sdf["cav"] < 0] = 3
    return label


def _paint_heart(
    background: np.ndarray,
    sdf: dict[str, np.ndarray],
    tone: dict[str, float],
    fat_weight: np.ndarray,
    tex: np.ndarray,
    pixel_spacing: float,
) -> np.ndarray:
    """Composite the heart over ``background`` (H, W) with soft (partial-volume) edges; returns (T, H, W)."""

    def soft(d: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - d / pixel_spacing, 0.0, 1.0)

    blood, myo = tone["blood"] * (1.0 + 0.03 * tex), tone["myo"] * (1.0 + 0.08 * tex)
    fat = np.minimum(sdf["epi"], sdf["rv"] - _RV_WALL) - _FAT
    img = background + soft(fat) * fat_weight * (tone["fat"] - background)
    layers = [
        (sdf["la"] - _ATRIUM_WALL, myo),
        (sdf["la"], blood),
        (sdf["ra"] - _ATRIUM_WALL, myo),
        (sdf["ra"], 0.95 * blood),
        (sdf["rv"] - _RV_WALL, myo),
        (sdf["rv"], 0.95 * blood),
        (sdf["epi"], myo),
        (sdf["cav"], blood),
        (sdf["pap_a"], myo),
        (sdf["pap_b"], myo),
    ]
    for d, value in layers:
        if np.ndim(d):  # skip structures absent from this slice
            img = img + soft(d) * (value - img)
    return img


def _sample_tones(rng: np.random.Generator) -> dict[str, float]:
    """Tissue intensities of one study (before coil shading and noise)."""
    names = ("blood", "myo", "fat", "muscle", "tissue", "lung", "liver", "stomach", "aorta", "bone")
    low = (0.9, 0.22, 0.75, 0.28, 0.38, 0.03, 0.55, 1.0, 1.1, 0.45)
    high = (1.1, 0.35, 0.95, 0.38, 0.5, 0.08, 0.7, 1.15, 1.25, 0.6)
    tone = dict(zip(names, rng.uniform(low, high).tolist(), strict=True))
    tone["stomach"] *= tone["blood"]  # distractors with LV-like intensity (aorta: inflow enhancement)
    tone["aorta"] *= tone["blood"]
    return tone


def _background(
    x: np.ndarray, y: np.ndarray, z_rel: float, tone: dict[str, float], organs: np.ndarray, tex: np.ndarray
) -> np.ndarray:
    """Static anatomy around the heart on one slice: body, chest wall, lungs, spine, aorta, liver, stomach; (H, W).

    Args:
        x, y: (H, W) scene coordinates in mm.
        z_rel: slice position, 0 at the base slice and 1 at the apical slice (liver and stomach grow apically).
        organs: (4,) per-study jitter: liver and stomach onsets (z_rel), aorta radius (mm), aorta offset (mm).
    """
    body = _ellipse_sdf(x, y, 15.0, 0.0, 0.0, 118.0, 150.0)
    img = np.where(body < -20, tone["tissue"] * (1 + 0.15 * tex), np.where(body < -10, tone["muscle"], tone["fat"]))
    img = np.where(body < 0, img, 0.0)
    for side in (-1.0, 1.0):
        img = np.where(_ellipse_sdf(x, y, 0.0, 80.0 * side, 0.0, 75.0, 42.0) < 0, tone["lung"] * (1 + 0.3 * tex), img)
    liver_r = np.clip((z_rel - organs[0]) / 0.4, 0.0, 1.0)
    stomach_r = np.clip((z_rel - organs[1]) / 0.3, 0.0, 1.0)
    shapes = [
        (_ellipse_sdf(x, y, 35.0, -75.0, 0.3, 70.0 * liver_r, 60.0 * liver_r), tone["liver"] * (1 + 0.06 * tex)),
        (_ellipse_sdf(x, y, 40.0, 80.0, -0.4, 30.0 * stomach_r, 22.0 * stomach_r), tone["stomach"]),
        (_ellipse_sdf(x, y, 95.0, -10.0, 0.0, 16.0, 16.0) - 3.0, 0.1),
        (_ellipse_sdf(x, y, 95.0, -10.0, 0.0, 16.0, 16.0), tone["bone"] * (1 + 0.1 * tex)),
        (_ellipse_sdf(x, y, 70.0, 20.0 + organs[3], 0.0, organs[2], organs[2]), tone["aorta"]),
    ]
    for d, value in shapes:
        img = np.where(d < 0, value, img)
    return img


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative coil shading (H, W, Z), geometric mean 1, roughly 0.6..1.5."""
    h, w, nz = shape
    x, y, z = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), np.linspace(0, 1, nz), indexing="ij")
    coef = rng.uniform([-0.3, -0.3, -0.2, -0.2, -0.2, -0.15], [0.3, 0.3, 0.2, 0.2, 0.2, 0.15])
    log_bias = sum(c * f for c, f in zip(coef, (x, y, x * x, y * y, x * y, z), strict=True))
    return np.exp(log_bias - log_bias.mean())


def _check_args(
    image_size: tuple[int, int], num_slices: int, num_phases: int, pixel_spacing: float, slice_spacing: float
) -> None:
    """Raise CSTMInputError for a study the phantom cannot draw."""
    if len(image_size) != 2 or min(image_size) < 16:
        raise CSTMInputError(None, f"phantom image_size {tuple(image_size)} is too small", "two sizes >= 16")
    if num_slices < 2 or num_phases < 4:
        raise CSTMInputError(
            None, f"phantom num_slices={num_slices}, num_phases={num_phases}", "num_slices >= 2 and num_phases >= 4"
        )
    if pixel_spacing <= 0 or slice_spacing <= 0:
        raise CSTMInputError(None, f"phantom spacing ({pixel_spacing}, {slice_spacing}) mm", "positive spacings")


def make_phantom_study(
    seed: int,
    image_size: tuple[int, int] = (128, 128),
    num_slices: int = 9,
    num_phases: int = 20,
    pixel_spacing: float = 1.8,
    slice_spacing: float = 8.0,
) -> PhantomStudy:
    """Draw one synthetic short-axis cine study, deterministic in ``seed``.

    Args:
        seed: random seed; the same seed and arguments give the same study, bit for bit.
        image_size: (H, W) in pixels.
        num_slices: Z, short-axis slices from base (z = 0) to apex.
        num_phases: T, cardiac phases; ED is phase 0.
        pixel_spacing: in-plane spacing in mm.
        slice_spacing: distance between slice centres in mm.
    Returns:
        a PhantomStudy with image (H, W, Z, T) float32 and label (H, W, Z, T) uint8.
    Raises:
        CSTMInputError: sizes or spacings the phantom cannot draw.
    """
    _check_args(image_size, num_slices, num_phases, pixel_spacing, slice_spacing)
    rng = np.random.default_rng(seed)
    (height, width), z_last = image_size, (num_slices - 1) * slice_spacing
    es = int(np.clip(round(num_phases * rng.uniform(0.34, 0.40)), 1, num_phases - 1))
    heart, tone = _sample_heart(rng, z_last, slice_spacing), _sample_tones(rng)
    organs = rng.uniform([0.3, 0.4, 9.0, -6.0], [0.6, 0.7, 12.0, 6.0])
    motion = _motion(heart, _cycle(num_phases, es))
    rotation, fat_angle = rng.uniform(-0.45, 0.45), rng.uniform(0.0, 2 * np.pi)
    shifts = np.clip(np.round(rng.normal(0.0, 1.5, (num_slices, 2))), -4, 4) * pixel_spacing  # mm, per slice
    grid_x, grid_y = np.meshgrid(
        (np.arange(height) - (height - 1) / 2) * pixel_spacing,
        (np.arange(width) - (width - 1) / 2) * pixel_spacing,
        indexing="ij",
    )
    image = np.empty((height, width, num_slices, num_phases), np.float32)
    label = np.empty((height, width, num_slices, num_phases), np.uint8)
    for k in range(num_slices):
        gx, gy = grid_x - shifts[k, 0], grid_y - shifts[k, 1]  # breath-hold shift: the anatomy moves in the FOV
        x = (gx * np.cos(rotation) - gy * np.sin(rotation)).astype(np.float32)
        y = (gx * np.sin(rotation) + gy * np.cos(rotation)).astype(np.float32)
        tex = ndimage.gaussian_filter(rng.standard_normal((height, width)), 2.5)
        tex /= tex.std() + 1e-6
        angle = np.arctan2(y - heart.centre[1], x - heart.centre[0])
        fat_weight = np.clip(0.4 + np.cos(angle - fat_angle), 0.0, 1.0)
        background = _background(x, y, k / (num_slices - 1), tone, organs, tex)
        frames = np.zeros((num_phases, height, width))
        for offset in _SUBSLICE:
            sdf = _heart_sdfs(heart, motion, x, y, k * slice_spacing + offset * slice_spacing)
            frames += _paint_heart(background, sdf, tone, fat_weight, tex, pixel_spacing) / len(_SUBSLICE)
            if offset == 0.0:
                label[:, :, k] = _heart_label(sdf).transpose(1, 2, 0)
        image[:, :, k] = frames.transpose(1, 2, 0)
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0.0, 0.0))
    image *= _bias_field(rng, (height, width, num_slices)).astype(np.float32)[..., None]
    sigma = rng.uniform(0.04, 0.08)
    noise = rng.normal(0.0, sigma, (2,) + image.shape).astype(np.float32)
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
    affine = np.diag([-pixel_spacing, -pixel_spacing, slice_spacing, 1.0])
    affine[:3, 3] = [(height - 1) / 2 * pixel_spacing, (width - 1) / 2 * pixel_spacing, 0.0]  # centre at the origin
    return PhantomStudy(image=image.astype(np.float32), label=label, affine=affine, ed=0, es=es)


def write_phantom_studies(
    output_dir: str, num_studies: int = 4, seed: int = 0, overwrite: bool = False, **study_kwargs
) -> list[str]:
    """Write phantom studies in the study-folder layout (SPEC "Interfaces") plus ``datalist.json``.

    Study i (seed ``seed + i``) goes to ``<output_dir>/phantom_{seed+i:03d}/``: image.nii.gz (H, W, Z, T) float32,
    label_ed.nii.gz and label_es.nii.gz (H, W, Z) uint8, label_4d_gt.nii.gz (H, W, Z, T) uint8 and info.json.

    Args:
        output_dir: the folder to write into (created when missing).
        num_studies: how many studies.
        seed: seed of the first study.
        overwrite: replace existing files; otherwise any existing output raises before anything is written.
        study_kwargs: passed to :func:`make_phantom_study` (image_size, num_slices, ...).
    Returns:
        the study folder paths.
    Raises:
        CSTMInputError: an output file exists and ``overwrite`` is False, or the folder is not writable.
    """
    root = Path(output_dir)
    names = [f"phantom_{seed + i:03d}" for i in range(num_studies)]
    files = (IMAGE_FILE, label_file("ed"), label_file("es"), "label_4d_gt.nii.gz", INFO_FILE)
    targets = [root / n / f for n in names for f in files] + [root / "datalist.json"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise CSTMInputError(existing[0], "output file exists", "a new output folder, or overwrite=True")
    for i, name in enumerate(names):
        study = make_phantom_study(seed + i, **study_kwargs)
        folder = root / name
        spacing = affine_to_spacing(study.affine, r=3, suppress_zeros=False).tolist()
        save_nifti(study.image, study.affine, folder / IMAGE_FILE, overwrite)
        save_nifti(study.label[..., study.ed], study.affine, folder / label_file("ed"), overwrite)
        save_nifti(study.label[..., study.es], study.affine, folder / label_file("es"), overwrite)
        save_nifti(study.label, study.affine, folder / "label_4d_gt.nii.gz", overwrite)
        info = {"ed": study.ed, "es": study.es, "spacing": spacing, "phantom_seed": seed + i, "base_first": True}
        save_json(info, folder / INFO_FILE, overwrite)
        logger.info(f"phantom study {i + 1}/{num_studies} written to {folder} (es={study.es})")
    save_json({"studies": names}, root / "datalist.json", overwrite)
    return [str(root / n) for n in names]


def main(output_dir: str, num_studies: int = 4, seed: int = 0, overwrite: bool = False) -> None:
    """CLI: ``python -m scripts.data.phantom OUT --num_studies 3`` (run from cstm_bundle/)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_phantom_studies(output_dir, num_studies=num_studies, seed=seed, overwrite=overwrite)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
