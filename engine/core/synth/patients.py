"""Owns the draws of one synthetic patient: stature and placement, physiological and artefact spots, lesions."""

from __future__ import annotations

import math

import numpy as np

from engine.core.synth.anatomy import IMAGE_W, REF_HEIGHT, REGIONS, Body, Patient, Spot, Tube, rib_point

ABNORMAL_PATIENT_RATE = 0.35  # BS-80K wholeBodyANT.txt: 1183 of 3247 abnormal
NORMAL_XML_RATE = 0.75  # share of normal images that still get an XML (Normal boxes only)
OCCULT_LESION_RATE = 0.1  # a lesion invisible in one view, so ANT and POST labels sometimes differ, as in BS-80K
# Calibration to 17 real whole-body pairs (median body height 0.67 of the frame, children ~0.36, width 0.83;
# measured 2026-12-01, engine/core/scans/qc.py statistics): stature, placement and the rarer kinds of scan.
ADULT_HEIGHT_PX = (668.0, 44.0)  # vertex-to-toe px of adults: normal (mean, sd) = ~1.6 m at ~2.4 mm/px
CHILD_RATE, CHILD_HEIGHT_PX = 0.08, (300.0, 560.0)  # share of children; uniform height range px
OFFSET_RATE = 0.05  # scans placed far from the top of the frame (feet may leave the bottom)
LOW_COUNT_RATE, LOW_COUNT_FACTOR = 0.06, (0.25, 0.5)  # short or low-dose acquisitions: counts x factor
NOISE_FRAME_RATE = 0.02  # views that hold only detector noise (no body), as several real frames do
CONTAMINATION_RATE = 0.12  # urine contamination specks on skin or clothing (unboxed)
CATHETER_RATE = 0.04  # a urinary catheter with its bag


def _normal(
    body: Body, u: float, t: float, radius: tuple[float, float], amp: np.ndarray, boxed: tuple[bool, bool]
) -> Spot:
    """Returns a Normal spot at body coordinates (u, t) with radii (rx, ry) px and per-view peaks."""
    x, y = body.point(u, t)
    return Spot("Normal", x, y, radius[0], radius[1], (float(amp[0]), float(amp[1])), boxed)


def _physiological_spots(rng: np.random.Generator, body: Body) -> list[Spot]:
    """Returns bladder, kidneys and sometimes an injection site and a degenerative joint spot (all Normal)."""
    amp = (rng.uniform(1.6, 3.2), rng.uniform(0.9, 2.0))
    radius = (rng.uniform(14, 24) * body.width, rng.uniform(10, 17) * body.height / REF_HEIGHT)
    spots = [_normal(body, rng.uniform(-4, 4), 0.612, radius, np.array(amp), (True, True))]
    for sign in (1, -1):
        u, t = sign * rng.uniform(25, 31), rng.uniform(0.395, 0.415)
        amp = (rng.uniform(0.1, 0.35), rng.uniform(0.3, 1.1))
        radius = (9 * body.width, 17 * body.height / REF_HEIGHT)
        spots.append(_normal(body, u, t, radius, np.array(amp), (False, bool(amp[1] >= 0.6))))
    sign, is_injected, is_degenerate = rng.choice((1, -1)), rng.random() < 0.3, rng.random() < 0.3
    u, t = sign * rng.uniform(74, 80), rng.uniform(0.38, 0.48)
    radius, amp = rng.uniform(3, 7), rng.uniform(1.5, 4.0) * rng.uniform(0.7, 1.1, 2)
    if is_injected:  # tracer injected into an arm vein
        spots.append(_normal(body, u, t, (radius, radius), amp, (True, True)))
    u, t = ((27, 0.785), (64, 0.19))[int(rng.integers(2))]
    u, t = -sign * (u + rng.uniform(-3, 3)), t + rng.uniform(-0.006, 0.006)
    radius, amp = rng.uniform(4, 8), rng.uniform(0.5, 1.4, 2)
    if is_degenerate:  # arthrosis of a knee or shoulder: benign, looks like a lesion
        spots.append(_normal(body, u, t, (radius, radius), amp, (True, True)))
    return spots


