"""Procedural traffic scenes written in the official COCO layout.

No dataset can be downloaded at test time, so the demo and the tests train the detector on
scenes rendered here. They are built to be a fair stand-in for aerial / oblique traffic
imagery rather than a toy: roads of several layouts seen straight down or through a tilted
perspective camera, vehicles drawn as 2.5-D blocks with roofs, windows, wheels and cast
shadows, upright pedestrians, distractors (trees, poles, road signs, manholes, buildings,
painted markings), global lighting from day to night, and sensor blur, noise and JPEG.

Labels must agree with the pixels, because the detector is trained to high mAP on them:

* a box is the tight axis-aligned box of the object's whole drawn silhouette, clipped to the
  image (the part hidden behind a nearer object still counts, as in KITTI/CityPersons);
* objects are painted back to front (by the image row of their ground contact) and every
  object's visible pixels are tracked while placing; a placement that would leave any object
  less than :data:`MIN_VISIBLE_FRACTION` visible (occlusion plus border truncation), or with
  a clipped box under :data:`MIN_BOX_SIDE` pixels, is rejected *before* anything is drawn,
  so there is never a visible object without a label;
* distractors are painted before the objects and never cover them.

Every image is seeded from ``(cfg.seed, split, index)`` alone, so train and val are
independent, the same configuration writes byte-identical files, and
:func:`render_traffic_scene` regenerates any single image.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import shutil
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ops.config import TrafficGeneratorConfig
from ops.data.writing import default_workers, sibling_dir, swap_into_place
from ops.errors import DatasetError

log = logging.getLogger(__name__)

TRAFFIC_CLASSES = ("car", "truck", "bus", "pedestrian")
SPLITS = ("train", "val")
MIN_VISIBLE_FRACTION = 0.5
MIN_BOX_SIDE = 6.0
# Largest box side as a fraction of the image's larger side ("up to about 40 %").
MAX_BOX_FRACTION = 0.45
RENDERER_VERSION = "1"

_SUPERCATEGORIES = {"car": "vehicle", "truck": "vehicle", "bus": "vehicle", "pedestrian": "person"}
_SPLIT_CODES = {"train": 0, "val": 1}
CAR, TRUCK, BUS, PEDESTRIAN = 1, 2, 3, 4

# Every polygon and circle is drawn in 1/16-pixel fixed point so shapes move smoothly.
_SHIFT = 4
_ONE = 1 << _SHIFT
_POLY, _CIRCLE = 0, 1

# Ground-canvas codes: where pedestrians, vehicles and distractors may be placed.
_GROUND, _SIDEWALK, _ROAD, _BUILDING = 0, 1, 2, 3

Color = tuple[int, int, int]
Op = tuple[int, Any, Color]


@dataclass(frozen=True)
class RenderedScene:
    """One rendered image (before JPEG) and its labels, in COCO conventions."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 [x, y, w, h] in pixels
    category_ids: np.ndarray  # (N,) int64, COCO ids 1..4 in TRAFFIC_CLASSES order
    visible_fractions: np.ndarray  # (N,) float32, share of each silhouette left visible


def traffic_categories() -> list[dict[str, Any]]:
    """COCO ``categories`` of the generated data: ids 1..4 in :data:`TRAFFIC_CLASSES` order."""
    return [
        {"id": i, "name": name, "supercategory": _SUPERCATEGORIES[name]}
        for i, name in enumerate(TRAFFIC_CLASSES, start=1)
    ]


# --------------------------------------------------------------------------- small helpers


def _fp(points: np.ndarray) -> np.ndarray:
    """Fixed-point int32 coordinates, C-contiguous as OpenCV's drawing functions require."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32, order="C")


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _jitter(rng: np.random.Generator, base: tuple[float, float, float], amount: float) -> Color:
    noise = rng.uniform(-amount, amount, 3).tolist()
    return tuple(int(min(255.0, max(0.0, b + e))) for b, e in zip(base, noise, strict=True))  # type: ignore[return-value]


def _scale(color: Color, factor: float) -> Color:
    return tuple(int(min(255, max(0, v * factor))) for v in color)  # type: ignore[return-value]


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)


def _rounded_rect(length: float, width: float, r_front: float, r_back: float) -> np.ndarray:
    """Footprint centred at 0 with chamfered corners (a cheap stand-in for rounding)."""
    hl, hw = length / 2, width / 2
    return np.array(
        [
            [hl - r_front, -hw],
            [hl, -hw + r_front],
            [hl, hw - r_front],
            [hl - r_front, hw],
            [-hl + r_back, hw],
            [-hl, hw - r_back],
            [-hl, -hw + r_back],
            [-hl + r_back, -hw],
        ],
        dtype=np.float64,
    )


def _quads(c: np.ndarray, d: np.ndarray, n: np.ndarray, t0, t1, o0, o1) -> np.ndarray:
    """Quads spanning ``[t0, t1]`` along ``d`` and ``[o0, o1]`` along ``n`` (broadcasts).

    Returns (N, 4, 2) corners.
    """
    along = np.array(np.broadcast_arrays(t0, t1, t1, t0, o0, o0, o1, o1), dtype=np.float64)
    along = along.reshape(8, -1).T  # (N, 8): four offsets along d, then four along n
    return c + along[:, :4, None] * d + along[:, 4:, None] * n


def _fill(dst: np.ndarray, quads: np.ndarray, color, aa: bool = False) -> None:
    """Fill non-overlapping convex quads in one call (fillPoly uses even-odd on overlaps)."""
    if len(quads) == 0:
        return
    cv2.fillPoly(dst, list(_fp(quads)), color, cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _draw_ops(dst: np.ndarray, ops: list[Op], ox: int, oy: int, value=None) -> None:
    off = np.array([ox * _ONE, oy * _ONE], dtype=np.int32)
    for kind, geom, color in ops:
        c = color if value is None else value
        if kind == _POLY:
            cv2.fillConvexPoly(dst, geom - off, c, cv2.LINE_8, _SHIFT)
        else:
            (cx, cy), r = geom
            cv2.circle(dst, (int(cx - off[0]), int(cy - off[1])), int(r), c, -1, cv2.LINE_8, _SHIFT)


def _ops_bounds(ops: list[Op]) -> tuple[int, int, int, int]:
    points = [geom for kind, geom, _ in ops if kind == _POLY]
    for kind, geom, _ in ops:
        if kind == _CIRCLE:
            (cx, cy), r = geom
            points.append(np.array([[cx - r, cy - r], [cx + r, cy + r]], np.int32))
    allp = np.concatenate(points)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    x0, y0 = (np.floor(lo / _ONE) - 1).astype(int)
    x1, y1 = (np.ceil(hi / _ONE) + 2).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def _poly(points: np.ndarray, color: Color) -> Op:
    return (_POLY, _fp(points), color)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)


class _Workspace(threading.local):
    """Image-sized scratch buffers reused from one image to the next (one set per thread).

    Fresh arrays this size come from mmap and are paid for again in page faults on every
    image, which made allocation the largest single cost of the renderer.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        buf = self.buffers.get(key)
        if buf is None:
            if len(self.buffers) > 64:  # a run that keeps changing image sizes
                self.buffers.clear()
            buf = self.buffers[key] = np.empty(shape, dtype)
        return buf

    def view(
        self, name: str, shape: tuple[int, ...], capacity: tuple[int, ...], dtype: Any
    ) -> np.ndarray:
        """A ``shape`` window into a buffer of ``capacity``, for sizes that vary per image."""
        return self.get(name, capacity, dtype)[tuple(slice(0, n) for n in shape)]


_WS = _Workspace()


# --------------------------------------------------------------------------- palettes

_CAR_COLORS: list[tuple[tuple[int, int, int], float]] = [
    ((232, 232, 230), 0.22),
    ((28, 28, 32), 0.16),
    ((172, 175, 180), 0.14),
    ((105, 108, 114), 0.10),
    ((160, 28, 30), 0.08),
    ((35, 70, 160), 0.08),
    ((25, 40, 85), 0.05),
    ((140, 115, 80), 0.04),
    ((40, 95, 60), 0.03),
    ((225, 190, 40), 0.03),
]
_BUS_COLORS = [
    (230, 180, 30),
    (200, 40, 35),
    (40, 90, 170),
    (235, 235, 230),
    (45, 140, 80),
    (230, 120, 30),
    (120, 40, 120),
]
_CARGO_COLORS = [
    (235, 235, 232),
    (200, 200, 198),
    (170, 172, 176),
    (215, 205, 180),
    (180, 60, 40),
    (40, 80, 140),
    (60, 110, 70),
]
_SKIN = [(240, 200, 170), (225, 175, 140), (190, 140, 100), (150, 100, 70), (100, 70, 50)]
_HAIR = [(30, 25, 20), (70, 50, 30), (120, 90, 50), (200, 170, 110), (150, 150, 150)]


def _random_color(rng: np.random.Generator, lo: float = 40, hi: float = 230) -> Color:
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(60, 230), rng.integers(int(lo), int(hi))]]],
        dtype=np.uint8,
    )
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])  # type: ignore[return-value]


def _car_color(rng: np.random.Generator) -> Color:
    if rng.random() < 0.2:
        return _random_color(rng)
    weights = np.array([w for _, w in _CAR_COLORS])
    base = _CAR_COLORS[int(rng.choice(len(_CAR_COLORS), p=weights / weights.sum()))][0]
    return _jitter(rng, base, 12)


# --------------------------------------------------------------------------- objects


@dataclass
class _Part:
    """A convex polygon in vehicle coordinates (metres; u forward, v sideways) at height z."""

    points: np.ndarray
    z: float
    color: Color


@dataclass
class _Block:
    """A box-like body section: footprint, height, side and roof colours, roof details."""

    footprint: np.ndarray
    height: float
    side: Color
    top: Color
    details: list[_Part] = field(default_factory=list)


@dataclass
class _VehicleShape:
    blocks: list[_Block]
    wheels: list[np.ndarray]
    extras: list[_Part]  # outside the blocks (mirrors): part of the silhouette
    lights: list[tuple[float, float]]  # headlight positions (u, v) for night scenes
    length: float
    width: float


