"""GOPRO (Nah et al. 2017) motion-deblurring layouts: readers for a local copy (the official
``GOPRO_Large`` tree or the flattened one NAFNet/Restormer prepare) and a procedural generator
that writes the official tree by GOPRO's own recipe.

The layouts (see DESIGN.md, "Real dataset layouts"):

* official: ``GOPRO_Large/{train,test}/GOPRxxxx_xx_xx/{blur,blur_gamma,sharp}/NNNNNN.png``
  (22 train and 11 test sequences, 1280x720); ``blur`` was averaged in sRGB, ``blur_gamma``
  in linear light, and papers report on ``blur``;
* flattened: ``{train,test}/{input,target}/<name>.png``, pairs matched by file name (the
  sequence is read from a ``GOPRxxxx_xx_xx`` prefix when the name has one).

GOPRO has no separate validation set; its test split is the de-facto one, so ``"val"`` reads
``test``. Generated sequences carry a sidecar ``<sequence>/frames.json`` recording how many
sharp frames each blurred frame averages (``blur_frames``), so evaluation can break figures
down per blur length; real GOPRO ships no such file and its pairs simply lack the key.

The recipe (DESIGN.md, "Restoration"): a scene is filmed at 240 fps; each blurred frame is
the average of N consecutive sharp frames (N in 7..13), and the frame at the middle of the
window is the sharp target. Here the scene is a clip of the traffic renderer
(:class:`ops.detection.video.TrafficClip`: one road scene whose vehicles drive from frame to
frame), rendered with a margin and filmed through a hand-held camera that pans, shakes,
rolls and zooms with sub-pixel affine warps. Vehicles move on their own, so the blur is not
one global kernel, as in the real data. One departure: the sharp target is the middle moment
rendered without sensor noise (see :func:`render_sequence`).

Everything a user can get wrong in a copy (half a pair, a truncated, 16-bit or gray PNG,
frames of different sizes, a sequence without its ``blur``/``sharp`` folders, an empty
split) is collected while loading and raised as one :class:`DatasetError` listing every
offending item, before any training starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from ops.config import GoproGeneratorConfig
from ops.data.writing import (
    STAMP_NAME,
    default_workers,
    keep_generated,
    pool_map,
    problem_error,
    save_bytes,
    staged_generation,
)
from ops.errors import DatasetError
from ops.restoration.pairs import ImagePair, PairSplit, read_rgb8, write_rgb8_png

log = logging.getLogger(__name__)

LARGE_DIR = "GOPRO_Large"
SPLIT_DIRS = {"train": "train", "val": "test"}
BLUR_DIRS = ("blur", "blur_gamma")
SHARP_DIR = "sharp"
FLAT_INPUT, FLAT_TARGET = "input", "target"
SIDECAR = "frames.json"
FPS = 240  # the sharp frames' rate: GOPRO filmed at 240 fps with a GoPro Hero 4
GAMMA = 2.2  # GOPRO's camera response for blur_gamma
GENERATOR_VERSION = "2"  # 2: noise-free sharp targets

_SEQ_RE = re.compile(r"^GOPR\d{4}_\d{2}_\d{2}$")
_FLAT_SEQ_RE = re.compile(r"^(GOPR\d+_\d+_\d+)")
_FLAT_FRAME_RE = re.compile(r"^(?P<seq>.+?)[-_](?P<frame>\d+)(?:_s\d+)?$")
_MAX_LISTED = 8  # frame names listed per problem before "... and N more"


# --------------------------------------------------------------------------- the blur recipe


def average_frames(frames: Sequence[np.ndarray], *, linear: bool, gamma: float = GAMMA) -> np.ndarray:
    """The blurred frame of GOPRO's recipe: the mean of consecutive uint8 RGB sharp frames.

    ``linear=True`` (``blur_gamma``) takes the camera response to be a gamma of ``gamma``:
    pixels go to linear light (``(x / 255) ** gamma``), are averaged there, as photons are on
    a sensor during a long exposure, and go back; ``linear=False`` (``blur``, what papers
    report on) averages the sRGB values directly, which makes blurred highlights darker.
    Sums are float64 and rounded once, so the result depends on the frames only.
    """
    if len(frames) == 0:
        raise ValueError("average_frames needs at least one frame")
    shape = frames[0].shape
    for frame in frames:
        if frame.dtype != np.uint8 or frame.shape != shape:
            raise ValueError(f"frames must all be uint8 of shape {shape}, got {frame.dtype} {frame.shape}")
    acc = np.zeros(shape, np.float64)
    if linear:
        lut = np.power(np.arange(256, dtype=np.float64) / 255.0, gamma)
        for frame in frames:
            acc += lut[frame]
        acc /= len(frames)
        out = 255.0 * np.power(acc, 1.0 / gamma)
    else:
        for frame in frames:
            acc += frame
        out = acc / len(frames)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- loading


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _pngs(folder: Path) -> dict[str, Path]:
    """PNG files of ``folder`` by name (extension matched case-insensitively)."""
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}


def _unmatched(
    where: Path, have: str, lacks: str, names: Iterable[str], problems: list[str], what: str = "frame"
) -> None:
    missing = sorted(names)
    if missing:
        problems.append(
            f"{where}: {len(missing)} {have} {what}(s) without a {lacks} {what}: {_listing(missing)}"
        )


def _read_sidecar(path: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Per-frame records of a generated sequence's ``frames.json`` (real GOPRO has none)."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        entries = doc["frames"]
        if not isinstance(entries, list):
            raise TypeError("'frames' is not a list")
        records = {}
        for entry in entries:
            frames = entry["blur_frames"]
            if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
                raise TypeError(f"blur_frames of {entry.get('name')!r} is {frames!r}, not a positive integer")
            records[str(entry["name"])] = entry
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        problems.append(f"{path}: unreadable sidecar ({exc})")
        return {}
    return records


def _scan_sequence(seq: Path, blur: str, problems: list[str]) -> list[ImagePair]:
    """The pairs of one official sequence folder; problems name the folder and the frames."""
    blur_dir, sharp_dir = seq / blur, seq / SHARP_DIR
    missing = [d.name + "/" for d in (blur_dir, sharp_dir) if not d.is_dir()]
    if missing:
        hint = ""
        if blur == "blur_gamma" and not blur_dir.is_dir() and (seq / "blur").is_dir():
            hint = " (it has blur/: load with blur='blur')"
        problems.append(
            f"{seq}: no {' or '.join(missing)} folder (a GOPRO sequence holds {blur}/ and {SHARP_DIR}/){hint}"
        )
        return []
    blurred, sharp = _pngs(blur_dir), _pngs(sharp_dir)
    if not blurred and not sharp:
        problems.append(f"{seq}: {blur}/ and {SHARP_DIR}/ hold no PNG frames")
        return []
    _unmatched(seq, f"{blur}/", f"{SHARP_DIR}/", blurred.keys() - sharp.keys(), problems)
    _unmatched(seq, f"{SHARP_DIR}/", f"{blur}/", sharp.keys() - blurred.keys(), problems)
    if not _SEQ_RE.match(seq.name):
        log.debug("%s: sequence folder does not follow GOPRO's GOPRxxxx_xx_xx naming", seq)
    records = _read_sidecar(seq / SIDECAR, problems)
    pairs = []
    for name in sorted(blurred.keys() & sharp.keys()):
        info: dict[str, Any] = {
            "sequence": seq.name,
            "frame": Path(name).stem,
            "layout": "official",
            "blur": blur,
        }
        if name in records:
            info["blur_frames"] = int(records[name]["blur_frames"])
        pairs.append(ImagePair(degraded=blurred[name], clean=sharp[name], group=seq.name, info=info))
    return pairs


def _flat_sequence(stem: str) -> str:
    """The sequence a flattened file came from: its ``GOPRxxxx_xx_xx`` prefix, else the name
    before a trailing frame number, else the file itself (then nothing ties frames together)."""
    match = _FLAT_SEQ_RE.match(stem)
    if match:
        return match.group(1)
    match = _FLAT_FRAME_RE.match(stem)
    return match.group("seq") if match else stem


def _scan_flat(split_dir: Path, problems: list[str]) -> list[ImagePair]:
    input_dir, target_dir = split_dir / FLAT_INPUT, split_dir / FLAT_TARGET
    missing = [d.name + "/" for d in (input_dir, target_dir) if not d.is_dir()]
    if missing:
        problems.append(
            f"{split_dir}: no {' or '.join(missing)} folder (the flattened layout has input/ and target/)"
        )
        return []
    inputs, targets = _pngs(input_dir), _pngs(target_dir)
    _unmatched(split_dir, "input/", "target/", inputs.keys() - targets.keys(), problems, "image")
    _unmatched(split_dir, "target/", "input/", targets.keys() - inputs.keys(), problems, "image")
    pairs = []
    for name in sorted(inputs.keys() & targets.keys()):
        stem = Path(name).stem
        sequence = _flat_sequence(stem)
        info = {"sequence": sequence, "frame": stem, "layout": "flattened", "blur": "input"}
        pairs.append(ImagePair(degraded=inputs[name], clean=targets[name], group=sequence, info=info))
    if pairs and all(p.group == Path(p.clean).stem for p in pairs):
        log.warning("%s: file names carry no sequence; every pair is its own group", split_dir)
    return pairs


def _check_pair(pair: ImagePair) -> list[str]:
    """Decode both sides (see :func:`read_rgb8`); sizes must agree."""
    shapes, problems = {}, []
    for side in ("degraded", "clean"):
        try:
            shapes[side] = read_rgb8(getattr(pair, side)).shape
        except DatasetError as exc:
            problems.append(str(exc))
    if len(shapes) == 2 and shapes["degraded"] != shapes["clean"]:
        (bh, bw), (sh, sw) = shapes["degraded"][:2], shapes["clean"][:2]
        problems.append(
            f"{pair.degraded} is {bw}x{bh} but {pair.clean} is {sw}x{sh} (the frames of a pair must match)"
        )
    return problems


def _check_images(pairs: list[ImagePair]) -> list[str]:
    """Decode every image (threads: OpenCV's decoder releases the GIL)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return [p for found in pool.map(_check_pair, pairs) for p in found]


def _looks_like_sequence(folder: Path) -> bool:
    return _SEQ_RE.match(folder.name) is not None or any(
        (folder / sub).is_dir() for sub in (*BLUR_DIRS, SHARP_DIR)
    )


def _find_split(root: Path, folder: str) -> tuple[str, Path] | None:
    """(layout, split directory) under ``root``: ``GOPRO_Large/<folder>`` (root holding
    GOPRO_Large or being it), else ``<folder>/{input,target}`` (flattened).

    A copy that mixes both conventions (official sequences beside ``input``/``target``
    folders, or ``GOPRO_Large/`` beside a flattened tree) is refused: which pairs a user
    meant cannot be guessed, and reading one half silently would train on part of the data."""
    found: list[tuple[str, Path]] = []
    for base in (root / LARGE_DIR, root):
        split_dir = base / folder
        if not split_dir.is_dir():
            continue
        flat = [d.name + "/" for d in (split_dir / FLAT_INPUT, split_dir / FLAT_TARGET) if d.is_dir()]
        sequences = [
            d.name
            for d in split_dir.iterdir()
            if d.is_dir() and d.name not in (FLAT_INPUT, FLAT_TARGET) and _looks_like_sequence(d)
        ]
        if flat and sequences:
            raise DatasetError(
                f"{split_dir} mixes GOPRO's two layouts: {' and '.join(flat)} (flattened) beside "
                f"sequence folders ({_listing(sorted(sequences))}); keep one layout per copy"
            )
        found.append(("flattened" if flat else "official", split_dir))
    if len(found) == 2 and found[0][0] != found[1][0]:
        raise DatasetError(
            f"{root} holds both {found[0][1]} ({found[0][0]} layout) and {found[1][1]} "
            f"({found[1][0]} layout); keep one layout per copy"
        )
    return found[0] if found else None


def load_gopro(
    root: Path,
    split: Literal["train", "val"],
    *,
    blur: Literal["blur", "blur_gamma"] = "blur",
    check_images: bool = True,
) -> PairSplit:
    """Load a split of a local GOPRO copy (or a generated one) after validating all of it.

    ``root`` holds ``GOPRO_Large/`` (or is it), or is the flattened ``{train,test}/{input,
    target}`` tree. ``"val"`` reads ``test`` (GOPRO's test set is everyone's validation set).
    ``blur`` picks the official layout's blurred folder (the flattened layout has one input).
    Each pair's ``group`` is its sequence; ``info`` holds ``sequence``, ``frame`` and, for
    generated data, ``blur_frames``. Every problem found is listed in one
    :class:`DatasetError`; ``check_images=False`` matches files without decoding them.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if blur not in BLUR_DIRS:
        raise ValueError(f"blur must be one of {BLUR_DIRS}, got {blur!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"GOPRO dataset root {root} does not exist or is not a directory")
    folder = SPLIT_DIRS[split]
    found = _find_split(root, folder)
    if found is None:
        raise DatasetError(
            f"no GOPRO {folder} split under {root}: expected {root / LARGE_DIR / folder}/<sequence>/"
            f"{{{blur},{SHARP_DIR}}}/ or {root / folder}/{{{FLAT_INPUT},{FLAT_TARGET}}}/"
        )
    layout, split_dir = found
    problems: list[str] = []
    if layout == "official":
        sequences = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        pairs = [pair for seq in sequences for pair in _scan_sequence(seq, blur, problems)]
    else:
        pairs = _scan_flat(split_dir, problems)
    if check_images and pairs:
        problems.extend(_check_images(pairs))
    if problems:
        raise problem_error(f"GOPRO {folder} data ({layout} layout)", split_dir, problems)
    if not pairs:
        raise DatasetError(f"GOPRO {folder} split {split_dir} is empty: no blurred/sharp pairs")
    log.info(
        "%s: %d GOPRO pairs in %d sequence(s) (%s layout, %s)",
        split_dir,
        len(pairs),
        len({p.group for p in pairs}),
        layout,
        blur if layout == "official" else "input",
    )
    return PairSplit(name=split, root=root, pairs=pairs)


# --------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class PlannedSequence:
    """One generated sequence: its split, folder name and the blur length of each frame."""

    split: str  # "train" or "test" (the folder)
    index: int  # position within the split
    name: str
    blur_frames: tuple[int, ...]


_SPLIT_CODES = {"train": 0, "test": 1}
_FIRST_RECORDING = {"train": 1, "test": 5001}  # recording numbers of the GOPRxxxx names


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, *path]))


_PLAN_STREAM, _CAMERA_STREAM, _SCENE_STREAM = 1, 2, 3


def plan_sequences(cfg: GoproGeneratorConfig) -> list[PlannedSequence]:
    """Every sequence the generator writes, train then test.

    A sequence depends only on ``(cfg.seed, split, index)``: train and test draw from
    different streams (different scenes, never shared), and recording numbers are distinct
    (train from GOPR0001, test from GOPR5001), so no sequence name is in both splits.
    """
    jobs = []
    for split, count in (("train", cfg.num_train_sequences), ("test", cfg.num_test_sequences)):
        if count > 4999:
            raise DatasetError(f"{count} {split} sequences do not fit GOPRO's 4-digit recording numbers")
        for index in range(count):
            rng = _rng(cfg.seed, _PLAN_STREAM, _SPLIT_CODES[split], index)
            name = f"GOPR{_FIRST_RECORDING[split] + index:04d}_{int(rng.integers(0, 20)):02d}_00"
            frames = rng.integers(cfg.blur_frames_min, cfg.blur_frames_max + 1, cfg.frames_per_sequence)
            jobs.append(PlannedSequence(split, index, name, tuple(int(n) for n in frames)))
    return jobs


_PAN_PERIOD = (60.0, 120.0)  # sharp frames per turn of the pan ellipse
_ZOOM_PERIOD = (60.0, 120.0)  # sharp frames per zoom in-and-out


class CameraPath:
    """A hand-held camera over the sharp frames of a sequence: pan, shake, roll and zoom.

    * pan: the camera sways along an ellipse (random size ratio and tilt, one turn per
      60-120 sharp frames), so its speed stays between half and all of ``U(0.6, 1) *
      max_pan_px`` pixels per frame while the path stays bounded (a straight pan would need
      a canvas as long as the sequence), and its direction turns within one exposure;
    * shake: jitter of ``shake_px`` pixels, three sinusoids of 8-30 sharp frames (8-30 Hz
      tremor at 240 fps), which bends and kinks the blur paths, and a roll that moves the
      corners about half as much;
    * zoom (walking forward and back): the log-scale changes by at most ``zoom_per_frame``
      per frame, with a period of 60-120 frames.

    The speed of the pan sets the blur length (``blur_frames`` x speed), so longer windows
    give longer, stronger blur, as in GOPRO. :meth:`matrix` is the affine map from output
    pixels to the source frame at time ``t`` (in sharp frames, fractions allowed).
    """

    def __init__(self, rng: np.random.Generator, cfg: GoproGeneratorConfig) -> None:
        self.out_size = (cfg.image_width, cfg.image_height)

        def waves(count: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            omega = 2 * np.pi / rng.uniform(lo, hi, count)
            weights = rng.dirichlet(np.ones(count))
            return omega, weights, rng.uniform(0, 2 * np.pi, count)

        speed = cfg.max_pan_px * float(rng.uniform(0.6, 1.0))
        self.omega = 2 * np.pi / float(rng.uniform(*_PAN_PERIOD)) * float(rng.choice([-1.0, 1.0]))
        self.phase = float(rng.uniform(0, 2 * np.pi))
        tilt = float(rng.uniform(0, np.pi))
        ratio = float(rng.uniform(0.5, 1.0))
        rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
        # velocity = axes @ (cos(w t + p), sin(w t + p)); position (its integral) = axes @
        # (sin, -cos) / w, an ellipse around the source's centre.
        self.axes = rot @ np.diag([speed, speed * ratio])
        self.shake = [waves(3, 8, 30) for _ in range(2)]
        self.shake_px = cfg.shake_px
        self.roll = waves(2, 20, 60)
        self.roll_rad = 0.5 * cfg.shake_px / math.hypot((cfg.image_width - 1) / 2, (cfg.image_height - 1) / 2)
        self.zoom = waves(1, *_ZOOM_PERIOD)
        self.zoom_rate = cfg.zoom_per_frame * float(rng.uniform(0.3, 1.0))

    @staticmethod
    def _sin_sum(wave: tuple[np.ndarray, np.ndarray, np.ndarray], t: float) -> float:
        omega, weights, phase = wave
        return float((weights * np.sin(omega * t + phase)).sum())

    def pose(self, t: float) -> tuple[np.ndarray, float, float]:
        """(offset of the view from the source's centre in pixels, scale, roll in radians)."""
        angle = self.omega * t + self.phase
        offset = self.axes @ np.array([math.sin(angle), -math.cos(angle)]) / self.omega
        offset += [self.shake_px * self._sin_sum(w, t) for w in self.shake]
        roll = self.roll_rad * self._sin_sum(self.roll, t)
        # d(log scale)/dt = zoom_rate * cos(w t + p): log scale = zoom_rate * sin(w t + p) / w
        omega = float(self.zoom[0][0])
        scale = math.exp(self.zoom_rate / omega * math.sin(omega * t + float(self.zoom[2][0])))
        return offset, scale, roll

    def matrix(self, t: float, source_size: tuple[int, int]) -> np.ndarray:
        """2x3 map from output pixel (x, y) to source pixel, for ``cv2.WARP_INVERSE_MAP``."""
        offset, scale, roll = self.pose(t)
        c, s = math.cos(roll) / scale, math.sin(roll) / scale
        a = np.array([[c, -s], [s, c]])
        out_c = (np.array(self.out_size, np.float64) - 1) / 2
        src_c = (np.array(source_size, np.float64) - 1) / 2
        return np.hstack([a, (src_c + offset - a @ out_c)[:, None]])


def source_margins(cfg: GoproGeneratorConfig) -> tuple[int, int]:
    """Pixels the rendered scene extends beyond the output on each side (x, y): enough for
    the farthest any :class:`CameraPath` of ``cfg`` can reach (pan ellipse, shake, zoom out,
    roll), plus the interpolation kernel.

    The bound depends on the configuration only, not on one sequence's path: the traffic
    renderer scales its scene to the canvas it draws, so a canvas sized per sequence would
    tie the size of things in view to how fast the camera happens to move.
    """
    hw, hh = (cfg.image_width - 1) / 2, (cfg.image_height - 1) / 2
    pan = cfg.max_pan_px * _PAN_PERIOD[1] / (2 * math.pi)
    zoom = math.exp(cfg.zoom_per_frame * _ZOOM_PERIOD[1] / (2 * math.pi))
    roll = 0.5 * cfg.shake_px / math.hypot(hw, hh)
    reach_x = pan + cfg.shake_px + zoom * (hw * math.cos(roll) + hh * math.sin(roll)) - hw
    reach_y = pan + cfg.shake_px + zoom * (hh * math.cos(roll) + hw * math.sin(roll)) - hh
    return int(math.ceil(reach_x)) + 3, int(math.ceil(reach_y)) + 3


@dataclass(frozen=True)
class RenderedFrame:
    """One output frame of a sequence: the two blurred versions, the sharp target, and how
    they were made (for the sidecar)."""

    blur: np.ndarray
    blur_gamma: np.ndarray
    sharp: np.ndarray
    blur_frames: int
    first_frame: int  # index of the first averaged sharp frame in the 240 fps stream
    sharp_time: float  # time of the sharp target in sharp frames (the window's middle)


def render_sequence(cfg: GoproGeneratorConfig, seq: PlannedSequence) -> Iterable[RenderedFrame]:
    """The frames of ``seq``, in order; depends only on ``cfg`` and ``seq``.

    The 240 fps stream: frame ``t`` is the traffic clip at time ``t`` (vehicles moving) warped
    by the camera's pose at ``t`` (bicubic, sub-pixel). Windows of ``seq.blur_frames`` frames
    follow each other without gaps; the sharp target is rendered at the window's middle time
    (for even lengths between two frames, so the target is not half a frame off the blur's
    centre).

    The sharp target is that moment *without sensor noise*; the averaged frames carry it.
    GOPRO's own targets are single 240 fps frames with their noise, which no deblurrer can
    recover from the average (it cancels there): on these scenes that noise alone caps a
    perfect deblurrer near 31 dB (measured: a 0.8-pixel Gaussian blur of a noisy target
    already scores 31 dB against it), so the demo's figures would measure the noise floor
    rather than deblurring. The blurred frames keep what averaging leaves of the noise.
    """
    from ops.detection.video import TrafficClip  # the renderer is only needed to generate

    code = _SPLIT_CODES[seq.split]
    camera = CameraPath(_rng(cfg.seed, _CAMERA_STREAM, code, seq.index), cfg)
    sharp_times = []
    start = 0
    for n in seq.blur_frames:
        sharp_times.append(start + (n - 1) / 2)
        start += n
    mx, my = source_margins(cfg)
    src_size = (cfg.image_width + 2 * mx, cfg.image_height + 2 * my)
    scene_seed = int(_rng(cfg.seed, _SCENE_STREAM, code, seq.index).integers(0, 2**63))
    clip = TrafficClip(
        seed=scene_seed,
        width=src_size[0],
        height=src_size[1],
        fps=FPS,
        num_vehicles=max(1, cfg.moving_objects),
    )
    clip.vehicles = clip.vehicles[: cfg.moving_objects]

    def shot(t: float, sensor_noise: bool = True) -> np.ndarray:
        # fractional times move vehicles part-way
        return _film(clip.frame(t, sensor_noise), camera, t)  # type: ignore[arg-type]

    start = 0
    for n, t_mid in zip(seq.blur_frames, sharp_times, strict=True):
        frames = [shot(float(t)) for t in range(start, start + n)]
        sharp = shot(t_mid, sensor_noise=False)
        yield RenderedFrame(
            blur=average_frames(frames, linear=False),
            blur_gamma=average_frames(frames, linear=True),
            sharp=sharp,
            blur_frames=n,
            first_frame=start,
            sharp_time=t_mid,
        )
        start += n


def _film(source: np.ndarray, camera: CameraPath, t: float) -> np.ndarray:
    """What the camera sees of ``source`` at time ``t`` (bicubic, sub-pixel)."""
    size = (source.shape[1], source.shape[0])
    return cv2.warpAffine(
        source,
        camera.matrix(t, size),
        camera.out_size,
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT101,
    )


def film_still(
    image: np.ndarray, cfg: GoproGeneratorConfig, seed: int, blur_frames: int, *, linear: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) of a still photograph filmed by the generator's hand-held camera: the
    recipe of :func:`render_sequence` with the photograph as the scene (no moving objects).

    ``image`` (uint8 RGB) must cover the output (``cfg.image_width`` x ``cfg.image_height``)
    plus :func:`source_margins` on each side. Used to ask whether a deblurrer trained on
    generated scenes also deblurs real photographs."""
    mx, my = source_margins(cfg)
    need = (cfg.image_height + 2 * my, cfg.image_width + 2 * mx)
    if image.shape[0] < need[0] or image.shape[1] < need[1]:
        raise ValueError(
            f"a {image.shape[1]}x{image.shape[0]} image cannot be filmed at {cfg.image_width}x"
            f"{cfg.image_height}: it needs {need[1]}x{need[0]} (the camera's reach)"
        )
    y, x = (image.shape[0] - need[0]) // 2, (image.shape[1] - need[1]) // 2
    source = np.ascontiguousarray(image[y : y + need[0], x : x + need[1], :3])
    camera = CameraPath(_rng(seed, _CAMERA_STREAM), cfg)
    frames = [_film(source, camera, float(t)) for t in range(blur_frames)]
    t_mid = (blur_frames - 1) / 2
    sharp = frames[(blur_frames - 1) // 2] if blur_frames % 2 else _film(source, camera, t_mid)
    return average_frames(frames, linear=linear), sharp


def frame_name(number: int) -> str:
    """GOPRO's file name of frame ``number`` (1-based): ``000001.png``."""
    return f"{number:06d}.png"


def _write_sequence(cfg: GoproGeneratorConfig, seq: PlannedSequence, large_dir: Path) -> int:
    """Render and write one sequence folder with its sidecar; return the frames written."""
    folder = large_dir / seq.split / seq.name
    for sub in (*BLUR_DIRS, SHARP_DIR):
        (folder / sub).mkdir(parents=True)
    records = []
    for number, frame in enumerate(render_sequence(cfg, seq), start=1):
        name = frame_name(number)
        save_bytes(folder / "blur" / name, write_rgb8_png(frame.blur))
        save_bytes(folder / "blur_gamma" / name, write_rgb8_png(frame.blur_gamma))
        save_bytes(folder / SHARP_DIR / name, write_rgb8_png(frame.sharp))
        records.append(
            {
                "name": name,
                "blur_frames": frame.blur_frames,
                "first_frame": frame.first_frame,
                "sharp_time": frame.sharp_time,
            }
        )
    sidecar = {
        "description": "how each blurred frame was made (visionforge procedural GOPRO)",
        "sequence": seq.name,
        "split": seq.split,
        "fps": FPS,
        "gamma": GAMMA,
        "frames": records,
    }
    save_bytes(folder / SIDECAR, (json.dumps(sidecar, indent=1) + "\n").encode())
    return len(records)


def generator_stamp(cfg: GoproGeneratorConfig) -> dict[str, Any]:
    """What a generated root records about how it was made (regenerate when it differs)."""
    return {
        "generator": "ops.restoration.gopro",
        "version": GENERATOR_VERSION,
        "config": cfg.model_dump(mode="json"),
    }


# Below this many sharp-frame pixels to render, spawning workers (about a second each to
# import numpy and OpenCV) costs more than it saves.
_POOL_MIN_PIXELS = 20_000_000


def _auto_workers(cfg: GoproGeneratorConfig) -> int:
    sequences = cfg.num_train_sequences + cfg.num_test_sequences
    mean_blur = (cfg.blur_frames_min + cfg.blur_frames_max) / 2
    pixels = sequences * cfg.frames_per_sequence * mean_blur * cfg.image_width * cfg.image_height
    return 1 if pixels < _POOL_MIN_PIXELS else min(default_workers(), sequences)


def _is_complete(root: Path) -> bool:
    return all((root / LARGE_DIR / d).is_dir() for d in SPLIT_DIRS.values())


def generate_gopro_dataset(
    root: Path, cfg: GoproGeneratorConfig, workers: int | None = None, *, progress: bool = False
) -> Path:
    """Write ``cfg``'s procedural GOPRO stand-in to ``root``; return ``root``.

    Layout: ``root/GOPRO_Large/{train,test}/<GOPRxxxx_xx_xx>/{blur,blur_gamma,sharp}/NNNNNN.png``
    and ``<sequence>/frames.json`` (``blur_frames`` per frame), train and test sequences
    filmed in different scenes. Read it back with :func:`load_gopro`.

    Every file depends only on the configuration, so the same seed writes byte-identical
    files whatever ``workers`` is (default: one process for small datasets, else
    :func:`default_workers` spawned processes, one sequence each at a time). Everything is
    written into a hidden directory beside ``root`` and renamed onto it at the end; a root
    already holding this configuration (``.generator.json``) is kept as is. A failure, a full
    disk included, removes the temporary directory and leaves any previous ``root``
    untouched; a root that the generator did not write is never replaced.
    """
    root = Path(root)
    stamp = generator_stamp(cfg)
    if keep_generated(root, stamp, _is_complete, "GOPRO"):
        log.info("%s already holds this GOPRO generator configuration; not regenerating", root)
        return root
    jobs = plan_sequences(cfg)
    workers = _auto_workers(cfg) if workers is None else max(1, workers)
    log.info(
        "generating GOPRO stand-in: %d train + %d test sequences x %d frames (%dx%d, %d-%d sharp frames "
        "per blurred one, seed %d, %d worker(s)) into %s",
        cfg.num_train_sequences,
        cfg.num_test_sequences,
        cfg.frames_per_sequence,
        cfg.image_width,
        cfg.image_height,
        cfg.blur_frames_min,
        cfg.blur_frames_max,
        cfg.seed,
        workers,
        root,
    )
    with staged_generation(root, workers) as (tmp, pool):
        large_dir = tmp / LARGE_DIR
        for folder in SPLIT_DIRS.values():
            (large_dir / folder).mkdir(parents=True)
        written = 0
        total = len(jobs) * cfg.frames_per_sequence
        with tqdm(total=total, disable=not progress, desc="GOPRO frames", unit="frame") as bar:
            for count in pool_map(pool, _write_sequence, [cfg] * len(jobs), jobs, [large_dir] * len(jobs)):
                written += count
                bar.update(count)
        save_bytes(tmp / STAMP_NAME, (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode())
    log.info("wrote %s: %d sequences, %d blurred/sharp pairs", root, len(jobs), written)
    return root