def _artefacts(rng: np.random.Generator, body: Body) -> tuple[list[Spot], list[Tube]]:
    """Returns unboxed urine contamination specks (sometimes) and a catheter with its bag (rarely)."""
    is_contaminated, has_catheter = rng.random() < CONTAMINATION_RATE, rng.random() < CATHETER_RATE
    places = rng.uniform((-30, 0.6), (30, 1.0), (3, 2))  # groin, thighs, feet
    amps, radii = rng.uniform(2, 6, (3, 2)), rng.uniform(1.5, 4, 3)
    spots = [_normal(body, u, t, (r, r), a, (False, False)) for (u, t), a, r in zip(places, amps, radii, strict=True)]
    sign, bag_u, bag_t = rng.choice((1, -1)), rng.uniform(45, 75), rng.uniform(0.8, 0.95)
    bag_amp, bag_r = rng.uniform(1.5, 4) * np.ones(2), (rng.uniform(10, 18), rng.uniform(16, 28))
    spots = spots[: int(rng.integers(1, 4))] if is_contaminated else []
    if not has_catheter:
        return spots, []
    bag = _normal(body, sign * bag_u, bag_t, bag_r, bag_amp, (False, False))
    joints = [body.ipoint(0, 0.62), body.ipoint(sign * 8, 0.70), body.ipoint(sign * bag_u, bag_t - 0.02)]
    tubes = [(joints[i], joints[i + 1], 2, 0.8) for i in range(2)]
    return [*spots, bag], tubes


def _lesion_site(rng: np.random.Generator) -> tuple[float, float]:
    """Returns (u, t) of a lesion on bone: spine, rib, pelvis, proximal femur or skull."""
    site, sign = rng.choice(5, p=(0.35, 0.25, 0.2, 0.1, 0.1)), rng.choice((1, -1))
    if site == 0:
        return rng.uniform(-3, 3), rng.uniform(0.14, 0.54)
    if site == 1:
        u, t = rib_point(int(rng.integers(10)), rng.uniform(0.25, 0.95))
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


def _body(rng: np.random.Generator) -> Body:
    """Returns a placement: an adult (normal stature) or a child, head near the top unless offset, a lateral jitter."""
    is_child, is_offset = rng.random(2) < (CHILD_RATE, OFFSET_RATE)
    adult = float(np.clip(rng.normal(*ADULT_HEIGHT_PX), 560, 880))
    height = float(rng.uniform(*CHILD_HEIGHT_PX)) if is_child else adult
    top = float(rng.uniform(60, 300) if is_offset else rng.uniform(15, 60))
    width = float(np.clip(1.12 * (height / ADULT_HEIGHT_PX[0]) ** 0.75 * rng.uniform(0.92, 1.08), 0.5, 1.3))
    return Body(IMAGE_W / 2 - 0.5 + rng.uniform(-10, 10), top, height, width)


def _without_view(spots: list[Spot], view: int) -> list[Spot]:
    """Returns the spots made invisible and unboxed in one view (a noise frame shows none of them)."""

    def drop(pair: tuple, value: object) -> tuple:
        return tuple(value if i == view else v for i, v in enumerate(pair))

    return [Spot(s.name, s.x, s.y, s.rx, s.ry, drop(s.amp, 0.0), drop(s.boxed, False)) for s in spots]


def sample_patient(
    rng: np.random.Generator, pid: int, region_fraction: float, lesion: tuple[float, float] = (1.0, 1.0)
) -> Patient:
    """Returns one patient drawn from rng: a fixed sequence of draws, whatever region_fraction and lesion are.

    lesion: (gain, size) factors on every lesion's peak uptake and radius; (1, 1) is the realistic default.
    """
    body = _body(rng)
    # bone counts per uptake weight, POST/ANT gain, tissue counts, background counts, camera blur sigma px
    levels = rng.uniform((30, 0.85, 0.15, 0.001, 0.9), (60, 1.15, 0.6, 0.004, 1.6))
    is_low_count, low_factor = rng.random() < LOW_COUNT_RATE, rng.uniform(*LOW_COUNT_FACTOR)
    is_noise = rng.random(2) < NOISE_FRAME_RATE
    is_abnormal = rng.random() < ABNORMAL_PATIENT_RATE
    has_regions, has_normal_xml = rng.random() < region_fraction, (rng.random(2) < NORMAL_XML_RATE) & ~is_noise
    crop_scale = tuple(float(s) for s in rng.uniform(0.9, 1.1, len(REGIONS)))
    artefacts, tubes = _artefacts(rng, body)
    spots = _physiological_spots(rng, body) + artefacts + (_lesions(rng, body, lesion) if is_abnormal else [])
    for view in np.flatnonzero(is_noise):
        spots = _without_view(spots, int(view))
    return Patient(
        pid=pid,
        body=body,
        bone_level=float(levels[0]),
        gain=(1.0, float(levels[1])),
        tissue_level=float(levels[2]),
        background=float(levels[3]),
        count_factor=float(low_factor) if is_low_count else 1.0,
        blur=float(levels[4]),
        spots=tuple(spots),
        tubes=tuple(tubes),
        is_noise=(bool(is_noise[0]), bool(is_noise[1])),
        has_regions=bool(has_regions),
        has_normal_xml=(bool(has_normal_xml[0]), bool(has_normal_xml[1])),
        crop_scale=crop_scale,
    )