def _car_shape(rng: np.random.Generator) -> _VehicleShape:
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])  # sedan, hatchback, SUV
    length = float(rng.uniform(*((4.3, 4.9), (3.7, 4.2), (4.5, 5.0))[kind]))
    width = float(rng.uniform(1.72, 1.95)) * (1.05 if kind == 2 else 1.0)
    height = 1.45 if kind != 2 else 1.75
    body = _car_color(rng)
    roof = _scale(body, float(rng.uniform(0.88, 1.1)))
    glass = (
        _jitter(rng, (35, 45, 60), 15) if rng.random() < 0.8 else _jitter(rng, (95, 115, 135), 20)
    )
    hl, hw = length / 2, width / 2
    # Fractions of the length from the front: hood, windshield, roof, rear window, trunk.
    hood = (0.30, 0.24, 0.25)[kind] * length
    shield = 0.17 * length
    roof_len = (0.30, 0.36, 0.42)[kind] * length
    rear = (0.11, 0.10, 0.08)[kind] * length
    u_ws0 = hl - hood
    u_roof0 = u_ws0 - shield
    u_rear0 = u_roof0 - roof_len
    u_trunk = u_rear0 - rear
    details = [
        _Part(
            np.array(
                [
                    [u_ws0, -0.45 * width],
                    [u_ws0, 0.45 * width],
                    [u_roof0, 0.38 * width],
                    [u_roof0, -0.38 * width],
                ]
            ),
            height,
            glass,
        ),
        _Part(_rect(u_rear0, u_roof0, -0.38 * width, 0.38 * width), height, roof),
        _Part(
            np.array(
                [
                    [u_rear0, -0.38 * width],
                    [u_rear0, 0.38 * width],
                    [u_trunk, 0.42 * width],
                    [u_trunk, -0.42 * width],
                ]
            ),
            height,
            glass,
        ),
        _Part(_rect(u_rear0 + 0.05, u_roof0 - 0.05, 0.38 * width, 0.46 * width), height, glass),
        _Part(_rect(u_rear0 + 0.05, u_roof0 - 0.05, -0.46 * width, -0.38 * width), height, glass),
        _Part(_rect(hl - 0.12, hl, 0.22 * width, 0.44 * width), height, (245, 240, 210)),
        _Part(_rect(hl - 0.12, hl, -0.44 * width, -0.22 * width), height, (245, 240, 210)),
        _Part(_rect(-hl, -hl + 0.1, 0.25 * width, 0.45 * width), height, (190, 25, 25)),
        _Part(_rect(-hl, -hl + 0.1, -0.45 * width, -0.25 * width), height, (190, 25, 25)),
    ]
    if kind == 2 and rng.random() < 0.5:  # roof rails
        rail = _scale(roof, 0.6)
        details += [
            _Part(_rect(u_rear0 + 0.1, u_roof0 - 0.1, 0.28 * width, 0.33 * width), height, rail),
            _Part(_rect(u_rear0 + 0.1, u_roof0 - 0.1, -0.33 * width, -0.28 * width), height, rail),
        ]
    elif rng.random() < 0.15:  # sunroof
        details.append(
            _Part(
                _rect(u_roof0 - 0.8, u_roof0 - 0.15, -0.25 * width, 0.25 * width),
                height,
                _scale(glass, 0.8),
            )
        )
    block = _Block(
        _rounded_rect(length, width, 0.16 * width, 0.12 * width),
        height,
        _scale(body, 0.62),
        body,
        details,
    )
    wheel_len, axle = 0.16 * length, 0.31 * length
    wheels = [
        _rect(u - wheel_len / 2, u + wheel_len / 2, s * (hw - 0.22), s * (hw + 0.05))
        for u in (axle, -axle)
        for s in (1, -1)
    ]
    mirror = _scale(body, 0.8)
    extras = [
        _Part(
            np.array(
                [
                    [u_ws0, s * hw],
                    [u_ws0 - 0.15, s * (hw + 0.16)],
                    [u_ws0 - 0.3, s * (hw + 0.16)],
                    [u_ws0 - 0.2, s * hw],
                ]
            ),
            height * 0.7,
            mirror,
        )
        for s in (1, -1)
    ]
    return _VehicleShape(
        [block], wheels, extras, [(hl, 0.33 * width), (hl, -0.33 * width)], length, width
    )


def _truck_shape(rng: np.random.Generator) -> _VehicleShape:
    length = float(rng.uniform(7.5, 12.0))
    width = float(rng.uniform(2.4, 2.55))
    cab_len = float(rng.uniform(2.0, 2.5))
    gap = float(rng.uniform(0.3, 0.6))
    hl, hw = length / 2, width / 2
    cab_color = _car_color(rng) if rng.random() < 0.5 else _random_color(rng, 60, 230)
    cab_roof = _scale(cab_color, 1.08)
    cab_back = hl - cab_len
    box_front = cab_back - gap
    glass = _jitter(rng, (35, 45, 60), 12)
    cab = _Block(
        _rounded_rect(cab_len, width * 0.96, 0.25, 0.05) + [hl - cab_len / 2, 0],
        2.9,
        _scale(cab_color, 0.6),
        cab_color,
        [
            _Part(_rect(hl - 0.55, hl - 0.08, -0.42 * width, 0.42 * width), 2.9, glass),
            _Part(_rect(cab_back + 0.15, hl - 0.75, -0.38 * width, 0.38 * width), 2.9, cab_roof),
            _Part(_rect(hl - 0.1, hl, 0.3 * width, 0.45 * width), 2.9, (245, 240, 210)),
            _Part(_rect(hl - 0.1, hl, -0.45 * width, -0.3 * width), 2.9, (245, 240, 210)),
        ],
    )
    chassis = _Block(
        _rect(box_front - 0.2, cab_back + 0.2, -0.32 * width, 0.32 * width),
        1.0,
        (40, 40, 42),
        (55, 55, 58),
    )
    if rng.random() < 0.2:  # tanker: rounded, metallic, with a lit ridge along the top
        metal = _jitter(rng, (190, 192, 196), 20)
        tank = _Block(
            _rounded_rect(box_front + hl, width, 0.7, 0.7) + [(box_front - hl) / 2, 0],
            3.3,
            _scale(metal, 0.62),
            metal,
            [
                _Part(
                    _rect(-hl + 0.5, box_front - 0.5, -0.12 * width, 0.12 * width),
                    3.3,
                    _scale(metal, 1.15),
                )
            ],
        )
        cargo = tank
    else:
        box_color = _CARGO_COLORS[int(rng.integers(len(_CARGO_COLORS)))]
        box_color = _jitter(rng, box_color, 10)
        ridge = _scale(box_color, 0.82)
        n_ribs = int((box_front + hl) / 0.7)
        ribs = [
            _Part(_rect(u - 0.05, u + 0.05, -0.47 * width, 0.47 * width), 3.6, ridge)
            for u in np.linspace(-hl + 0.4, box_front - 0.4, max(n_ribs, 2))
        ]
        border = _scale(box_color, 0.9)
        cargo = _Block(
            _rect(-hl, box_front, -hw * 1.02, hw * 1.02),
            3.6,
            _scale(box_color, 0.6),
            box_color,
            [
                _Part(_rect(-hl, box_front, -hw * 1.02, -hw * 0.9), 3.6, border),
                _Part(_rect(-hl, box_front, hw * 0.9, hw * 1.02), 3.6, border),
                *ribs,
            ],
        )
    wheel_len = 0.95
    axles = [hl - 1.3, -hl + 1.4] + ([-hl + 2.5] if length > 9 else [])
    wheels = [
        _rect(u - wheel_len / 2, u + wheel_len / 2, s * (hw - 0.3), s * (hw + 0.05))
        for u in axles
        for s in (1, -1)
    ]
    extras = [
        _Part(_rect(hl - 0.7, hl - 0.45, s * hw, s * (hw + 0.3)), 2.2, (40, 40, 40))
        for s in (1, -1)
    ]
    return _VehicleShape(
        [chassis, cab, cargo],
        wheels,
        extras,
        [(hl, 0.35 * width), (hl, -0.35 * width)],
        length,
        width,
    )


def _bus_shape(rng: np.random.Generator) -> _VehicleShape:
    length = float(rng.uniform(10.0, 13.0))
    width = float(rng.uniform(2.45, 2.6))
    hl, hw = length / 2, width / 2
    base = (
        _BUS_COLORS[int(rng.integers(len(_BUS_COLORS)))]
        if rng.random() < 0.75
        else _random_color(rng)
    )
    color = _jitter(rng, base, 12)
    roof = _scale(color, float(rng.uniform(1.0, 1.12))) if rng.random() < 0.7 else (225, 225, 225)
    glass = _jitter(rng, (30, 40, 55), 12)
    height = 3.1
    details = [
        _Part(_rect(-hl + 0.1, hl - 0.1, -0.36 * width, 0.36 * width), height, roof),
        _Part(_rect(hl - 0.85, hl - 0.08, -0.44 * width, 0.44 * width), height, glass),
        _Part(_rect(-hl + 0.08, -hl + 0.35, -0.33 * width, 0.33 * width), height, glass),
    ]
    # The row of side windows along both long edges is what reads as "bus" from above.
    u_start, u_end = -hl + 0.7, hl - 1.25
    count = max(4, int(round((u_end - u_start) / float(rng.uniform(1.15, 1.5)))))
    pitch = (u_end - u_start) / count
    pillar = min(0.22, 0.25 * pitch)
    for i in range(count):
        u0 = u_start + i * pitch + pillar / 2
        for s in (1, -1):
            details.append(
                _Part(
                    _rect(u0, u0 + pitch - pillar, s * 0.385 * width, s * 0.48 * width),
                    height,
                    glass,
                )
            )
    ac = _jitter(rng, (190, 192, 195), 15)
    ac_u = float(rng.uniform(-1.5, 1.0))
    details.append(_Part(_rect(ac_u - 1.0, ac_u + 1.0, -0.25 * width, 0.25 * width), height, ac))
    for u in rng.uniform(-hl + 1.5, hl - 2, int(rng.integers(0, 3))):
        details.append(
            _Part(
                _rect(u - 0.35, u + 0.35, -0.18 * width, 0.18 * width), height, _scale(roof, 0.85)
            )
        )
    block = _Block(
        _rounded_rect(length, width, 0.2, 0.15), height, _scale(color, 0.6), color, details
    )
    wheels = [
        _rect(u - 0.5, u + 0.5, s * (hw - 0.3), s * (hw + 0.04))
        for u in (hl - 2.6, -hl + 3.0)
        for s in (1, -1)
    ]
    extras = [
        _Part(_rect(hl - 0.35, hl - 0.1, s * hw, s * (hw + 0.28)), 2.4, (35, 35, 35))
        for s in (1, -1)
    ]
    return _VehicleShape(
        [block], wheels, extras, [(hl, 0.36 * width), (hl, -0.36 * width)], length, width
    )


_SHAPE_BUILDERS = {CAR: _car_shape, TRUCK: _truck_shape, BUS: _bus_shape}


