"""Owns the anatomy of the synthetic patients of `engine.io.synth`: body geometry, spots and the rendering of a view."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_H, IMAGE_W = 1024, 256  # whole-body image size in px, rows x columns, as in BS-80K
REF_HEIGHT = 950.0  # body height (px) for which the vertical px sizes below are given
SCATTER = 0.05  # soft-tissue scatter halo: share of the tissue level

# Geometry is in the ANT frame: u = lateral px (+ = patient's left = viewer's right in ANT), t = fraction of
# body height below the vertex. POST images are the mirror image (patient's left on the viewer's left).
# (kind, group, sided, geometry, thickness px, -1 = filled); line: (u1, t1, u2, t2); ellipse: (u, t, ax, ay, angle).
SKELETON = (
    ("ellipse", "skull_fill", False, (0, 0.062, 36, 56, 0), -1),
    ("ellipse", "skull", False, (0, 0.062, 36, 56, 0), 6),
    ("arc", "skull", False, (0, 0.100, 24, 20, 0), 5),
    ("line", "sternum", False, (0, 0.19, 0, 0.30), 8),
    ("line", "clavicle", True, (8, 0.182, 58, 0.172), 5),
    ("ellipse", "scapula", True, (40, 0.235, 16, 34, -15), -1),
    ("ellipse", "joint", True, (66, 0.188, 10, 10, 0), -1),
    ("line", "limb", True, (68, 0.195, 74, 0.365), 8),
    ("ellipse", "joint", True, (74, 0.372, 8, 8, 0), -1),
    ("line", "limb", True, (72, 0.38, 77, 0.50), 4),
    ("line", "limb", True, (78, 0.38, 83, 0.495), 4),
    ("ellipse", "hand", True, (81, 0.535, 9, 18, 0), -1),
    ("ellipse", "pelvis_fill", True, (34, 0.56, 24, 32, -20), -1),
    ("ellipse", "pelvis", True, (34, 0.56, 24, 32, -20), 7),
    ("ellipse", "sacrum", False, (0, 0.57, 12, 26, 0), -1),
    ("ellipse", "pelvis", True, (16, 0.62, 12, 12, 0), 5),
    ("ellipse", "joint", True, (38, 0.60, 10, 10, 0), -1),
    ("line", "limb", True, (39, 0.605, 28, 0.775), 10),
    ("ellipse", "joint", True, (27, 0.787, 12, 10, 0), -1),
    ("line", "limb", True, (27, 0.795, 25, 0.955), 8),
    ("line", "limb", True, (33, 0.80, 31, 0.95), 4),
    ("ellipse", "joint", True, (26, 0.963, 9, 8, 0), -1),
    ("line", "hand", True, (26, 0.97, 30, 0.995), 8),
)
SILHOUETTE = (
    ("ellipse", "body", False, (0, 0.062, 44, 64, 0), -1),
    ("line", "body", False, (0, 0.11, 0, 0.19), 44),
    ("line", "body", True, (30, 0.23, 36, 0.58), 64),
    ("line", "body", True, (44, 0.20, 56, 0.18), 40),
    ("line", "body", True, (30, 0.62, 27, 0.79), 50),
    ("line", "body", True, (27, 0.79, 26, 0.97), 34),
    ("line", "body", True, (68, 0.19, 75, 0.37), 28),
    ("line", "body", True, (75, 0.37, 81, 0.53), 22),
    ("line", "body", True, (26, 0.97, 30, 1.0), 20),
)
GROUP_WEIGHTS = {  # relative uptake (ANT, POST): spine/scapulae/sacrum are nearer the back, sternum the front
    "skull_fill": (0.35, 0.3),
    "skull": (0.95, 0.9),
    "sternum": (0.9, 0.35),
    "clavicle": (0.8, 0.5),
    "scapula": (0.2, 0.5),
    "joint": (1.0, 0.9),
    "limb": (0.3, 0.3),
    "hand": (0.4, 0.35),
    "pelvis": (0.85, 0.95),
    "pelvis_fill": (0.25, 0.3),
    "sacrum": (0.55, 1.0),
    "spine": (0.75, 1.1),
    "rib": (0.35, 0.45),
    "body": (1.0, 1.0),
}
RIB_HALF_WIDTHS = (30, 40, 47, 52, 55, 56, 56, 54, 50, 45)  # px, ribs 1..10 from the top
REGIONS = {  # part -> (u, t, crop width px, crop height px) of the crop centre; sided parts use +u for L
    "head": (0, 0.062, 112, 128),
    "chest": (30, 0.29, 80, 144),
    "sho": (62, 0.19, 80, 80),
    "elbow": (74, 0.375, 64, 64),
    "pelvis": (0, 0.585, 144, 112),
    "vertbra": (0, 0.40, 64, 160),
    "knee": (27, 0.785, 64, 80),
    "ankle": (26, 0.965, 64, 64),
}


@dataclass(frozen=True)
class Body:
    """Per-patient placement: maps (u, t) body coordinates to ANT-frame pixels (x, y)."""

    cx: float
    top: float
    height: float
    width: float  # lateral scale factor

    def point(self, u: float, t: float) -> tuple[float, float]:
        """Returns the ANT-frame pixel (x, y) of body coordinates (u, t)."""
        return self.cx + u * self.width, self.top + t * self.height

    def ipoint(self, u: float, t: float) -> tuple[int, int]:
        """Returns `point` rounded to integer px, as cv2 drawing needs."""
        x, y = self.point(u, t)
        return round(x), round(y)


@dataclass(frozen=True)
class Spot:
    """A hot spot: Gaussian blob centred at (x, y) in the ANT frame, radii in px, peak per view in bone units."""

    name: str  # VOC object name: "Abnormal" (lesion) or "Normal" (physiological / benign)
    x: float
    y: float
    rx: float
    ry: float
    amp: tuple[float, float]  # (ANT, POST); 0 = invisible in that view
    boxed: tuple[bool, bool]  # whether the view's XML lists it


Tube = tuple[tuple[int, int], tuple[int, int], int, float]  # catheter segment: (x, y) ends ANT px, width px, uptake


@dataclass(frozen=True)
class Patient:
    """Everything random about one synthetic patient except the Poisson counts."""

    pid: int
    body: Body
    bone_level: float  # expected counts per px of uptake weight 1.0 (grey level = counts)
    gain: tuple[float, float]  # per-view intensity factor
    tissue_level: float  # soft-tissue counts per px
    background: float  # counts per px off the body (scatter and detector background)
    count_factor: float  # 1, or below 1 for a low-count scan
    blur: float  # Gaussian sigma px of the camera's resolution
    spots: tuple[Spot, ...]
    tubes: tuple[Tube, ...]  # a catheter, drawn at bone units like the skeleton
    is_noise: tuple[bool, bool]  # the view is a detector-noise frame: no body, no boxes
    has_regions: bool
    has_normal_xml: tuple[bool, bool]
    crop_scale: tuple[float, ...]  # one size jitter factor per REGIONS part


def rib_point(k: int, s: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Returns (u, t) along rib k at s in [0, 1] (spine to lateral end)."""
    u = 5 + RIB_HALF_WIDTHS[k] * np.sin(np.multiply(s, math.pi / 2)) ** 0.8
    t = 0.198 + 0.0185 * k - 0.008 * np.sin(np.multiply(s, math.pi)) + 0.03 * np.square(s)
    return u, t


