"""Owns the synthetic patients of `engine.synth`: body geometry, hot spots and the rendering of one view."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_H, IMAGE_W = 1024, 256  # whole-body image size in px, rows x columns (DESIGN.md §2)
ABNORMAL_PATIENT_RATE = 0.35  # BS-80K: ANT 1183 / 3247 abnormal (DESIGN.md §2)
NORMAL_XML_RATE = 0.75  # share of normal images that still get an XML (Normal boxes only)
OCCULT_LESION_RATE = 0.1  # a lesion invisible in one view, so ANT and POST labels sometimes differ, as in BS-80K
REF_HEIGHT = 950.0  # body height (px) for which the vertical px sizes below are given

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
    "skull_fill": (0.55, 0.5),
    "skull": (0.95, 0.9),
    "sternum": (0.9, 0.35),
    "clavicle": (0.8, 0.5),
    "scapula": (0.2, 0.5),
    "joint": (1.0, 0.9),
    "limb": (0.6, 0.6),
    "hand": (0.5, 0.45),
    "pelvis": (0.85, 0.95),
    "pelvis_fill": (0.35, 0.4),
    "sacrum": (0.55, 1.0),
    "spine": (0.75, 1.1),
    "rib": (0.5, 0.65),
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


@dataclass(frozen=True)
class Patient:
    """Everything random about one synthetic patient except the image noise."""

    pid: int
    body: Body
    bone_level: float  # grey value of uptake weight 1.0
    gain: tuple[float, float]  # per-view intensity factor
    tissue_level: float  # soft-tissue grey value
    counts: float  # Poisson counts per grey level (lower = noisier)
    blur: float  # Gaussian sigma px of the camera's resolution
    spots: tuple[Spot, ...]
    has_regions: bool
    has_normal_xml: tuple[bool, bool]
    crop_scale: tuple[float, ...]  # one size jitter factor per REGIONS part


def _rib_point(k: int, s: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
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
    ribs = [("poly", "rib", True, np.stack(_rib_point(k, np.linspace(0, 1, 12)), axis=1), 4) for k in range(10)]
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
        gx = np.exp(-np.square(np.arange(x0, x1) - spot.x) / (2 * sx * sx))
        gy = np.exp(-np.square(np.arange(y0, y1) - spot.y) / (2 * sy * sy))
        canvas[y0:y1, x0:x1] += (spot.amp[view] * np.outer(gy, gx)).astype(np.float32)


def render_tissue(patient: Patient) -> np.ndarray:
    """Returns the float32 soft-tissue glow (grey values) shared by both views, ANT frame."""
    return cv2.GaussianBlur(draw(patient.body, SILHOUETTE, 0), (0, 0), 7) * np.float32(patient.tissue_level)


def render_view(patient: Patient, view: int, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Returns the uint8 (IMAGE_H, IMAGE_W) image of view 0 (ANT) or 1 (POST, mirrored left/right)."""
    bone = cv2.GaussianBlur(draw(patient.body, BONES, view), (0, 0), patient.blur)
    _add_spots(bone, patient.spots, view)
    expected = bone * np.float32(patient.bone_level * patient.gain[view]) + tissue + np.float32(0.6)  # background ~0-3
    noisy = rng.poisson(expected * patient.counts).astype(np.float32) / np.float32(patient.counts)
    image = np.clip(np.rint(cv2.GaussianBlur(noisy, (0, 0), 0.6)), 0, 255).astype(np.uint8)
    return image if view == 0 else np.ascontiguousarray(image[:, ::-1])