@dataclass
class _Object:
    category: int
    ops: list[Op]  # silhouette ops (image fixed point) that made ``mask``
    depth: float
    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool silhouette, unclipped
    area: int
    box: tuple[int, int, int, int]  # clipped to the image, exclusive max
    full_ops: Any  # callable returning the detailed ops, evaluated only if kept
    shadow: np.ndarray | None  # image-space polygon of the cast shadow
    lights: np.ndarray | None  # image points of headlights
    ground: tuple[int, int, np.ndarray]  # (x0, y0, mask) of the ground contact area
    visible: int = 0


class _VehiclePose:
    """Vehicle coordinates (metres) to image pixels: ground affine map plus height lift."""

    def __init__(self, origin: np.ndarray, affine: np.ndarray, lift: np.ndarray) -> None:
        self.origin, self.affine, self.lift = origin, affine, lift

    def __call__(self, points: np.ndarray, z: float) -> np.ndarray:
        return self.origin + points @ self.affine.T - z * self.lift


def _vehicle_ops(shape: _VehicleShape, pose: _VehiclePose, detailed: bool) -> list[Op]:
    """Draw ops of a vehicle: silhouette only while placing, every detail once it is kept.

    All geometry goes through one affine transform and one fixed-point rounding; the
    per-part Python work is what dominates the generator's run time.
    """
    wheel_color = (22, 22, 24)
    wheel_h = 0.7
    lifted = float(np.abs(pose.lift).max()) * wheel_h > 0.1
    pieces: list[tuple[np.ndarray, float]] = []
    for block in shape.blocks:
        pieces += [(block.footprint, 0.0), (block.footprint, block.height)]
    for wheel in shape.wheels:
        pieces += [(wheel, 0.0), (wheel, wheel_h)]
    pieces += [(p.points, p.z) for p in shape.extras]
    if detailed:
        pieces += [(p.points, p.z) for block in shape.blocks for p in block.details]
    sizes = [len(p) for p, _ in pieces]
    points = np.concatenate([p for p, _ in pieces])
    heights = np.repeat([z for _, z in pieces], sizes)
    # Elementwise, not a matmul: a BLAS kernel may round differently depending on the row
    # count, and the detailed pass must land on exactly the silhouette's pixels.
    a = pose.affine
    image = (
        pose.origin
        + points[:, :1] * a[:, 0]
        + points[:, 1:] * a[:, 1]
        - heights[:, None] * pose.lift
    )
    fixed = np.round(image * _ONE).astype(np.int32)
    ends = np.cumsum(sizes).tolist()
    parts = [fixed[e - n : e] for e, n in zip(ends, sizes, strict=True)]
    nb, nw = len(shape.blocks), len(shape.wheels)

    def extruded(base: np.ndarray, top: np.ndarray) -> np.ndarray:
        return cv2.convexHull(np.vstack([base, top])).reshape(-1, 2)

    wheels = [
        extruded(parts[2 * nb + 2 * i], parts[2 * nb + 2 * i + 1])
        if lifted
        else parts[2 * nb + 2 * i]
        for i in range(nw)
    ]
    extras = parts[2 * nb + 2 * nw : 2 * nb + 2 * nw + len(shape.extras)]
    ops: list[Op] = []
    if not detailed:
        for i, block in enumerate(shape.blocks):
            base, top = parts[2 * i], parts[2 * i + 1]
            ops.append((_POLY, extruded(base, top) if lifted else top, block.side))
        ops += [(_POLY, w, wheel_color) for w in wheels]
    else:
        details = parts[2 * nb + 2 * nw + len(shape.extras) :]
        cursor = 0
        spans = []
        for block in shape.blocks:
            spans.append((cursor, cursor + len(block.details)))
            cursor += len(block.details)
        # Painter's order inside the vehicle: the section farther from the camera first.
        order = sorted(range(nb), key=lambda i: int(parts[2 * i][:, 1].max()))
        # Every silhouette wheel is drawn at least once, then again over its section's side.
        ops += [(_POLY, w, wheel_color) for w in wheels]
        for i in order:
            block = shape.blocks[i]
            base, top = parts[2 * i], parts[2 * i + 1]
            if lifted:
                ops.append((_POLY, extruded(base, top), block.side))
            lo, hi = block.footprint[:, 0].min() - 0.3, block.footprint[:, 0].max() + 0.3
            ops += [
                (_POLY, wheels[j], wheel_color)
                for j, w in enumerate(shape.wheels)
                if lo <= w[:, 0].mean() <= hi
            ]
            ops.append((_POLY, top, block.top))
            a, b = spans[i]
            ops += [
                (_POLY, details[k], p.color)
                for k, p in zip(range(a, b), block.details, strict=True)
            ]
    ops += [(_POLY, e, p.color) for e, p in zip(extras, shape.extras, strict=True)]
    return ops


def _pedestrian_ops(rng: np.random.Generator, feet: np.ndarray, height_px: float) -> list[Op]:
    """An upright figure (head, torso, arms, legs) about 1:2.5-1:3 wide:tall."""
    skin = _jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 10)
    hair = _jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 10)
    shirt = _random_color(rng, 40, 240)
    pants = _random_color(rng, 25, 150) if rng.random() < 0.6 else _jitter(rng, (40, 50, 80), 15)
    shoes = _jitter(rng, (30, 30, 30), 15)
    stride = float(rng.uniform(0.0, 0.07))
    swing = float(rng.uniform(0.0, 0.03))
    flip = 1.0 if rng.random() < 0.5 else -1.0
    coat = rng.random() < 0.25
    scale = np.array([height_px, -height_px])

    def img(p: list[list[float]] | np.ndarray) -> np.ndarray:
        q = np.asarray(p, dtype=np.float64)
        return feet + q * scale * np.array([flip, 1.0])

    def limb(a: tuple[float, float], b: tuple[float, float], thickness: float) -> np.ndarray:
        a_, b_ = np.array(a), np.array(b)
        d = b_ - a_
        n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * thickness / 2
        return np.array([a_ + n, b_ + n, b_ - n, a_ - n])

    ops: list[Op] = []
    leg_t = 0.085
    for s, step in ((-1, -stride), (1, stride)):
        ops.append(_poly(img(limb((s * 0.055, 0.50), (s * 0.05 + step, 0.04), leg_t)), pants))
        ops.append(
            _poly(img(_rect(s * 0.05 + step - 0.05, s * 0.05 + step + 0.06, 0.0, 0.045)), shoes)
        )
    torso_bottom = 0.36 if coat else 0.46
    ops.append(
        _poly(
            img(
                [
                    [-0.12, 0.81],
                    [0.12, 0.81],
                    [0.095 + 0.02 * coat, torso_bottom],
                    [-0.095 - 0.02 * coat, torso_bottom],
                ]
            ),
            shirt,
        )
    )
    for s, sw in ((-1, swing), (1, -swing)):
        hand = (s * (0.14 + abs(sw) * 0.5) + sw * 0.3, 0.49)
        ops.append(_poly(img(limb((s * 0.125, 0.79), hand, 0.055)), _scale(shirt, 0.9)))
        ops.append(
            (_CIRCLE, (_fp(img([[hand[0], 0.48]]))[0], int(round(0.03 * height_px * _ONE))), skin)
        )
    ops.append(_poly(img(_rect(-0.035, 0.035, 0.79, 0.85)), skin))
    head = img([[0.0, 0.905]])[0]
    ops.append(
        (_CIRCLE, (_fp(head + [0, -0.012 * height_px]), int(round(0.075 * height_px * _ONE))), hair)
    )
    ops.append(
        (
            _CIRCLE,
            (
                _fp(head + [0.012 * height_px * flip, 0.006 * height_px]),
                int(round(0.063 * height_px * _ONE)),
            ),
            skin,
        )
    )
    if rng.random() < 0.25:  # bag or backpack
        ops.append(_poly(img(_rect(0.12, 0.22, 0.5, 0.68)), _random_color(rng, 30, 200)))
    return ops


# --------------------------------------------------------------------------- scene layout


@dataclass
class _Road:
    c: np.ndarray
    d: np.ndarray
    lane_w: float
    lanes: list[tuple[float, int]]  # (offset from centre, driving direction +1/-1)
    half: float  # half width of the carriageway (incl. shoulders and median)
    sidewalk: float
    t0: float
    t1: float

    @property
    def n(self) -> np.ndarray:
        return np.array([-self.d[1], self.d[0]])


@dataclass
class _Crosswalk:
    road: _Road
    t: float
    length: float