def _bone_primitives() -> tuple:
    """Returns SKELETON plus the 24 vertebrae and 10 rib polylines."""
    vertebrae = []
    for i in range(24):  # 7 cervical, 12 thoracic, 5 lumbar
        half_width = 6 if i < 7 else (8 if i < 19 else 11)
        vertebrae.append(("ellipse", "spine", False, (0, 0.125 + 0.0175 * (i + 0.5), half_width, 6.5, 0), -1))
    ribs = [("poly", "rib", True, np.stack(rib_point(k, np.linspace(0, 1, 12)), axis=1), 4) for k in range(10)]
    return SKELETON + tuple(vertebrae) + tuple(ribs)


BONES = _bone_primitives()


def draw(body: Body, primitives: tuple, view: int) -> np.ndarray:
    """Returns a float32 (IMAGE_H, IMAGE_W) ANT-frame canvas with the primitives drawn at their group weights."""
    canvas = np.zeros((IMAGE_H, IMAGE_W), np.float32)
    for kind, group, sided, geom, thickness in primitives:
        weight = GROUP_WEIGHTS[group][view]
        px = -1 if thickness < 0 else max(1, round(thickness * body.width))
        for sign in (1, -1) if sided else (1,):
            if kind == "line":
                cv2.line(canvas, body.ipoint(sign * geom[0], geom[1]), body.ipoint(sign * geom[2], geom[3]), weight, px)
            elif kind == "poly":
                points = np.array([body.ipoint(sign * u, t) for u, t in geom], np.int32)
                cv2.polylines(canvas, [points], False, weight, px)
            else:
                axes = max(1, round(geom[2] * body.width)), max(1, round(geom[3] * body.height / REF_HEIGHT))
                end = 180 if kind == "arc" else 360
                cv2.ellipse(canvas, body.ipoint(sign * geom[0], geom[1]), axes, sign * geom[4], 0, end, weight, px)
    return canvas


