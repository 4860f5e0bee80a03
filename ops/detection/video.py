"""Short traffic clips from the procedural scene renderer: one fixed scene, vehicles driving.

The detector's demo and the C++ program need a real video to run on, and none can be
downloaded. A clip here is one scene of :mod:`ops.detection.scenes` (camera, road,
markings, trees, lighting) rendered once, with vehicles that drive along the main road's
lanes at a constant speed per lane, so consecutive frames differ only by smooth motion:

* the ground, trees and their shadows are drawn once; each frame copies them, adds the
  vehicles' cast shadows, and paints the vehicles back to front (painter's order by the
  image row of their ground contact, as the still renderer does);
* vehicles of one lane share its speed and keep their spacing, so they never drive into
  each other; a vehicle leaving the canvas re-enters at the other end, off screen;
* lighting and sensor effects (illumination, colour cast, blur, noise) are drawn from the
  same seed for every frame, so the light does not flicker between frames.

Everything depends only on the arguments (the seed above all): the same call writes the
same frames. The file is written beside its destination and renamed into place when
complete, so an interrupted run never leaves a truncated clip under the final name.

    python -m ops.detection.video artifacts/traffic/video/traffic.mp4 --seed 7
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from ops.detection.scenes import (
    _SHAPE_BUILDERS,
    BUS,
    CAR,
    TRUCK,
    _build_ground,
    _draw_ops,
    _draw_trees_and_poles,
    _fp,
    _hull,
    _light_and_sensor,
    _Road,
    _Scene,
    _texture,
    _vehicle_ops,
    _VehiclePose,
    _VehicleShape,
    warp_scene_canvas,
)
from ops.errors import DatasetError

log = logging.getLogger(__name__)

DEFAULT_SEED = 7
DEFAULT_WIDTH = 320
DEFAULT_HEIGHT = 240
DEFAULT_FPS = 10
DEFAULT_SECONDS = 5.0
DEFAULT_VEHICLES = 12
FOURCC = "mp4v"  # MPEG-4 part 2: encoded by OpenCV's bundled FFmpeg, decoded by every FFmpeg build

# Vehicle mix on the road (car, truck, bus) and the speed range of a lane, metres/second.
_CATEGORIES = (CAR, TRUCK, BUS)
_CATEGORY_WEIGHTS = (0.72, 0.17, 0.11)
_SPEED_RANGE = (7.0, 14.0)
# Gap to the vehicle ahead, in vehicle lengths: enough that a lane never looks jammed.
_GAP_RANGE = (0.5, 2.0)
# Scenes drawn until one has a road (parking lots have none to drive on).
_MAX_SCENE_ATTEMPTS = 32


@dataclass
class _Vehicle:
    shape: _VehicleShape
    road: _Road
    lane_offset: float  # canvas px from the road's centre line
    direction: int  # +1 along road.d, -1 against it
    t: float  # canvas px along road.d at frame 0
    speed: float  # canvas px per frame, signed with the direction


@dataclass(frozen=True)
class _DrawnVehicle:
    ops: list
    depth: float
    shadow: np.ndarray
    lights: np.ndarray


class TrafficClip:
    """A scene with moving vehicles; :meth:`frame` renders any frame index (RGB uint8)."""

    def __init__(
        self,
        seed: int = DEFAULT_SEED,
        width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT,
        fps: float = DEFAULT_FPS,
        num_vehicles: int = DEFAULT_VEHICLES,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"a traffic clip needs at least 32x32 pixels, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width, self.height, self.fps = width, height, fps
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, 0x7F1DE0]))
        self.scene = self._scene_with_road(rng, width, height)
        scene = self.scene
        # The scene's buffers are shared scratch space of the renderer: copy what we keep.
        image = warp_scene_canvas(scene, np.empty((height, width, 3), np.uint8))
        self.tree_shadow = np.zeros((height, width), np.uint8)
        _draw_trees_and_poles(scene, image, self.tree_shadow)
        self.background = image
        shade = _texture(rng, width, height, int(rng.integers(5, 12)), 0.06) + 1
        shade += _texture(rng, width, height, max(8, width // 6), float(rng.uniform(0.02, 0.05)))
        self.shade = shade.astype(np.float32)
        self.vehicles = self._place_vehicles(rng, num_vehicles)
        # One seed for the light of every frame: illumination and noise stay put over time.
        self.light_seed = int(rng.integers(0, 2**63))

    @staticmethod
    def _scene_with_road(rng: np.random.Generator, width: int, height: int) -> _Scene:
        for _ in range(_MAX_SCENE_ATTEMPTS):
            scene = _Scene(rng, width, height)
            _build_ground(scene)
            if scene.roads and scene.roads[0].lanes:
                return scene
        raise DatasetError(f"no scene with a road in {_MAX_SCENE_ATTEMPTS} attempts; try another seed")

    def _place_vehicles(self, rng: np.random.Generator, count: int) -> list[_Vehicle]:
        """Fill the main road's lanes front to back with spaced vehicles, ``count`` at most."""
        scene = self.scene
        road = scene.roads[0]
        lanes = list(road.lanes)
        per_lane = [count // len(lanes) + (1 if i < count % len(lanes) else 0) for i in range(len(lanes))]
        vehicles: list[_Vehicle] = []
        span = road.t1 - road.t0
        for (offset, direction), wanted in zip(lanes, per_lane, strict=True):
            speed = float(rng.uniform(*_SPEED_RANGE)) * scene.m2c / self.fps * direction
            t = road.t0 + float(rng.uniform(0, 0.3)) * span
            for _ in range(wanted):
                category = int(rng.choice(_CATEGORIES, p=_CATEGORY_WEIGHTS))
                shape = _SHAPE_BUILDERS[category](rng)
                length = shape.length * scene.m2c
                if t + length > road.t1:
                    break  # the lane is full: fewer vehicles rather than overlapping ones
                vehicles.append(_Vehicle(shape, road, offset, direction, t + length / 2, speed))
                t += length * (1 + float(rng.uniform(*_GAP_RANGE)))
        if not vehicles:
            raise DatasetError("the scene's road is too short for a single vehicle; try another seed")
        return vehicles

    def _pose(self, vehicle: _Vehicle, index: int) -> _DrawnVehicle | None:
        scene = self.scene
        road = vehicle.road
        # Drive round the road's extent, with a margin so the wrap happens off the canvas.
        margin = vehicle.shape.length * scene.m2c
        lo, period = road.t0 - margin, road.t1 - road.t0 + 2 * margin
        t = lo + (vehicle.t + vehicle.speed * index - lo) % period
        g = road.c + road.d * t + road.n * vehicle.lane_offset
        p = scene.to_image(g)
        if not (
            -0.3 * scene.S < p[0] < scene.W + 0.3 * scene.S
            and -0.3 * scene.S < p[1] < scene.H + 0.3 * scene.S
        ):
            return None
        heading = road.d * vehicle.direction
        rot = np.array([heading, [-heading[1], heading[0]]]).T  # columns: forward, sideways
        pose = _VehiclePose(p, scene.jacobian(g) @ rot * scene.m2c, scene.lift(p, g))
        shape = vehicle.shape
        foot = pose(np.vstack([b.footprint for b in shape.blocks]), 0)
        height = max(b.height for b in shape.blocks)
        shadow_vec = scene.sun_dir * scene.shadow_len * height * scene.px_per_metre(g) * 0.8
        return _DrawnVehicle(
            ops=_vehicle_ops(shape, pose, detailed=True),
            depth=float(foot[:, 1].max()),
            shadow=_hull(np.vstack([foot, foot + shadow_vec])),
            lights=np.array([pose(np.array([light]), 0.8)[0] for light in shape.lights]),
        )

    def frame(self, index: int, sensor_noise: bool = True) -> np.ndarray:
        """Frame ``index`` (0-based) as an (H, W, 3) uint8 RGB image; ``sensor_noise=False``
        leaves out the sensor's noise (everything else, optics included, is the same)."""
        scene = self.scene
        drawn = [d for v in self.vehicles if (d := self._pose(v, index)) is not None]
        shadow = self.tree_shadow.copy()
        shade = self.shade.copy()
        if scene.shadow_strength < 0.99:
            for vehicle in drawn:
                cv2.fillConvexPoly(shadow, _fp(vehicle.shadow), 255, cv2.LINE_AA, 4)
            shade *= 1 - shadow.astype(np.float32) * np.float32((1 - scene.shadow_strength) / 255.0)
        image = cv2.multiply(self.background, cv2.merge([shade, shade, shade]), dtype=cv2.CV_8U)
        for vehicle in sorted(drawn, key=lambda d: d.depth):  # back to front
            _draw_ops(image, vehicle.ops, 0, 0)
        scene.rng = np.random.default_rng(self.light_seed)
        lit = [SimpleNamespace(lights=vehicle.lights) for vehicle in drawn]
        return _light_and_sensor(scene, image, lit, sensor_noise)  # type: ignore[arg-type]

    def frames(self, count: int) -> Iterator[np.ndarray]:
        for index in range(count):
            yield self.frame(index)


def write_traffic_video(
    path: Path | str,
    seed: int = DEFAULT_SEED,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    fps: float = DEFAULT_FPS,
    seconds: float = DEFAULT_SECONDS,
    num_vehicles: int = DEFAULT_VEHICLES,
) -> Path:
    """Render a clip of ``seconds`` at ``fps`` and write it as MPEG-4 (``mp4v``) to ``path``.

    Written to a hidden file beside ``path`` (same extension, which OpenCV uses to pick the
    container) and renamed into place once every frame is in.
    """
    path = Path(path)
    count = max(1, int(round(seconds * fps)))
    clip = TrafficClip(seed=seed, width=width, height=height, fps=fps, num_vehicles=num_vehicles)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".mp4", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the clip is an ordinary output file
    try:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), float(fps), (width, height))
        if not writer.isOpened():
            raise DatasetError(
                f"OpenCV cannot write {FOURCC!r} video to {path} (is its FFmpeg backend present?)"
            )
        try:
            for rgb in clip.frames(count):
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        if tmp.stat().st_size == 0:
            raise DatasetError(f"OpenCV wrote an empty video for {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "wrote %s: %d frames %dx%d at %g fps, %d vehicles (seed %d)",
        path,
        count,
        width,
        height,
        fps,
        len(clip.vehicles),
        seed,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="video file to write (.mp4)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument(
        "--vehicles", type=int, default=DEFAULT_VEHICLES, help="vehicles on the road, at most"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_traffic_video(
        args.output,
        seed=args.seed,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=args.seconds,
        num_vehicles=args.vehicles,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