class _Scene:
    """One scene: camera, ground canvas (top-down), placement zones, lighting."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng, self.W, self.H = rng, width, height
        self.S = max(width, height)
        self.oblique = rng.random() < 0.4
        if self.oblique:
            # A tilted camera over flat ground: far/near scale ratio r, foreshortening k at
            # the bottom row. Derived from y = y_h + f*h/Z so the ground keeps its proportions.
            r = float(rng.uniform(0.5, 0.75))
            k = float(rng.uniform(0.6, 0.9))
            self.c_res = 0.6  # canvas pixels per near image pixel (the far field is compressed)
            bottom = width / r * 1.05
            self.cw = int(math.ceil(bottom * self.c_res))
            self.ch = int(math.ceil(height / (k * r) * self.c_res))
            src = np.float32([[0, 0], [self.cw, 0], [self.cw, self.ch], [0, self.ch]])
            dst = np.float32(
                [
                    [width / 2 - r * bottom / 2, 0],
                    [width / 2 + r * bottom / 2, 0],
                    [width / 2 + bottom / 2, height],
                    [width / 2 - bottom / 2, height],
                ]
            )
            self.hom = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
            self.inv = np.linalg.inv(self.hom)
            near = self.S * float(rng.uniform(0.02, 0.036))  # image px per metre at the bottom
            self.m2c = near * self.c_res
            self.lean = math.sqrt(1 - k * k)
        else:
            self.c_res = 1.0
            self.cw, self.ch = width, height
            self.hom = None
            self.inv = None
            self.m2c = self.S * _log_uniform(rng, 0.015, 0.033)
            # A nadir camera: tall things lean away from the image centre, the more the wider
            # the field of view (tan of half the view angle across the larger side).
            self.tan_half_fov = float(rng.uniform(0.08, 0.35))
        # Oblique canvases are at most 1.26 W x 2 H (r >= 0.5, k >= 0.6, c_res 0.6).
        capacity = (2 * height + 4, int(math.ceil(1.3 * width)) + 4)
        self.canvas = _WS.view("canvas", (self.ch, self.cw, 3), (*capacity, 3), np.uint8)
        self.zone = _WS.view("zone", (self.ch, self.cw), capacity, np.uint8)
        self.zone[:] = _GROUND
        self.roads: list[_Road] = []
        self.crosswalks: list[_Crosswalk] = []
        self.stalls: list[np.ndarray] = []
        self.stall_centres = np.zeros((0, 2))  # parking stalls (canvas px) and their headings
        self.stall_headings = np.zeros((0, 2))
        self.aisles: list[_Road] = []
        sun = float(rng.uniform(0, 2 * math.pi))
        self.sun_dir = _unit(sun)
        self.time = rng.choice(4, p=[0.55, 0.14, 0.16, 0.15])  # day, overcast, dusk, night
        self.shadow_len = float(
            (rng.uniform(0.3, 1.0), 0.15, rng.uniform(1.0, 2.0), 0.0)[self.time]
        )
        self.shadow_strength = float(
            (rng.uniform(0.45, 0.7), rng.uniform(0.8, 0.9), rng.uniform(0.55, 0.75), 1.0)[self.time]
        )
        self.lamps: list[np.ndarray] = []
        self.layout = "straight"

    # ---- camera
    def to_image(self, g: np.ndarray) -> np.ndarray:
        if self.hom is None:
            return np.asarray(g, dtype=np.float64)
        p = self.hom @ np.array([g[0], g[1], 1.0])
        return p[:2] / p[2]

    def to_canvas(self, p: np.ndarray) -> np.ndarray:
        if self.inv is None:
            return np.asarray(p, dtype=np.float64)
        g = self.inv @ np.array([p[0], p[1], 1.0])
        return g[:2] / g[2]

    def jacobian(self, g: np.ndarray) -> np.ndarray:
        """d(image)/d(canvas) at canvas point ``g``."""
        if self.hom is None:
            return np.eye(2)
        h = self.hom
        w = h[2, 0] * g[0] + h[2, 1] * g[1] + h[2, 2]
        x, y = self.to_image(g)
        return (
            np.array(
                [
                    [h[0, 0] - x * h[2, 0], h[0, 1] - x * h[2, 1]],
                    [h[1, 0] - y * h[2, 0], h[1, 1] - y * h[2, 1]],
                ]
            )
            / w
        )

    def px_per_metre(self, g: np.ndarray) -> float:
        """Image pixels per metre across the view direction at canvas point ``g``."""
        return float(self.m2c * np.linalg.norm(self.jacobian(g)[:, 0]))

    def lift(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Image displacement per metre of height, subtracted from the ground position."""
        if self.hom is None:
            offset = (p - np.array([self.W / 2, self.H / 2])) / (self.S / 2)
            return -offset * self.tan_half_fov * self.m2c
        return np.array([0.0, self.px_per_metre(g) * self.lean])

    def metres(self, m: float) -> float:
        return m * self.m2c

    def random_image_point(self, margin: float = 0.08) -> np.ndarray:
        m = margin * self.S
        return np.array([self.rng.uniform(-m, self.W + m), self.rng.uniform(-m, self.H + m)])

    def canvas_extent(self, c: np.ndarray, d: np.ndarray) -> tuple[float, float]:
        corners = np.array([[0, 0], [self.cw, 0], [self.cw, self.ch], [0, self.ch]], float)
        proj = (corners - c) @ d
        return float(proj.min() - 10), float(proj.max() + 10)

    def zone_at(self, g: np.ndarray) -> int:
        x, y = int(math.floor(g[0])), int(math.floor(g[1]))
        if 0 <= x < self.cw and 0 <= y < self.ch:
            return int(self.zone[y, x])
        return -1


# --------------------------------------------------------------------------- ground


def _ground_colors(rng: np.random.Generator) -> dict[str, Color]:
    style = rng.choice(4, p=[0.4, 0.15, 0.3, 0.15])  # green, dry, urban, dirt
    ground = [(75, 125, 55), (150, 150, 95), (165, 160, 150), (135, 115, 85)][style]
    asphalt_v = float(rng.uniform(55, 105))
    tint = rng.uniform(-5, 5, 3)
    asphalt = tuple(int(np.clip(asphalt_v + t, 0, 255)) for t in tint)
    sidewalk = (
        _jitter(rng, (185, 180, 170), 25)
        if rng.random() < 0.8
        else _jitter(rng, (165, 115, 95), 15)
    )
    white = _mix(asphalt, _jitter(rng, (238, 238, 232), 8), float(rng.uniform(0.55, 1.0)))
    yellow = _mix(asphalt, _jitter(rng, (225, 185, 50), 12), float(rng.uniform(0.6, 1.0)))
    return {
        "ground": _jitter(rng, ground, 18),
        "asphalt": asphalt,
        "sidewalk": sidewalk,  # type: ignore
        "curb": _scale(sidewalk, 1.12),
        "white": white,
        "yellow": yellow,
        "urban": bool(style == 2),  # type: ignore[dict-item]
    }