def _add_spots(canvas: np.ndarray, spots: tuple[Spot, ...], view: int) -> None:
    """Adds each visible spot's Gaussian blob (sigma = 0.55 x radius) to the ANT-frame canvas in place."""
    for spot in spots:
        if spot.amp[view] <= 0:
            continue
        sx, sy = 0.55 * spot.rx, 0.55 * spot.ry
        x0, x1 = max(0, math.floor(spot.x - 3 * sx)), min(IMAGE_W, math.ceil(spot.x + 3 * sx) + 1)
        y0, y1 = max(0, math.floor(spot.y - 3 * sy)), min(IMAGE_H, math.ceil(spot.y + 3 * sy) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-np.square(np.arange(x0, x1) - spot.x) / (2 * sx * sx))
        gy = np.exp(-np.square(np.arange(y0, y1) - spot.y) / (2 * sy * sy))
        canvas[y0:y1, x0:x1] += (spot.amp[view] * np.outer(gy, gx)).astype(np.float32)


def view_x(x: float, view: int) -> float:
    """Returns the x of an ANT-frame x in view 0 (ANT) or 1 (POST, mirrored)."""
    return x if view == 0 else IMAGE_W - 1 - x


def lesion_mask(patient: Patient, view: int) -> np.ndarray:
    """Returns the uint8 (IMAGE_H, IMAGE_W) lesion label map of a view, in that view's frame.

    Pixel value k > 0: inside the k-th `Abnormal` object of the view's VOC XML (document order), i.e. within the
    lesion's radius (rx, ry) of its centre, where its uptake is above exp(-1 / (2 * 0.55^2)) = 19 % of its peak;
    0: no lesion. Where two lesions overlap the later one wins.
    """
    mask = np.zeros((IMAGE_H, IMAGE_W), np.uint8)
    rows, cols = np.ogrid[:IMAGE_H, :IMAGE_W]
    lesions = [s for s in patient.spots if s.name == "Abnormal" and s.boxed[view]]
    for k, spot in enumerate(lesions, start=1):
        mask[np.square((cols - view_x(spot.x, view)) / spot.rx) + np.square((rows - spot.y) / spot.ry) <= 1] = k
    return mask


def render_tissue(patient: Patient) -> np.ndarray:
    """Returns the float32 expected counts shared by both views, ANT frame: soft tissue, its scatter, background.

    The soft tissue is the silhouette blurred by sigma 7 px plus a wide (sigma 24 px) scatter halo, both
    computed at quarter resolution: they are smooth, and this keeps the generator fast.
    """
    small = cv2.resize(draw(patient.body, SILHOUETTE, 0), (IMAGE_W // 4, IMAGE_H // 4), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 7 / 4) + np.float32(SCATTER) * cv2.GaussianBlur(small, (0, 0), 6)
    tissue = cv2.resize(small, (IMAGE_W, IMAGE_H), interpolation=cv2.INTER_LINEAR)
    return tissue * np.float32(patient.tissue_level) + np.float32(patient.background)


def render_noise_frame(rng: np.random.Generator) -> np.ndarray:
    """Returns a uint8 detector-noise frame: a faint Poisson floor and 40-600 sparse bright single-pixel specks."""
    image = rng.poisson(rng.uniform(0.002, 0.02), (IMAGE_H, IMAGE_W))
    specks = int(rng.integers(40, 600))
    where = rng.integers(0, IMAGE_H, specks), rng.integers(0, IMAGE_W, specks)
    np.add.at(image, where, rng.geometric(1 / 12, specks))
    return np.clip(image, 0, 255).astype(np.uint8)


def render_view(patient: Patient, view: int, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Returns the uint8 (IMAGE_H, IMAGE_W) counts image of view 0 (ANT) or 1 (POST, mirrored left/right).

    Expected counts per px (bone, tubes and spots through the camera blur, plus `tissue`) are Poisson sampled:
    grey level = counts, mostly 0 off the body, as in real scans.
    """
    if patient.is_noise[view]:
        return render_noise_frame(rng)
    bone = draw(patient.body, BONES, view)
    for start, end, width, uptake in patient.tubes:
        cv2.line(bone, start, end, uptake, width)
    bone = cv2.GaussianBlur(bone, (0, 0), patient.blur)
    _add_spots(bone, patient.spots, view)
    expected = bone * np.float32(patient.bone_level * patient.gain[view]) + tissue
    counts = rng.poisson(expected * np.float32(patient.count_factor))
    image = np.clip(counts, 0, 255).astype(np.uint8)
    return image if view == 0 else np.ascontiguousarray(image[:, ::-1])