def _physiological_spots(rng: np.random.Generator, body: Body) -> list[Spot]:
    """Returns bladder, kidneys and sometimes an injection site and a degenerative joint spot (all Normal)."""
    x, y = body.point(rng.uniform(-4, 4), 0.612)
    amp = (rng.uniform(1.6, 3.2), rng.uniform(0.9, 2.0))
    spots = [Spot("Normal", x, y, rng.uniform(14, 24) * body.width, rng.uniform(10, 17), amp, (True, True))]
    for sign in (1, -1):
        x, y = body.point(sign * rng.uniform(25, 31), rng.uniform(0.395, 0.415))
        amp = (rng.uniform(0.1, 0.35), rng.uniform(0.3, 1.1))
        spots.append(Spot("Normal", x, y, 9 * body.width, 17, amp, (False, bool(amp[1] >= 0.6))))
    sign, is_injected, is_degenerate = rng.choice((1, -1)), rng.random() < 0.3, rng.random() < 0.3
    x, y = body.point(sign * rng.uniform(74, 80), rng.uniform(0.38, 0.48))
    radius, amp = rng.uniform(3, 7), rng.uniform(1.5, 4.0) * rng.uniform(0.7, 1.1, 2)
    if is_injected:  # tracer injected into an arm vein
        spots.append(Spot("Normal", x, y, radius, radius, (float(amp[0]), float(amp[1])), (True, True)))
    u, t = ((27, 0.785), (64, 0.19))[int(rng.integers(2))]
    x, y = body.point(-sign * (u + rng.uniform(-3, 3)), t + rng.uniform(-0.006, 0.006))
    radius, amp = rng.uniform(4, 8), rng.uniform(0.5, 1.4, 2)
    if is_degenerate:  # arthrosis of a knee or shoulder: benign, looks like a lesion
        spots.append(Spot("Normal", x, y, radius, radius, (float(amp[0]), float(amp[1])), (True, True)))
    return spots


def _lesion_site(rng: np.random.Generator) -> tuple[float, float]:
    """Returns (u, t) of a lesion on bone: spine, rib, pelvis, proximal femur or skull."""
    site, sign = rng.choice(5, p=(0.35, 0.25, 0.2, 0.1, 0.1)), rng.choice((1, -1))
    if site == 0:
        return rng.uniform(-3, 3), rng.uniform(0.14, 0.54)
    if site == 1:
        u, t = _rib_point(int(rng.integers(10)), rng.uniform(0.25, 0.95))
        return sign * float(u), float(t)
    if site == 2:
        angle, rho = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.9)
        return sign * (34 + 24 * rho * math.cos(angle)), 0.56 + 32 * rho * math.sin(angle) / REF_HEIGHT
    if site == 3:
        s = rng.uniform(0, 0.6)
        return sign * (39 - 11 * s), 0.605 + 0.17 * s
    angle, rho = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 0.95)
    return 36 * rho * math.cos(angle), 0.062 + 56 * rho * math.sin(angle) / REF_HEIGHT


def _lesions(rng: np.random.Generator, body: Body, lesion: tuple[float, float]) -> list[Spot]:
    """Returns 1-4 Abnormal spots, radius 3-10 px x lesion[1], peak .4-1.8 x lesion[0], visible in both views unless
    occult in one. The factors apply after the draws, so they change no other draw."""
    spots = []
    for _ in range(int(rng.integers(1, 5))):
        x, y = body.point(*_lesion_site(rng))
        radius, peak = rng.uniform(3, 10) * lesion[1], rng.uniform(0.4, 1.8) * lesion[0]
        amp = peak * rng.uniform(0.7, 1.2, 2)
        if rng.random() < OCCULT_LESION_RATE:
            amp[int(rng.integers(2))] = 0.0
        spots.append(
            Spot("Abnormal", x, y, radius, radius, (float(amp[0]), float(amp[1])), (bool(amp[0] > 0), bool(amp[1] > 0)))
        )
    return spots


def sample_patient(
    rng: np.random.Generator, pid: int, region_fraction: float, lesion: tuple[float, float] = (1.0, 1.0)
) -> Patient:
    """Returns one patient drawn from rng: a fixed sequence of draws, whatever region_fraction and lesion are.

    lesion: (gain, size) factors on every lesion's peak uptake and radius; (1, 1) is the realistic default.
    """
    height = rng.uniform(880, 990)
    body = Body(IMAGE_W / 2 - 0.5 + rng.uniform(-6, 6), rng.uniform(6, 1018 - height), height, rng.uniform(0.88, 1.1))
    levels = rng.uniform((70, 0.85, 8, 0.5, 1.6), (135, 1.15, 20, 1.5, 2.4))
    is_abnormal = rng.random() < ABNORMAL_PATIENT_RATE
    has_regions, has_normal_xml = rng.random() < region_fraction, rng.random(2) < NORMAL_XML_RATE
    crop_scale = tuple(float(s) for s in rng.uniform(0.9, 1.1, len(REGIONS)))
    spots = _physiological_spots(rng, body) + (_lesions(rng, body, lesion) if is_abnormal else [])
    return Patient(
        pid,
        body,
        float(levels[0]),
        (1.0, float(levels[1])),
        float(levels[2]),
        float(levels[3]),
        float(levels[4]),
        tuple(spots),
        bool(has_regions),
        (bool(has_normal_xml[0]), bool(has_normal_xml[1])),
        crop_scale,
    )