def _make_road(
    scene: _Scene, c: np.ndarray, angle: float, highway: bool = False, t0: float | None = None
) -> _Road:
    rng = scene.rng
    d = _unit(angle)
    lane_w = scene.metres(float(rng.uniform(3.1, 3.8)))
    if highway:
        per_side = int(rng.integers(2, 5))
        median = scene.metres(float(rng.uniform(1.0, 5.0)))
        shoulder = scene.metres(2.5)
        lanes = [
            (s * (median / 2 + (i + 0.5) * lane_w), -s) for s in (1, -1) for i in range(per_side)
        ]
        half = median / 2 + per_side * lane_w + shoulder
        sidewalk = 0.0
    else:
        n_lanes = int(rng.choice([1, 2, 2, 2, 3, 4, 4, 6]))
        two_way = n_lanes > 1 and rng.random() < 0.85
        offsets = (np.arange(n_lanes) - (n_lanes - 1) / 2) * lane_w
        if two_way and n_lanes % 2 == 1:  # the middle lane is a painted turn lane: no traffic
            offsets = np.delete(offsets, n_lanes // 2)
        lanes = [(float(o), (1 if o < 0 else -1) if two_way else 1) for o in offsets]
        half = n_lanes * lane_w / 2 + scene.metres(0.3)
        sidewalk = scene.metres(float(rng.uniform(1.8, 4.0))) if rng.random() < 0.85 else 0.0
    lo, hi = scene.canvas_extent(c, d)
    return _Road(c, d, lane_w, lanes, half, sidewalk, lo if t0 is None else t0, hi)


def _draw_sidewalks(scene: _Scene, roads: list[_Road], pal: dict) -> None:
    for r in roads:
        if r.sidewalk <= 0:
            continue
        t0 = r.t0 - r.sidewalk
        q = _quads(r.c, r.d, r.n, t0, r.t1, -(r.half + r.sidewalk), r.half + r.sidewalk)
        _fill(scene.canvas, q, pal["sidewalk"])
        _fill(scene.zone, q, _SIDEWALK)
        # Paving joints make sidewalks read as sidewalks, not as more road.
        step = scene.metres(float(scene.rng.uniform(1.5, 3.0)))
        ts = np.arange(t0, r.t1, step)
        for s in (1, -1):
            lines = _quads(
                r.c,
                r.d,
                r.n,
                ts,
                ts + max(0.6, scene.metres(0.06)),
                s * r.half,
                s * (r.half + r.sidewalk),
            )
            _fill(scene.canvas, lines, _scale(pal["sidewalk"], 0.88))


def _draw_carriageway(scene: _Scene, r: _Road, pal: dict) -> None:
    q = _quads(r.c, r.d, r.n, r.t0, r.t1, -r.half, r.half)
    _fill(scene.canvas, q, pal["asphalt"])
    _fill(scene.zone, q, _ROAD)
    if r.sidewalk > 0:
        curb = scene.metres(0.25)
        _fill(
            scene.canvas,
            _quads(
                r.c,
                r.d,
                r.n,
                [r.t0, r.t0],
                [r.t1, r.t1],
                [r.half, -r.half - curb],
                [r.half + curb, -r.half],
            ),
            pal["curb"],
        )


def _dashes(
    scene: _Scene,
    r: _Road,
    offset: float,
    dash: float,
    gap: float,
    width: float,
    t0: float | None = None,
) -> np.ndarray:
    start = (r.t0 if t0 is None else t0) + float(scene.rng.uniform(0, dash + gap))
    ts = np.arange(start, r.t1, dash + gap)
    return _quads(r.c, r.d, r.n, ts, ts + dash, offset - width / 2, offset + width / 2)


def _solid(r: _Road, offset: float, width: float, t0: float | None = None) -> np.ndarray:
    return _quads(
        r.c, r.d, r.n, r.t0 if t0 is None else t0, r.t1, offset - width / 2, offset + width / 2
    )


def _draw_markings(scene: _Scene, r: _Road, pal: dict, highway: bool) -> None:
    rng = scene.rng
    lw = scene.metres(0.15)
    dash, gap = scene.metres(3.0), scene.metres(float(rng.uniform(4.0, 9.0)))
    offsets = sorted(o for o, _ in r.lanes)
    dirs = {o: s for o, s in r.lanes}
    white, yellow = pal["white"], pal["yellow"]
    if highway:
        med = min(abs(o) for o in offsets) - r.lane_w / 2
        median_color = pal["ground"] if rng.random() < 0.5 else _scale(pal["sidewalk"], 0.9)
        _fill(scene.canvas, _solid(r, 0.0, 2 * med - 2 * lw), median_color, aa=True)
        _fill(
            scene.canvas,
            np.concatenate([_solid(r, med - lw, lw), _solid(r, -med + lw, lw)]),
            yellow,
            aa=True,
        )
        edge = max(abs(o) for o in offsets) + r.lane_w / 2
        _fill(
            scene.canvas,
            np.concatenate([_solid(r, edge, lw * 1.5), _solid(r, -edge, lw * 1.5)]),
            white,
            aa=True,
        )
    elif rng.random() < 0.7:
        edge = r.half - scene.metres(0.45)
        _fill(
            scene.canvas,
            np.concatenate([_solid(r, edge, lw), _solid(r, -edge, lw)]),
            white,
            aa=True,
        )
    quads = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        mid = (a + b) / 2
        if dirs[a] != dirs[b]:
            if highway:  # the median separates the directions
                continue
            if rng.random() < 0.6:  # double yellow centre line
                _fill(
                    scene.canvas,
                    np.concatenate([_solid(r, mid - lw, lw), _solid(r, mid + lw, lw)]),
                    yellow,
                    aa=True,
                )
            else:
                quads.append(_dashes(scene, r, mid, dash, gap, lw))
        elif abs(b - a) < r.lane_w * 1.5:
            quads.append(_dashes(scene, r, mid, dash, gap, lw))
    if quads:
        _fill(scene.canvas, np.concatenate(quads), white, aa=True)
    if not highway and rng.random() < 0.5:  # painted arrows in some lanes
        for off, sgn in r.lanes:
            if rng.random() < 0.5:
                continue
            t = float(rng.uniform(r.t0, r.t1))
            _arrow(scene, r.c + r.d * t + r.n * off, r.d * sgn, white)


def _arrow(scene: _Scene, p: np.ndarray, d: np.ndarray, color: Color) -> None:
    n = np.array([-d[1], d[0]])
    m = scene.metres
    shaft = np.array(
        [
            p - d * m(2.0) - n * m(0.12),
            p + d * m(0.8) - n * m(0.12),
            p + d * m(0.8) + n * m(0.12),
            p - d * m(2.0) + n * m(0.12),
        ]
    )
    head = np.array([p + d * m(0.8) - n * m(0.45), p + d * m(2.0), p + d * m(0.8) + n * m(0.45)])
    cv2.fillConvexPoly(scene.canvas, _fp(shaft), color, cv2.LINE_AA, _SHIFT)
    cv2.fillConvexPoly(scene.canvas, _fp(head), color, cv2.LINE_AA, _SHIFT)


def _junction(scene: _Scene, a: _Road, b: _Road, pal: dict, arms_b: tuple[int, ...]) -> None:
    """Clear the crossing box, then paint crosswalks and stop lines on the given arms."""
    rng = scene.rng
    x = a.c
    m = np.array([a.n, b.n])
    corners = [
        np.linalg.solve(m, [sa * a.half, sb * b.half]) + x
        for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]
    box = np.array(corners)
    cv2.fillConvexPoly(scene.canvas, _fp(box), pal["asphalt"], cv2.LINE_AA, _SHIFT)
    sin = abs(float(a.d[0] * b.d[1] - a.d[1] * b.d[0])) + 1e-6
    for road, other, arms in ((a, b, (-1, 1)), (b, a, arms_b)):
        if rng.random() < 0.2:
            continue
        cw_len = scene.metres(float(rng.uniform(2.5, 4.0)))
        reach = other.half / sin + max(other.sidewalk, scene.metres(1.0)) * 0.6 + cw_len / 2
        stripe = scene.metres(0.5)
        offs = np.arange(-road.half + stripe * 0.5, road.half - stripe, 2 * stripe)
        for arm in arms:
            t = arm * reach
            _fill(
                scene.canvas,
                _quads(road.c, road.d, road.n, t - cw_len / 2, t + cw_len / 2, offs, offs + stripe),
                pal["white"],
                aa=True,
            )
            stop = t + arm * (cw_len / 2 + scene.metres(1.0))
            side = (0, road.half) if arm > 0 else (-road.half, 0)
            _fill(
                scene.canvas,
                _quads(road.c, road.d, road.n, stop, stop + arm * scene.metres(0.4), *side),
                pal["white"],
                aa=True,
            )
            scene.crosswalks.append(_Crosswalk(road, t, cw_len))


def _draw_parking(scene: _Scene, pal: dict) -> None:
    rng = scene.rng
    angle = float(rng.uniform(0, math.pi))
    d = _unit(angle)
    n = np.array([-d[1], d[0]])
    c = scene.to_canvas(np.array([scene.W / 2, scene.H / 2]))
    lot = _jitter(rng, pal["asphalt"], 8)
    scene.canvas[:] = lot
    scene.zone[:] = _ROAD
    m = scene.metres
    depth, aisle, stall = m(5.0), m(float(rng.uniform(6.0, 7.5))), m(float(rng.uniform(2.4, 2.8)))
    pitch = 2 * depth + aisle
    lo_n, hi_n = scene.canvas_extent(c, n)
    lo_d, hi_d = scene.canvas_extent(c, d)
    row_offsets = np.arange(lo_n - pitch, hi_n + pitch, pitch) + float(rng.uniform(0, pitch))
    us = np.arange(lo_d, hi_d, stall) + float(rng.uniform(0, stall))
    lw = m(0.12)
    lines = []
    sides: list[np.ndarray] = []
    for o in row_offsets:
        lines.append(_quads(c, d, n, us - lw / 2, us + lw / 2, o - depth, o + depth))
        lines.append(_quads(c, d, n, lo_d, hi_d, o - lw / 2, o + lw / 2))
        for side in (1, -1):
            centres = c + d * (us[:-1, None] + stall / 2) + n * (o + side * depth * 0.55)
            scene.stalls.append(centres)
            sides.append(np.full(len(centres), float(side)))
        aisle_road = _Road(
            c + n * (o + pitch / 2),
            d,
            aisle / 2,
            [(-aisle / 4, 1), (aisle / 4, -1)],
            aisle / 2,
            0.0,
            lo_d,
            hi_d,
        )
        scene.aisles.append(aisle_road)
    _fill(scene.canvas, np.concatenate(lines), pal["white"], aa=True)
    centres = np.concatenate(scene.stalls)
    # Mostly nose-in (heading away from the aisle), some reversed in.
    facing = np.where(rng.random(len(centres)) < 0.7, 1.0, -1.0) * np.concatenate(sides)
    if rng.random() < 0.6:  # a landscaped island with a kerb across the lot
        o = row_offsets[int(rng.integers(len(row_offsets)))]
        island = _quads(c, d, n, lo_d, hi_d, o - m(0.9), o + m(0.9))
        _fill(scene.canvas, island, pal["ground"] if rng.random() < 0.7 else pal["sidewalk"])
        _fill(scene.zone, island, _SIDEWALK)
        keep = np.abs((centres - c) @ n - o) > m(2.0)
        centres, facing = centres[keep], facing[keep]
    scene.stall_centres = centres
    scene.stall_headings = facing[:, None] * n[None]


def _draw_buildings(scene: _Scene, pal: dict, angle: float) -> None:
    """Roofs beside the roads, aligned with them, with shadows cast on whatever is below."""
    rng = scene.rng
    d = _unit(angle)
    n = np.array([-d[1], d[0]])
    tries = int(rng.integers(4, 16)) if pal["urban"] else int(rng.integers(0, 8))
    buildings = []
    for _ in range(tries):
        g = scene.to_canvas(scene.random_image_point(0.2))
        a, b = scene.metres(float(rng.uniform(6, 24))), scene.metres(float(rng.uniform(6, 18)))
        quad = _quads(g, d, n, -a / 2, a / 2, -b / 2, b / 2)[0]
        margin = _quads(g, d, n, -a / 2 - 3, a / 2 + 3, -b / 2 - 3, b / 2 + 3)[0]
        if any(scene.zone_at(p) not in (_GROUND, -1) for p in [*margin, g]):
            continue
        cv2.fillConvexPoly(scene.zone, _fp(quad), _BUILDING, cv2.LINE_8, _SHIFT)
        buildings.append((g, a, b, quad, float(rng.uniform(4, 20))))
    if not buildings:
        return
    if scene.shadow_strength < 0.99:
        shade = _WS.view(
            "building-shade",
            scene.zone.shape,
            (2 * scene.H + 4, int(math.ceil(1.3 * scene.W)) + 4),
            np.uint8,
        )
        shade[:] = 0
        for _, _, _, quad, height in buildings:
            cast = scene.sun_dir * scene.shadow_len * scene.metres(height) * 0.6
            cv2.fillConvexPoly(
                shade, _fp(_hull(np.vstack([quad, quad + cast]))), 1, cv2.LINE_8, _SHIFT
            )
        dark = shade.astype(bool)
        scene.canvas[dark] = (scene.canvas[dark] * scene.shadow_strength).astype(np.uint8)
    for g, a, b, quad, _ in buildings:
        roof = (
            _random_color(rng, 70, 200) if rng.random() < 0.4 else _jitter(rng, (150, 145, 140), 35)
        )
        cv2.fillConvexPoly(scene.canvas, _fp(quad), roof, cv2.LINE_AA, _SHIFT)
        if rng.random() < 0.5:  # gable roof: the two slopes catch the light differently
            half = _quads(g, d, n, -a / 2, a / 2, 0, b / 2)[0]
            cv2.fillConvexPoly(scene.canvas, _fp(half), _scale(roof, 0.78), cv2.LINE_AA, _SHIFT)
        else:  # flat roof with parapet and rooftop units
            inset = scene.metres(0.6)
            inner = _quads(g, d, n, -a / 2 + inset, a / 2 - inset, -b / 2 + inset, b / 2 - inset)[0]
            cv2.fillConvexPoly(scene.canvas, _fp(inner), _scale(roof, 0.92), cv2.LINE_AA, _SHIFT)
            for _ in range(int(rng.integers(0, 4))):
                u, v = rng.uniform(-0.35, 0.35) * a, rng.uniform(-0.35, 0.35) * b
                s = scene.metres(float(rng.uniform(0.8, 2.0)))
                unit = _quads(g + d * u + n * v, d, n, -s / 2, s / 2, -s / 2, s / 2)[0]
                cv2.fillConvexPoly(
                    scene.canvas, _fp(unit), _jitter(rng, (175, 178, 180), 25), cv2.LINE_AA, _SHIFT
                )


def _draw_road_clutter(scene: _Scene, pal: dict) -> None:
    """Manholes, oil stains and patches: road texture that is not an object."""
    rng = scene.rng
    for _ in range(int(rng.integers(0, 10))):
        g = scene.to_canvas(scene.random_image_point(0.0))
        if scene.zone_at(g) != _ROAD:
            continue
        kind = rng.random()
        centre = tuple(int(v) for v in _fp(g))
        if kind < 0.35:
            r = int(scene.metres(0.35) * _ONE)
            cv2.circle(
                scene.canvas, centre, r, _scale(pal["asphalt"], 0.7), -1, cv2.LINE_AA, _SHIFT
            )
            cv2.circle(
                scene.canvas,
                centre,
                int(r * 0.75),
                _scale(pal["asphalt"], 0.95),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        elif kind < 0.75:
            axes = (
                int(scene.metres(float(rng.uniform(0.4, 1.3))) * _ONE),
                int(scene.metres(float(rng.uniform(0.3, 0.8))) * _ONE),
            )
            cv2.ellipse(
                scene.canvas,
                centre,
                axes,
                float(rng.uniform(0, 180)),
                0,
                360,
                _scale(pal["asphalt"], float(rng.uniform(0.75, 0.9))),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        else:
            ang = float(rng.uniform(0, math.pi))
            d = _unit(ang)
            n = np.array([-d[1], d[0]])
            s1, s2 = (
                scene.metres(float(rng.uniform(1, 4))),
                scene.metres(float(rng.uniform(0.8, 3))),
            )
            q = _quads(g, d, n, -s1, s1, -s2, s2)[0]
            cv2.fillConvexPoly(
                scene.canvas,
                _fp(q),
                _scale(pal["asphalt"], float(rng.uniform(0.85, 1.15))),
                cv2.LINE_AA,
                _SHIFT,
            )


def _build_ground(scene: _Scene) -> dict:
    rng = scene.rng
    pal = _ground_colors(rng)
    scene.canvas[:] = pal["ground"]
    layout = rng.choice(5, p=[0.28, 0.3, 0.15, 0.12, 0.15])
    centre = scene.to_canvas(
        np.array([rng.uniform(0.25, 0.75) * scene.W, rng.uniform(0.3, 0.8) * scene.H])
    )
    angle = float(rng.uniform(0, math.pi))
    if layout == 4:
        _draw_parking(scene, pal)
        scene.layout = "parking"
        return pal
    highway = layout == 3
    main = _make_road(scene, centre, angle, highway=highway)
    roads = [main]
    if layout in (1, 2):
        cross_angle = angle + math.pi / 2 + float(rng.uniform(-0.35, 0.35))
        if layout == 2:  # T junction: the side road starts at the main road's centre line
            sign = 1 if rng.random() < 0.5 else -1
            side = _make_road(scene, centre, cross_angle + (0 if sign > 0 else math.pi), t0=0.0)
        else:
            side = _make_road(scene, centre, cross_angle)
        roads.append(side)
    _draw_sidewalks(scene, roads, pal)
    for r in roads:
        _draw_carriageway(scene, r, pal)
    if len(roads) == 2 and roads[1].t0 == 0.0:  # the side road's sidewalks stop at the kerb
        side = roads[1]
        main_edge = main.half + main.sidewalk
        _fill(
            scene.canvas,
            _quads(side.c, side.d, side.n, main.half, main_edge, -side.half, side.half),
            pal["asphalt"],
        )
    for r in roads:
        _draw_markings(scene, r, pal, highway)
    if len(roads) == 2:
        _junction(scene, roads[0], roads[1], pal, (1,) if roads[1].t0 == 0.0 else (-1, 1))
    _draw_road_clutter(scene, pal)
    _draw_buildings(scene, pal, angle)
    scene.roads = roads
    scene.layout = ("straight", "intersection", "t-junction", "highway")[layout]
    return pal


# --------------------------------------------------------------------------- placement


_CLASS_PRIORS = {
    "straight": [0.45, 0.15, 0.12, 0.28],
    "intersection": [0.42, 0.12, 0.14, 0.32],
    "t-junction": [0.44, 0.14, 0.12, 0.30],
    "highway": [0.5, 0.27, 0.17, 0.06],
    "parking": [0.6, 0.1, 0.08, 0.22],
}
# Metres-equivalent height of the upright pedestrian figure, and its smallest pixel size (a
# figure shorter than this is under MIN_BOX_SIDE wide and would be rejected anyway).
_PED_HEIGHT_M = 3.2
_PED_MIN_PX = 17.0


def _vehicle_site(scene: _Scene, category: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A canvas point and heading for a vehicle: in a lane, or in a parking stall."""
    rng = scene.rng
    g = scene.to_canvas(scene.random_image_point())
    if scene.layout == "parking":
        if category == CAR and len(scene.stall_centres) and rng.random() < 0.8:
            nearest = int(np.argmin(((scene.stall_centres - g) ** 2).sum(axis=1)))
            centre, heading = scene.stall_centres[nearest], scene.stall_headings[nearest]
            return centre + rng.normal(0, scene.metres(0.15), 2), heading
        roads = scene.aisles
    else:
        roads = scene.roads
    if not roads:
        return None
    road = roads[int(rng.integers(len(roads)))]
    off, sgn = road.lanes[int(rng.integers(len(road.lanes)))]
    t = float((g - road.c) @ road.d)
    if t < road.t0:
        return None
    point = road.c + road.d * t + road.n * (off + rng.normal(0, scene.metres(0.2)))
    heading = road.d * sgn
    return point, heading


def _pedestrian_site(scene: _Scene) -> np.ndarray | None:
    rng = scene.rng
    g = scene.to_canvas(scene.random_image_point())
    roll = rng.random()
    if scene.crosswalks and roll < 0.3:
        cw = scene.crosswalks[int(rng.integers(len(scene.crosswalks)))]
        road = cw.road
        return (
            road.c
            + road.d * (cw.t + rng.uniform(-0.4, 0.4) * cw.length)
            + road.n * rng.uniform(-road.half, road.half)
        )
    walks = [r for r in scene.roads if r.sidewalk > 0]
    if walks and roll < 0.85:
        road = walks[int(rng.integers(len(walks)))]
        t = float((g - road.c) @ road.d)
        if t < road.t0:
            return None
        side = 1 if rng.random() < 0.5 else -1
        return (
            road.c
            + road.d * t
            + road.n * side * (road.half + road.sidewalk * rng.uniform(0.15, 0.85))
        )
    if scene.layout == "parking" and scene.aisles and roll < 0.85:
        road = scene.aisles[int(rng.integers(len(scene.aisles)))]
        t = float((g - road.c) @ road.d)
        return road.c + road.d * t + road.n * rng.uniform(-road.half, road.half)
    return g if scene.zone_at(g) in (_GROUND, _SIDEWALK, -1) else None


def _make_candidate(scene: _Scene, category: int, taken: np.ndarray) -> _Object | None:
    """A random placement of one object, or None; ``taken`` marks occupied ground pixels."""
    rng = scene.rng
    if category == PEDESTRIAN:
        g = _pedestrian_site(scene)
        if g is None:
            return None
        feet = scene.to_image(g)
        height = _PED_HEIGHT_M * scene.px_per_metre(g) * float(rng.uniform(0.82, 1.08))
        if height < _PED_MIN_PX:  # spread, not clamp: a spike at one size is easy to overfit
            height = _PED_MIN_PX * float(rng.uniform(1.0, 1.25))
        fx, fy = int(feet[0]), int(feet[1])
        if 0 <= fx < scene.W and 0 <= fy < scene.H and taken[fy, fx]:
            return None
        if not (0 <= feet[1] < scene.H + height / 2 and -height < feet[0] < scene.W + height):
            return None  # at most half of the figure could be in view
        ops = _pedestrian_ops(rng, feet, height)
        shadow_vec = scene.sun_dir * height * 0.6 * scene.shadow_len
        w = height * 0.12
        shadow = np.array(
            [
                feet + [-w, 0],
                feet + [w, 0],
                feet + shadow_vec + [w * 0.6, 0],
                feet + shadow_vec + [-w * 0.6, 0],
            ]
        )
        footprint = _rect(
            feet[0] - 0.14 * height,
            feet[0] + 0.14 * height,
            feet[1] - 0.05 * height,
            feet[1] + 0.03 * height,
        )
        return _finish(
            scene,
            category,
            ops,
            lambda: ops,
            depth=float(feet[1]),
            shadow=_hull(shadow),
            lights=None,
            footprint=footprint,
        )
    site = _vehicle_site(scene, category)
    if site is None:
        return None
    g, heading = site
    p = scene.to_image(g)
    px, py = int(p[0]), int(p[1])
    if 0 <= px < scene.W and 0 <= py < scene.H and taken[py, px]:
        return None  # the spot is taken: skip building a vehicle that cannot be kept
    if not (
        -0.2 * scene.S < p[0] < scene.W + 0.2 * scene.S
        and -0.2 * scene.S < p[1] < scene.H + 0.2 * scene.S
    ):
        return None
    jitter = float(rng.normal(0, 0.05))
    c, s = math.cos(jitter), math.sin(jitter)
    heading = np.array([c * heading[0] - s * heading[1], s * heading[0] + c * heading[1]])
    rot = np.array([heading, [-heading[1], heading[0]]]).T  # columns: forward, sideways
    affine = scene.jacobian(g) @ rot * scene.m2c
    pose = _VehiclePose(p, affine, scene.lift(p, g))
    shape = _SHAPE_BUILDERS[category](rng)
    ops = _vehicle_ops(shape, pose, detailed=False)
    foot = pose(np.vstack([b.footprint for b in shape.blocks]), 0)
    height = max(b.height for b in shape.blocks)
    shadow_vec = scene.sun_dir * scene.shadow_len * height * scene.px_per_metre(g) * 0.8
    shadow = _hull(np.vstack([foot, foot + shadow_vec]))
    lights = np.array([pose(np.array([lt]), 0.8)[0] for lt in shape.lights])
    return _finish(
        scene,
        category,
        ops,
        lambda: _vehicle_ops(shape, pose, detailed=True),
        depth=float(foot[:, 1].max()),
        shadow=shadow,
        lights=lights,
        footprint=_hull(foot),
    )


def _finish(
    scene: _Scene,
    category: int,
    ops: list[Op],
    full_ops,
    depth: float,
    shadow: np.ndarray,
    lights: np.ndarray | None,
    footprint: np.ndarray,
) -> _Object | None:
    x0, y0, x1, y1 = _ops_bounds(ops)
    if (
        x1 <= 0
        or y1 <= 0
        or x0 >= scene.W
        or y0 >= scene.H
        or x1 - x0 > 2 * scene.S
        or y1 - y0 > 2 * scene.S
    ):
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _draw_ops(mask, ops, x0, y0, value=255)
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area == 0:
        return None
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, scene.W), min(y1, scene.H)
    clipped = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    cols = np.flatnonzero(clipped.any(axis=0))
    rows = np.flatnonzero(clipped.any(axis=1))
    if cols.size == 0:
        return None
    box = (cx0 + int(cols[0]), cy0 + int(rows[0]), cx0 + int(cols[-1]) + 1, cy0 + int(rows[-1]) + 1)
    bw, bh = box[2] - box[0], box[3] - box[1]
    if min(bw, bh) < MIN_BOX_SIDE or max(bw, bh) > MAX_BOX_FRACTION * scene.S:
        return None
    fp = _fp(footprint)
    fx0, fy0 = (fp.min(axis=0) // _ONE - 1).tolist()
    fx1, fy1 = (fp.max(axis=0) // _ONE + 2).tolist()
    ground = np.zeros((fy1 - fy0, fx1 - fx0), np.uint8)
    cv2.fillConvexPoly(
        ground, fp - np.array([fx0 * _ONE, fy0 * _ONE], np.int32), 1, cv2.LINE_8, _SHIFT
    )
    return _Object(
        category,
        ops,
        depth,
        x0,
        y0,
        mask,
        area,
        box,
        full_ops,
        shadow,
        lights,
        (fx0, fy0, ground.astype(bool)),
    )


class _Occupancy:
    """Who owns each pixel (painter's order) and how much of every object stays visible."""

    def __init__(self, width: int, height: int) -> None:
        self.W, self.H = width, height
        self.owner = _WS.get("owner", (height, width), np.int32)
        self.owner[:] = -1
        self.ground = _WS.get("ground", (height, width), bool)
        self.ground[:] = False
        self.objects: list[_Object] = []
        self.depths: list[float] = []

    def _ground_overlap(self, obj: _Object) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Where the object touches the ground, or None if that is already taken.

        Two things cannot stand on the same spot; a little overlap is allowed because boxes
        hug the roof outline, not the tyres.
        """
        x0, y0, mask = obj.ground
        h, w = mask.shape
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, self.W), min(y0 + h, self.H)
        if cx1 <= cx0 or cy1 <= cy0:
            return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
        clipped = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        region = (slice(cy0, cy1), slice(cx0, cx1))
        if np.count_nonzero(clipped & self.ground[region]) > 0.1 * max(1, np.count_nonzero(mask)):
            return None
        return region, clipped

    def try_add(self, obj: _Object) -> bool:
        ground = self._ground_overlap(obj)
        if ground is None:
            return False
        x0, y0 = obj.x0, obj.y0
        h, w = obj.mask.shape
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, self.W), min(y0 + h, self.H)
        mask = obj.mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        region = self.owner[cy0:cy1, cx0:cx1]
        # depths[-1] is the sentinel for "no owner", so owner -1 indexes -inf.
        depth_lut = np.array([*self.depths, -np.inf])
        wins = mask & (depth_lut[region] <= obj.depth)
        visible = int(wins.sum())
        if visible < MIN_VISIBLE_FRACTION * obj.area:
            return False
        losers = region[wins]
        losers = losers[losers >= 0]
        lost = np.bincount(losers, minlength=len(self.objects)) if losers.size else None
        if lost is not None:
            for j in np.flatnonzero(lost):
                other = self.objects[j]
                if other.visible - lost[j] < MIN_VISIBLE_FRACTION * other.area:
                    return False
            for j in np.flatnonzero(lost):
                self.objects[j].visible -= int(lost[j])
        region[wins] = len(self.objects)
        self.ground[ground[0]] |= ground[1]
        obj.visible = visible
        self.objects.append(obj)
        self.depths.append(obj.depth)
        return True


# --------------------------------------------------------------------------- image-space layers


def _texture(
    rng: np.random.Generator,
    width: int,
    height: int,
    cells: int,
    amount: float,
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth random field with standard deviation about ``amount`` (bicubic upsampled noise)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32) * np.float32(amount)
    return cv2.resize(small, (width, height), dst=dst, interpolation=cv2.INTER_CUBIC)


def _draw_trees_and_poles(scene: _Scene, img: np.ndarray, shadow: np.ndarray) -> None:
    rng = scene.rng
    n_trees = int(rng.integers(0, 9)) if scene.layout != "parking" else int(rng.integers(0, 3))
    trees = []
    for _ in range(n_trees):
        g = scene.to_canvas(scene.random_image_point(0.1))
        if (
            scene.zone_at(g) not in (_GROUND, _SIDEWALK)
            or scene.layout == "parking"
            and rng.random() < 0.5
        ):
            continue
        trees.append(g)
    for g in sorted(trees, key=lambda q: scene.to_image(q)[1]):
        p = scene.to_image(g)
        ppm = scene.px_per_metre(g)
        radius = float(rng.uniform(1.6, 4.5)) * ppm
        lift = scene.lift(p, g)
        trunk_h = float(rng.uniform(2.5, 5.0))
        crown = p - lift * (trunk_h + radius / ppm)
        sh = p + scene.sun_dir * scene.shadow_len * (trunk_h + radius / ppm) * ppm
        cv2.circle(
            shadow, tuple(int(v) for v in _fp(sh)), int(radius * _ONE), 255, -1, cv2.LINE_AA, _SHIFT
        )
        if np.linalg.norm(lift) * trunk_h > 1.5:
            cv2.line(
                img,
                tuple(int(v) for v in _fp(p)),
                tuple(int(v) for v in _fp(crown)),
                _jitter(rng, (90, 65, 45), 15),
                max(1, int(0.35 * ppm)),
                cv2.LINE_AA,
                _SHIFT,
            )
        leaf = (
            _jitter(rng, (55, 105, 45), 25)
            if rng.random() < 0.85
            else _jitter(rng, (170, 110, 40), 30)
        )
        cv2.circle(
            img,
            tuple(int(v) for v in _fp(crown)),
            int(radius * _ONE),
            _scale(leaf, 0.75),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        for _ in range(int(rng.integers(3, 7))):
            off = rng.normal(0, 0.35, 2) * radius - scene.sun_dir * radius * 0.2
            cv2.circle(
                img,
                tuple(int(v) for v in _fp(crown + off)),
                int(radius * rng.uniform(0.3, 0.6) * _ONE),
                _scale(leaf, float(rng.uniform(0.9, 1.25))),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
    for _ in range(int(rng.integers(0, 6))):
        g = scene.to_canvas(scene.random_image_point(0.05))
        if scene.zone_at(g) != _SIDEWALK:
            continue
        p = scene.to_image(g)
        ppm = scene.px_per_metre(g)
        lift = scene.lift(p, g)
        if np.linalg.norm(lift) < 0.35 * ppm:
            lift = (
                lift / (np.linalg.norm(lift) + 1e-9) * 0.35 * ppm
                if np.linalg.norm(lift) > 0
                else np.array([0, 0.35 * ppm])
            )
        height = float(rng.uniform(2.5, 5.0))
        top = p - lift * height
        sh_end = p + scene.sun_dir * scene.shadow_len * height * ppm
        cv2.line(
            shadow,
            tuple(int(v) for v in _fp(p)),
            tuple(int(v) for v in _fp(sh_end)),
            255,
            max(1, int(0.15 * ppm)),
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.line(
            img,
            tuple(int(v) for v in _fp(p)),
            tuple(int(v) for v in _fp(top)),
            (110, 112, 115),
            max(1, int(0.12 * ppm)),
            cv2.LINE_AA,
            _SHIFT,
        )
        kind = rng.random()
        plate = max(1.5, 0.35 * ppm)
        if kind < 0.35:  # round sign
            cv2.circle(
                img,
                tuple(int(v) for v in _fp(top)),
                int(plate * _ONE),
                (200, 30, 30),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
            cv2.circle(
                img,
                tuple(int(v) for v in _fp(top)),
                int(plate * 0.65 * _ONE),
                (235, 235, 235),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        elif kind < 0.6:  # triangle / square sign
            tri = top + np.array([[0, -plate], [plate, plate * 0.7], [-plate, plate * 0.7]])
            cv2.fillConvexPoly(img, _fp(tri), _jitter(rng, (40, 90, 170), 40), cv2.LINE_AA, _SHIFT)
        else:  # street lamp
            arm = top + np.array([plate * 2.2, 0])
            cv2.line(
                img,
                tuple(int(v) for v in _fp(top)),
                tuple(int(v) for v in _fp(arm)),
                (110, 112, 115),
                max(1, int(0.1 * ppm)),
                cv2.LINE_AA,
                _SHIFT,
            )
            cv2.circle(
                img,
                tuple(int(v) for v in _fp(arm)),
                int(plate * 0.6 * _ONE),
                (235, 230, 190),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
            scene.lamps.append(p + np.array([plate * 2.2, 0]))


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Unit gaussian noise shared by all images; each image reads a random window of it.

    Drawing fresh normals for every pixel costs more than the rest of the sensor model.
    """
    return np.random.default_rng(20261121).standard_normal(
        (_NOISE_BANK, _NOISE_BANK, 3), np.float32
    )


_NOISE_BANK = 1024


def _illumination(scene: _Scene, kept: list[_Object]) -> np.ndarray:
    """Smooth light level per pixel (gradient, clouds, vignetting, street lamps).

    Computed on a quarter-resolution grid and upsampled: it has no fine detail.
    """
    rng = scene.rng
    H, W = scene.H, scene.W
    h, w = max(2, H // 4), max(2, W // 4)
    yy, xx = np.meshgrid(
        (np.arange(h, dtype=np.float32) + 0.5) * (H / h),
        (np.arange(w, dtype=np.float32) + 0.5) * (W / w),
        indexing="ij",
    )
    gain = float(
        (
            rng.uniform(0.92, 1.12),
            rng.uniform(0.8, 0.98),
            rng.uniform(0.55, 0.75),
            rng.uniform(0.4, 0.52),
        )[scene.time]
    )
    direction = _unit(float(rng.uniform(0, 2 * math.pi)))
    ramp = ((xx - W / 2) * direction[0] + (yy - H / 2) * direction[1]) / scene.S
    illum = gain * (1 + float(rng.uniform(0, 0.35)) * ramp)
    if scene.time in (0, 2) and rng.random() < 0.3:  # drifting cloud shadows
        cloud = _texture(rng, w, h, 4, 1.0)
        illum *= 1 - float(rng.uniform(0.1, 0.3)) * np.clip((cloud - 0.2) * 3, 0, 1)
    if rng.random() < 0.4:  # lens vignetting
        r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (scene.S / 2) ** 2
        illum *= 1 - float(rng.uniform(0.05, 0.25)) * r2
    if scene.time == 3:  # night: pools of light under lamps and a few unseen ones
        lamps = scene.lamps + [
            scene.random_image_point(0.0) for _ in range(int(rng.integers(1, 4)))
        ]
        for lamp in lamps:
            sigma = scene.S * float(rng.uniform(0.08, 0.2))
            strength = float(rng.uniform(0.4, 0.8))
            illum += strength * np.exp(
                -((xx - lamp[0]) ** 2 + (yy - lamp[1]) ** 2) / (2 * sigma**2)
            )
    return cv2.resize(
        illum.astype(np.float32),
        (W, H),
        dst=_WS.get("illum", (H, W)),
        interpolation=cv2.INTER_LINEAR,
    )


def _light_and_sensor(
    scene: _Scene, img: np.ndarray, kept: list[_Object], sensor_noise: bool = True
) -> np.ndarray:
    rng = scene.rng
    H, W = scene.H, scene.W
    cast = np.array(
        [(1, 1, 1), (0.97, 0.99, 1.03), (1.12, 0.95, 0.78), (0.8, 0.92, 1.18)][scene.time],
        np.float32,
    ) * (1 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    illum = _illumination(scene, kept)
    # cv2.merge + elementwise ops: numpy broadcasting over channels is several times slower.
    light = cv2.merge([illum * c for c in cast.tolist()], dst=_WS.get("light", (H, W, 3)))
    out = _WS.get("out", (H, W, 3))
    np.copyto(out, img)
    if scene.time == 1:  # overcast: washed-out colours
        grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        cv2.addWeighted(out, 0.7, cv2.merge([grey, grey, grey]), 0.3, 0.0, dst=out)
    cv2.multiply(out, light, dst=out)
    if scene.time == 3:  # headlights glow on their own
        glow = _WS.get("glow", (H, W, 3))
        glow[:] = 0
        radius = max(1.0, scene.S * 0.006)
        for obj in kept:
            for q in obj.lights if obj.lights is not None else ():
                cv2.circle(
                    glow,
                    tuple(int(v) for v in _fp(q)),
                    int(radius * _ONE),
                    (380, 360, 300),
                    -1,
                    cv2.LINE_AA,
                    _SHIFT,
                )
        cv2.add(out, cv2.GaussianBlur(glow, (0, 0), radius, dst=light), dst=out)
    if rng.random() < 0.8:  # optics
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.35, 0.9)), dst=light)
    if rng.random() < 0.08:  # a little motion blur
        k = int(rng.integers(3, 6))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        out = cv2.filter2D(out, -1, kernel / max(float(kernel.sum()), 1e-6))
    if not sensor_noise:  # the scene as it is, e.g. a deblurring target (ops.restoration.gopro)
        return np.clip(out, 0, 255, out=out).astype(np.uint8)
    sigma = float(rng.uniform(1.5, 6.0)) * (1.4 if scene.time == 3 else 1.0)
    if H <= _NOISE_BANK and W <= _NOISE_BANK:
        oy, ox = (
            int(rng.integers(0, _NOISE_BANK - H + 1)),
            int(rng.integers(0, _NOISE_BANK - W + 1)),
        )
        noise = _noise_bank()[oy : oy + H, ox : ox + W]
    else:
        noise = rng.standard_normal((H, W, 3), dtype=np.float32)
    cv2.scaleAdd(noise, sigma, out, dst=out)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, _SPLIT_CODES[split], index]))


def render_traffic_scene(cfg: TrafficGeneratorConfig, split: str, index: int) -> RenderedScene:
    """Render image ``index`` (0-based; written as ``f"{index + 1:06d}.jpg"``) of ``split``.

    Depends only on ``(cfg, split, index)``, which is what makes the dataset reproducible
    image by image.
    """
    rng = _scene_rng(cfg.seed, split, index)
    for _ in range(8):
        result = _render_attempt(rng, cfg)
        if result is not None:
            return result
    raise DatasetError(
        f"could not place {cfg.min_objects} objects in a {cfg.image_width}x{cfg.image_height} "
        f"image ({split} #{index}): lower traffic.dataset.generator.min_objects "
        "or enlarge the image"
    )



def warp_scene_canvas(scene: _Scene, out: np.ndarray) -> np.ndarray:
    """Draw the scene's ground canvas into ``out`` as its camera sees it: through the
    perspective homography, or as is for a top-down camera. Shared by stills and video."""
    height, width = out.shape[:2]
    if scene.hom is not None:
        cv2.warpPerspective(
            scene.canvas,
            scene.hom,
            (width, height),
            dst=out,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    else:
        np.copyto(out, scene.canvas)
    return out


def _render_attempt(rng: np.random.Generator, cfg: TrafficGeneratorConfig) -> RenderedScene | None:
    W, H = cfg.image_width, cfg.image_height
    scene = _Scene(rng, W, H)
    pal = _build_ground(scene)

    target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    priors = np.array(_CLASS_PRIORS[scene.layout])
    occupancy = _Occupancy(W, H)
    attempts = 12 * target + 40
    while len(occupancy.objects) < target and attempts > 0:
        attempts -= 1
        category = int(rng.choice(4, p=priors)) + 1
        obj = _make_candidate(scene, category, occupancy.ground)
        if obj is not None:
            occupancy.try_add(obj)
    kept = occupancy.objects
    if len(kept) < cfg.min_objects:
        return None

    img = warp_scene_canvas(scene, _WS.get("image", (H, W, 3), np.uint8))
    shadow = _WS.get("shadow", (H, W), np.uint8)
    shadow[:] = 0
    _draw_trees_and_poles(scene, img, shadow)
    # Ground texture (blotchy wear plus fine grain) and cast shadows in one multiply.
    shade = _texture(
        rng,
        W,
        H,
        int(rng.integers(5, 12)),
        0.05 if pal["urban"] else 0.08,
        dst=_WS.get("shade", (H, W)),
    )
    shade += 1
    shade += _texture(
        rng, W, H, max(8, W // 6), float(rng.uniform(0.02, 0.05)), dst=_WS.get("grain", (H, W))
    )
    if scene.shadow_strength < 0.99:
        for obj in kept:
            cv2.fillConvexPoly(shadow, _fp(obj.shadow), 255, cv2.LINE_AA, _SHIFT)
        darken = _WS.get("darken", (H, W))
        np.multiply(shadow, np.float32((1 - scene.shadow_strength) / 255.0), out=darken)
        np.subtract(1, darken, out=darken)
        shade *= darken
    shade3 = cv2.merge([shade, shade, shade], dst=_WS.get("shade3", (H, W, 3)))
    cv2.multiply(img, shade3, dst=img, dtype=cv2.CV_8U)
    for obj in sorted(kept, key=lambda o: o.depth):  # stable: ties keep placement order
        h, w = obj.mask.shape
        patch = np.zeros((h, w, 3), np.uint8)
        _draw_ops(patch, obj.full_ops(), obj.x0, obj.y0)
        cx0, cy0 = max(obj.x0, 0), max(obj.y0, 0)
        cx1, cy1 = min(obj.x0 + w, W), min(obj.y0 + h, H)
        sub = (slice(cy0 - obj.y0, cy1 - obj.y0), slice(cx0 - obj.x0, cx1 - obj.x0))
        m = obj.mask[sub]
        img[cy0:cy1, cx0:cx1][m] = patch[sub][m]
    image = _light_and_sensor(scene, img, kept)
    boxes = np.array(
        [[o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in kept], np.float32
    ).reshape(-1, 4)
    return RenderedScene(
        image=image,
        boxes=boxes,
        category_ids=np.array([o.category for o in kept], np.int64),
        visible_fractions=np.array([o.visible / o.area for o in kept], np.float32),
    )


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise DatasetError(f"could not encode {path} as JPEG")
    path.write_bytes(buf.tobytes())


def _coco_document(
    cfg: TrafficGeneratorConfig, split: str, images: list[dict], annotations: list[dict]
) -> dict[str, Any]:
    return {
        "info": {
            "description": "visionforge procedural traffic scenes (car, truck, bus, pedestrian)",
            "version": RENDERER_VERSION,
            "split": split,
            "generator": {
                "name": "ops.detection.scenes",
                "renderer_version": RENDERER_VERSION,
                "config": cfg.model_dump(mode="json"),
            },
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": traffic_categories(),
    }


def _render_to_file(
    cfg: TrafficGeneratorConfig, split: str, index: int, path: Path
) -> tuple[list[list[float]], list[int]]:
    """Render scene ``index`` of ``split`` to the JPEG ``path``; return its boxes and classes."""
    scene = render_traffic_scene(cfg, split, index)
    _write_jpeg(path, scene.image, cfg.jpeg_quality)
    return scene.boxes.tolist(), scene.category_ids.tolist()


def _write_split(
    tmp: Path, cfg: TrafficGeneratorConfig, split: str, bar: tqdm, pool: Executor | None
) -> int:
    count = cfg.num_train if split == "train" else cfg.num_val
    image_dir = tmp / "images" / split
    image_dir.mkdir(parents=True)
    file_names = [f"{index + 1:06d}.jpg" for index in range(count)]
    jobs = (
        [cfg] * count,
        [split] * count,
        range(count),
        [image_dir / name for name in file_names],
    )
    # Scenes depend only on (cfg, split, index), so rendering them in parallel changes no byte.
    rendered = pool.map(_render_to_file, *jobs, chunksize=16) if pool else map(_render_to_file, *jobs)
    images: list[dict] = []
    annotations: list[dict] = []
    rows = zip(file_names, rendered, strict=True)
    for image_id, (file_name, (boxes, categories)) in enumerate(rows, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": cfg.image_width,
                "height": cfg.image_height,
            }
        )
        for box, category in zip(boxes, categories, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        bar.update(1)
    ann_path = tmp / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps(_coco_document(cfg, split, images, annotations)) + "\n")
    return len(annotations)


def generate_traffic_dataset(
    root: Path, cfg: TrafficGeneratorConfig, progress: bool = True, workers: int | None = None
) -> Path:
    """Write ``cfg``'s procedural traffic dataset to ``root`` in the COCO layout; return ``root``.

    Layout: ``images/{train,val}/NNNNNN.jpg`` and ``annotations/instances_{train,val}.json``.
    Everything is written to a hidden sibling directory first and renamed onto ``root`` at
    the end, so an interrupted run never leaves a half-written dataset that looks complete.
    ``workers`` processes render the scenes (default :func:`default_workers`; 1 renders in
    this process); the files are identical whatever the number.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"dataset root {root} exists and is not a directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(root, "tmp")
    total = cfg.num_train + cfg.num_val
    log.info(
        "generating %d traffic scenes (%dx%d, seed %d) into %s",
        total,
        cfg.image_width,
        cfg.image_height,
        cfg.seed,
        root,
    )
    workers = default_workers() if workers is None else workers
    # Spawned, not forked: the caller (a Dagster run, a training process) may hold threads
    # whose locks a forked child would inherit mid-use.
    pool = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1
        else None
    )
    try:
        with tqdm(total=total, disable=not progress, desc="traffic scenes", unit="img") as bar:
            counts = {split: _write_split(tmp, cfg, split, bar, pool) for split in SPLITS}
        swap_into_place(tmp, root)
    finally:
        if pool is not None:  # no worker may still write into tmp once it is removed
            pool.shutdown(wait=True, cancel_futures=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "wrote %s: %d train / %d val images, %d / %d objects",
        root,
        cfg.num_train,
        cfg.num_val,
        counts["train"],
        counts["val"],
    )
    return root
