"""SIDD (Smartphone Image Denoising Dataset) sRGB layouts: folder names, readers for a local
copy (SIDD-Small, SIDD-Medium, the validation blocks), and a procedural generator that
writes the same layouts.

The layouts (see DESIGN.md, "Real dataset layouts"):

* SIDD-Small sRGB: ``SIDD_Small_sRGB_Only/Data/<folder>/{GT,NOISY}_SRGB_010.PNG`` and
  ``Scene_Instances.txt``;
* SIDD-Medium sRGB: ``SIDD_Medium_Srgb/Data/<folder>/<instance>_{GT,NOISY}_SRGB_{010,011}.PNG``
  (two pairs per instance);
* validation blocks: ``ValidationNoisyBlocksSrgb.mat`` / ``ValidationGtBlocksSrgb.mat``, uint8
  arrays (images, blocks, H, W, 3) under the keys of the same names (real SIDD: 40x32x256x256x3),
  in MATLAB v5 (scipy) or v7.3 (HDF5, dimensions reversed) files.

Folder names are ``<instance>_<scene>_<phone>_<ISO>_<shutter>_<illuminantK>_<L|N|H>``. Real SIDD
ships no ISO for the validation blocks; the generator writes a sidecar
``ValidationBlocksSrgb.json`` (``{"images": [{"instance": <folder>, "blocks_yx": [[y, x], ...]}]}``)
naming each block image's instance folder, so per-ISO figures are possible on generated data.

Everything a user can get wrong in a copy (a missing or truncated image, a 16-bit or gray
PNG, a folder outside the naming pattern, half a pair, a .mat with the wrong keys, dtype or
shape) is collected while loading and raised as one :class:`DatasetError` listing every
offending item, before any training starts.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from ops.config import SiddGeneratorConfig
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
from ops.restoration.camera import add_camera_noise
from ops.restoration.pairs import ImagePair, PairSplit, read_rgb8, write_rgb8_png
from ops.restoration.scenes import render_instance

log = logging.getLogger(__name__)

PHONES = ("GP", "IP", "S6", "N6", "G4")
BRIGHTNESS = ("L", "N", "H")
SMALL_DIR = "SIDD_Small_sRGB_Only"
MEDIUM_DIR = "SIDD_Medium_Srgb"
SCENE_LIST = "Scene_Instances.txt"
VAL_NOISY_FILE, VAL_NOISY_KEY = "ValidationNoisyBlocksSrgb.mat", "ValidationNoisyBlocksSrgb"
VAL_GT_FILE, VAL_GT_KEY = "ValidationGtBlocksSrgb.mat", "ValidationGtBlocksSrgb"
VAL_SIDECAR = "ValidationBlocksSrgb.json"
SMALL_FILES = ("GT_SRGB_010.PNG", "NOISY_SRGB_010.PNG")
MEDIUM_FRAMES = ("010", "011")
GENERATOR_VERSION = "1"

_NAME_RE = re.compile(
    r"^(?P<instance>\d{4})_(?P<scene>\d{3})_(?P<phone>GP|IP|S6|N6|G4)_(?P<iso>\d{5})_"
    r"(?P<shutter>\d{5})_(?P<illuminant>\d{4})_(?P<brightness>[LNH])$"
)
_ILLUMINANTS = (3200, 4400, 5500)
_SHUTTERS = (8, 10, 13, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 160, 200, 250, 320, 400, 500, 640, 800)
_SHUTTERS += (1000, 1250, 1600, 2000, 2500, 3200, 4000)
_MAT_V5_MAGIC = b"MATLAB 5.0 MAT-file"
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: visionforge, written by ops.restoration.sidd"


# --------------------------------------------------------------------------- folder names


@dataclass(frozen=True)
class SiddInstance:
    """What a SIDD scene-instance folder name says about its captures."""

    instance: int
    scene: int
    phone: str
    iso: int
    shutter: int
    illuminant: int
    brightness: str

    def __post_init__(self) -> None:
        if self.phone not in PHONES or self.brightness not in BRIGHTNESS:
            raise ValueError(f"phone must be one of {PHONES} and brightness one of {BRIGHTNESS}: {self}")
        limits = {"instance": 9999, "scene": 999, "iso": 99999, "shutter": 99999, "illuminant": 9999}
        for name, top in limits.items():
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(f"{name} {getattr(self, name)} does not fit SIDD's folder name pattern")

    @property
    def folder_name(self) -> str:
        """The folder name, zero-padded as SIDD writes it (``0001_001_S6_00100_00060_3200_L``)."""
        return (
            f"{self.instance:04d}_{self.scene:03d}_{self.phone}_{self.iso:05d}_{self.shutter:05d}_"
            f"{self.illuminant:04d}_{self.brightness}"
        )

    def info(self) -> dict[str, Any]:
        """Plain values for reports and per-ISO / per-phone figures."""
        return {
            "instance": self.instance,
            "scene": self.scene,
            "phone": self.phone,
            "iso": self.iso,
            "shutter": self.shutter,
            "illuminant": self.illuminant,
            "brightness": self.brightness,
        }


def parse_instance_name(name: str) -> SiddInstance:
    """Parse a SIDD folder name; :class:`DatasetError` naming the folder if it does not match."""
    match = _NAME_RE.match(name)
    if match is None:
        raise DatasetError(
            f"folder {name!r} does not follow SIDD's naming pattern "
            "<instance 4 digits>_<scene 3 digits>_<phone GP|IP|S6|N6|G4>_<ISO 5 digits>_"
            "<shutter 5 digits>_<illuminant 4 digits>_<L|N|H>"
        )
    g = match.groupdict()
    return SiddInstance(
        instance=int(g["instance"]),
        scene=int(g["scene"]),
        phone=g["phone"],
        iso=int(g["iso"]),
        shutter=int(g["shutter"]),
        illuminant=int(g["illuminant"]),
        brightness=g["brightness"],
    )


# --------------------------------------------------------------------------- .mat files


def _is_hdf5(path: Path) -> bool:
    import h5py  # imported here: only v7.3 files need it

    return bool(h5py.is_hdf5(str(path)))


def read_mat_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of a MATLAB v5 or v7.3 file, in MATLAB's axis order.

    v7.3 files are HDF5 and store a MATLAB array with its dimensions reversed (MATLAB is
    column-major, HDF5 row-major); the array is transposed back, so both versions give the
    same (images, blocks, H, W, 3) array. Any problem raises :class:`DatasetError` naming
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    try:
        with open(path, "rb") as f:
            header = f.read(128)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from exc
    if _is_hdf5(path):
        return _read_mat73(path, key)
    import scipy.io  # only the .mat readers need it; generator workers start faster without

    if not header.startswith(_MAT_V5_MAGIC) or len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
        raise DatasetError(f"{path}: not a MATLAB file (neither a v5 header nor HDF5 / v7.3)")
    try:
        variables = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(str(path))}
    except Exception as exc:  # scipy raises a variety of types on corrupt files
        raise DatasetError(f"{path}: unreadable MATLAB v5 file ({exc})") from exc
    if key not in variables:
        found = ", ".join(sorted(variables)) or "none"
        raise DatasetError(f"{path}: no variable {key!r} (variables found: {found})")
    try:
        array = scipy.io.loadmat(str(path), variable_names=[key], squeeze_me=False)[key]
    except Exception as exc:
        raise DatasetError(f"{path}: variable {key!r} cannot be read ({exc})") from exc
    return np.ascontiguousarray(array)


def _read_mat73(path: Path, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            if key not in f:
                found = ", ".join(sorted(k for k in f.keys() if not k.startswith("#"))) or "none"
                raise DatasetError(f"{path}: no variable {key!r} (variables found: {found})")
            node = f[key]
            if not isinstance(node, h5py.Dataset):
                raise DatasetError(f"{path}: {key!r} is a MATLAB struct or cell, not a numeric array")
            array = node[()]
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable MATLAB v7.3 (HDF5) file ({exc})") from exc
    return np.ascontiguousarray(np.asarray(array).T)


def check_block_array(path: Path, array: np.ndarray) -> list[str]:
    """Problems of a validation-block array: it must be uint8 (images, blocks, H, W, 3)."""
    problems = []
    if array.dtype != np.uint8:
        problems.append(f"{path}: dtype {array.dtype}, expected uint8 (8-bit sRGB)")
    if array.ndim != 5 or array.shape[-1] != 3:
        problems.append(f"{path}: shape {array.shape}, expected (images, blocks, height, width, 3)")
    return problems


def write_mat_v5(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """MATLAB v5 bytes for ``arrays`` with a fixed header, so the same arrays give the same
    bytes (scipy writes the creation time into the header). ``path`` only names errors."""
    import scipy.io

    buf = io.BytesIO()
    try:
        scipy.io.savemat(buf, arrays, do_compression=False, format="5")
    except Exception as exc:
        raise DatasetError(f"could not encode {path} as a MATLAB file ({exc})") from exc
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)


# --------------------------------------------------------------------------- loading


def _layout_dirs(root: Path) -> list[tuple[str, Path]]:
    """(layout, Data directory) of each sRGB layout under ``root`` (or ``root`` itself)."""
    found = []
    for layout, name in (("medium", MEDIUM_DIR), ("small", SMALL_DIR)):
        for base in (root / name, root if root.name == name else None):
            if base is not None and (base / "Data").is_dir():
                found.append((layout, base / "Data"))
                break
    return found


def _files_by_upper(folder: Path) -> dict[str, Path]:
    """File names are matched case-insensitively: copies extracted on other systems vary."""
    return {p.name.upper(): p for p in folder.iterdir() if p.is_file()}


def _scan_instance(layout: str, folder: Path, problems: list[str]) -> list[ImagePair]:
    try:
        inst = parse_instance_name(folder.name)
    except DatasetError as exc:
        problems.append(f"{folder}: {exc}")
        return []
    files = _files_by_upper(folder)
    if layout == "small":
        frames = [("010", files.get(SMALL_FILES[0]), files.get(SMALL_FILES[1]), SMALL_FILES)]
    else:
        prefix = folder.name[:4]
        frames = []
        for frame in MEDIUM_FRAMES:
            names = (f"{prefix}_GT_SRGB_{frame}.PNG", f"{prefix}_NOISY_SRGB_{frame}.PNG")
            frames.append((frame, files.get(names[0]), files.get(names[1]), names))
    pairs = []
    for frame, gt, noisy, names in frames:
        if gt is None and noisy is None:
            continue
        if gt is None or noisy is None:
            have, missing = (names[1], names[0]) if gt is None else (names[0], names[1])
            problems.append(f"{folder}: has {have} but not {missing} (one side of a pair is missing)")
            continue
        info = {**inst.info(), "layout": layout, "frame": frame}
        pairs.append(ImagePair(degraded=noisy, clean=gt, group=folder.name, info=info))
    if not pairs and not any(gt is not None or noisy is not None for _, gt, noisy, _ in frames):
        expected = " + ".join(frames[0][3])
        problems.append(f"{folder}: no image pair (expected {expected})")
    return pairs


def _check_pair(pair: ImagePair) -> list[str]:
    """Decode both sides; problems name the file (see :func:`read_rgb8`)."""
    shapes, problems = {}, []
    for side in ("clean", "degraded"):
        try:
            shapes[side] = read_rgb8(getattr(pair, side)).shape
        except DatasetError as exc:
            problems.append(str(exc))
    if len(shapes) == 2 and shapes["clean"] != shapes["degraded"]:
        problems.append(
            f"{pair.degraded.parent}: GT is {shapes['clean'][1]}x{shapes['clean'][0]} but NOISY is "
            f"{shapes['degraded'][1]}x{shapes['degraded'][0]} ({pair.degraded.name})"
        )
    return problems


def _check_images(pairs: list[ImagePair]) -> list[str]:
    """Decode every image (threads: OpenCV's decoder releases the GIL)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return [p for found in pool.map(_check_pair, pairs) for p in found]


def _load_train(root: Path, check_images: bool) -> PairSplit:
    layouts = _layout_dirs(root)
    if not layouts:
        raise DatasetError(
            f"no SIDD sRGB training layout under {root}: expected {root / SMALL_DIR / 'Data'} "
            f"or {root / MEDIUM_DIR / 'Data'}"
        )
    problems: list[str] = []
    pairs: list[ImagePair] = []
    in_medium: set[str] = set()
    for layout, data_dir in layouts:  # Medium first: Small is a subset of Medium's captures
        folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        listing = data_dir.parent / SCENE_LIST
        if listing.is_file():
            names = {p.name for p in folders}
            for listed in listing.read_text().split():
                if listed not in names:
                    problems.append(f"{listing}: lists {listed} but {data_dir / listed} does not exist")
        for folder in folders:
            if layout == "small" and folder.name in in_medium:
                continue
            found = _scan_instance(layout, folder, problems)
            if layout == "medium" and found:
                in_medium.add(folder.name)
            pairs.extend(found)
    if len(layouts) == 2 and in_medium:
        log.info("%s: both SIDD-Small and SIDD-Medium found; Small folders also in Medium are skipped", root)
    if check_images and pairs:
        problems.extend(_check_images(pairs))
    if problems:
        raise problem_error("SIDD training data", root, problems)
    if not pairs:
        raise DatasetError(f"no SIDD image pairs under {', '.join(str(d) for _, d in layouts)}")
    return PairSplit(name="train", root=root, pairs=pairs)


def _read_sidecar(path: Path, num_images: int, problems: list[str]) -> list[dict[str, Any]] | None:
    """Per-image instance info from the generator's sidecar (real SIDD has none)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        entries = doc["images"]
        if not isinstance(entries, list):
            raise TypeError("'images' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{path}: unreadable sidecar ({exc})")
        return None
    if len(entries) != num_images:
        problems.append(f"{path}: lists {len(entries)} images but the .mat files hold {num_images}")
        return None
    infos = []
    for i, entry in enumerate(entries):
        name = entry.get("instance") if isinstance(entry, dict) else entry
        try:
            infos.append(parse_instance_name(str(name)).info() | {"group": str(name)})
        except DatasetError as exc:
            problems.append(f"{path}: image {i}: {exc}")
    return infos if len(infos) == num_images else None


def _load_val(root: Path) -> PairSplit:
    noisy_path, gt_path = root / VAL_NOISY_FILE, root / VAL_GT_FILE
    problems: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for path, key in ((noisy_path, VAL_NOISY_KEY), (gt_path, VAL_GT_KEY)):
        try:
            array = read_mat_array(path, key)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        found = check_block_array(path, array)
        problems.extend(found)
        if not found:
            arrays[key] = array
    noisy, gt = arrays.get(VAL_NOISY_KEY), arrays.get(VAL_GT_KEY)
    if noisy is not None and gt is not None and noisy.shape != gt.shape:
        problems.append(f"{noisy_path} holds {noisy.shape} but {gt_path} holds {gt.shape}: shapes must match")
    infos = None
    if noisy is not None:
        infos = _read_sidecar(root / VAL_SIDECAR, noisy.shape[0], problems)
    if problems:
        raise problem_error("SIDD validation data", root, problems)
    assert noisy is not None and gt is not None
    n_img, n_blk, h, w, _ = noisy.shape
    block_info = []
    for i in range(n_img):
        extra = infos[i] if infos else {}
        for j in range(n_blk):
            block_info.append({"image": i, "block": j, **extra})
    return PairSplit(
        name="val",
        root=root,
        blocks_degraded=noisy.reshape(n_img * n_blk, h, w, 3),
        blocks_clean=gt.reshape(n_img * n_blk, h, w, 3),
        block_info=block_info,
    )


def load_sidd(root: Path, split: Literal["train", "val"], *, check_images: bool = True) -> PairSplit:
    """Load a split of a local SIDD sRGB copy (or a generated one) after validating all of it.

    ``"train"``: the SIDD-Small and/or SIDD-Medium layout under ``root`` (when both are
    there, folders present in Medium are taken from Medium only). ``"val"``: the validation
    block pair at ``root``, with per-image ISO and phone when the sidecar is present.
    Every problem found is listed in one :class:`DatasetError`. ``check_images=False``
    lists the training pairs without decoding them (fast; for calibration sampling); the
    validation blocks are always read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"SIDD dataset root {root} does not exist or is not a directory")
    if split == "train":
        return _load_train(root, check_images)
    if split == "val":
        return _load_val(root)
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


# --------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class PlannedCapture:
    """One generated capture: its folder identity and where its pixels come from."""

    split: str
    index: int  # position within the split
    instance: SiddInstance


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, *path]))


_SCENE_STREAM, _INSTANCE_STREAM, _META_STREAM = 1, 2, 3


def _shutter(iso: int, brightness: str, rng: np.random.Generator) -> int:
    """A shutter (1/s) a phone would pick: exposure ~ 1 / (light x ISO)."""
    light = {"L": 1.0, "N": 4.0, "H": 16.0}[brightness]
    target = iso * light / 8.0 * float(rng.uniform(0.8, 1.25))
    return min(_SHUTTERS, key=lambda s: abs(math.log(s) - math.log(max(target, 1.0))))


def _brightness(iso: int, isos: list[int], rng: np.random.Generator) -> str:
    """High ISOs are mostly low light (phones raise the gain when light is short)."""
    order = sorted(set(isos))
    rank = order.index(iso) / max(1, len(order) - 1)
    p_low, p_high = 0.15 + 0.5 * rank, 0.45 - 0.35 * rank
    return BRIGHTNESS[int(rng.choice(3, p=[p_low, 1 - p_low - p_high, p_high]))]


def _balanced_isos(isos: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` ISOs, each level ``n // k`` times; the ``n % k`` left over go to the levels in the
    middle of the range (whose noise is nearest the average), so the mean noise of a small
    validation set does not depend on which extremes a draw happened to favour. Shuffled."""
    levels = sorted(set(int(v) for v in isos))
    k = len(levels)
    counts = [n // k] * k
    middle = (k - 1) / 2
    for i in sorted(range(k), key=lambda i: (abs(i - middle), i))[: n % k]:
        counts[i] += 1
    ordered = [level for level, count in zip(levels, counts, strict=True) for _ in range(count)]
    return [ordered[i] for i in rng.permutation(n)]


def plan_instances(cfg: SiddGeneratorConfig, instances_per_scene: int = 2) -> list[PlannedCapture]:
    """Every capture the generator writes, train then val, with its folder identity.

    Instances are numbered 1.. over both splits; each scene gives ``instances_per_scene``
    consecutive instances; validation scenes come after all training scenes, so no scene
    id is in both splits. Phones cycle GP, IP, S6, N6, G4. Training ISOs are drawn from
    ``cfg.iso_levels``; validation ISOs are balanced (:func:`_balanced_isos`), because a
    handful of validation images drawn at random would let the benchmark's noise level
    swing by dB from one seed to the next.
    """
    if instances_per_scene < 1:
        raise ValueError("instances_per_scene must be >= 1")
    rng = _rng(cfg.seed, _META_STREAM)
    isos = list(cfg.iso_levels)
    train_scenes = math.ceil(cfg.num_train_scenes / instances_per_scene)
    val_scenes = math.ceil(cfg.num_val_images / instances_per_scene)
    if train_scenes + val_scenes > 999 or cfg.num_train_scenes + cfg.num_val_images > 9999:
        raise DatasetError(
            f"{cfg.num_train_scenes} + {cfg.num_val_images} instances need more than SIDD's folder names "
            "can number (9999 instances, 999 scenes): raise instances_per_scene or generate less"
        )
    jobs = []
    val_isos = _balanced_isos(isos, cfg.num_val_images, rng)
    for split, count, first_scene in (
        ("train", cfg.num_train_scenes, 1),
        ("val", cfg.num_val_images, 1 + train_scenes),
    ):
        for index in range(count):
            if split == "train":
                iso = int(rng.choice(isos))
            else:
                iso = val_isos[index]
            brightness = _brightness(iso, isos, rng)
            inst = SiddInstance(
                instance=len(jobs) + 1,
                scene=first_scene + index // instances_per_scene,
                phone=PHONES[index % len(PHONES)],
                iso=iso,
                shutter=_shutter(iso, brightness, rng),
                illuminant=int(rng.choice(_ILLUMINANTS)),
                brightness=brightness,
            )
            jobs.append(PlannedCapture(split, index, inst))
    return jobs


def render_pair(cfg: SiddGeneratorConfig, inst: SiddInstance) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) uint8 RGB images of one instance; depends only on ``cfg`` and ``inst``."""
    scene_rng = _rng(cfg.seed, _SCENE_STREAM, inst.scene)
    inst_rng = _rng(cfg.seed, _INSTANCE_STREAM, inst.instance)
    clean = render_instance(
        scene_rng, inst_rng, cfg.image_width, cfg.image_height, inst.brightness, inst.illuminant
    )
    noisy = add_camera_noise(clean, inst.iso, inst_rng)
    return clean, noisy


def _write_train_instance(cfg: SiddGeneratorConfig, inst: SiddInstance, data_dir: Path) -> None:
    clean, noisy = render_pair(cfg, inst)
    folder = data_dir / inst.folder_name
    folder.mkdir()
    save_bytes(folder / SMALL_FILES[0], write_rgb8_png(clean))
    save_bytes(folder / SMALL_FILES[1], write_rgb8_png(noisy))


def _block_positions(cfg: SiddGeneratorConfig, inst: SiddInstance) -> list[tuple[int, int]]:
    """Block corners (y, x): distinct cells of a randomly offset grid while there are enough
    cells (blocks do not overlap, as SIDD's do not), random positions beyond that."""
    rng = _rng(cfg.seed, _INSTANCE_STREAM, inst.instance, 1)
    bs, w, h = cfg.block_size, cfg.image_width, cfg.image_height
    gx, gy = w // bs, h // bs
    if gx * gy >= cfg.blocks_per_image:
        ox, oy = int(rng.integers(0, w - gx * bs + 1)), int(rng.integers(0, h - gy * bs + 1))
        cells = rng.permutation(gx * gy)[: cfg.blocks_per_image]
        return [(oy + int(c // gx) * bs, ox + int(c % gx) * bs) for c in sorted(cells)]
    return [
        (int(rng.integers(0, h - bs + 1)), int(rng.integers(0, w - bs + 1)))
        for _ in range(cfg.blocks_per_image)
    ]


def _render_val_image(
    cfg: SiddGeneratorConfig, inst: SiddInstance
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    clean, noisy = render_pair(cfg, inst)
    bs = cfg.block_size
    positions = _block_positions(cfg, inst)
    gt = np.stack([clean[y : y + bs, x : x + bs] for y, x in positions])
    nz = np.stack([noisy[y : y + bs, x : x + bs] for y, x in positions])
    return nz, gt, positions


def _run_job(cfg: SiddGeneratorConfig, job: PlannedCapture, data_dir: Path) -> Any:
    if job.split == "train":
        return _write_train_instance(cfg, job.instance, data_dir)
    return _render_val_image(cfg, job.instance)


def generator_stamp(cfg: SiddGeneratorConfig, instances_per_scene: int) -> dict[str, Any]:
    """What a generated root records about how it was made (regenerate when it differs)."""
    return {
        "generator": "ops.restoration.sidd",
        "version": GENERATOR_VERSION,
        "config": cfg.model_dump(mode="json"),
        "instances_per_scene": instances_per_scene,
    }


# Below this many pixels to render, starting spawned workers (about a second each to import
# numpy, OpenCV and scipy) costs more than it saves.
_POOL_MIN_PIXELS = 12_000_000


def _auto_workers(cfg: SiddGeneratorConfig) -> int:
    pixels = (cfg.num_train_scenes + cfg.num_val_images) * cfg.image_width * cfg.image_height
    return 1 if pixels < _POOL_MIN_PIXELS else default_workers()


def _is_complete(root: Path) -> bool:
    return all(
        p.is_file() for p in (root / SMALL_DIR / SCENE_LIST, root / VAL_NOISY_FILE, root / VAL_GT_FILE)
    )


def generate_sidd_dataset(
    root: Path,
    cfg: SiddGeneratorConfig,
    workers: int | None = None,
    *,
    instances_per_scene: int = 2,
    progress: bool = False,
) -> Path:
    """Write ``cfg``'s procedural SIDD stand-in to ``root``; return ``root``.

    Layout: ``SIDD_Small_sRGB_Only/Data/<folder>/{GT,NOISY}_SRGB_010.PNG`` and
    ``Scene_Instances.txt`` for training, ``ValidationNoisyBlocksSrgb.mat`` /
    ``ValidationGtBlocksSrgb.mat`` (MATLAB v5, uint8 (images, blocks, size, size, 3)) and
    the sidecar ``ValidationBlocksSrgb.json`` for validation, with scenes disjoint between
    the two. ``instances_per_scene`` (not part of :class:`SiddGeneratorConfig`) is how many
    folders photograph each scene.

    Every file depends only on the configuration, so the same seed writes byte-identical
    files whatever ``workers`` is (default: one process for small datasets, else
    :func:`default_workers` spawned processes). Everything is written into a hidden
    directory beside ``root`` and renamed onto it at the end; a root already holding this
    configuration (``.generator.json``) is kept as is. A failure, a full disk included,
    removes the temporary directory and leaves any previous ``root`` untouched; a root
    that the generator did not write is never replaced.
    """
    root = Path(root)
    stamp = generator_stamp(cfg, instances_per_scene)
    if keep_generated(root, stamp, _is_complete, "SIDD"):
        log.info("%s already holds this SIDD generator configuration; not regenerating", root)
        return root
    if cfg.block_size > min(cfg.image_width, cfg.image_height):
        raise DatasetError(
            f"block_size {cfg.block_size} does not fit in {cfg.image_width}x{cfg.image_height} images"
        )
    jobs = plan_instances(cfg, instances_per_scene)
    workers = _auto_workers(cfg) if workers is None else max(1, workers)
    log.info(
        "generating SIDD stand-in: %d training instances, %d validation images x %d blocks (%dx%d, seed %d, "
        "%d worker(s)) into %s",
        cfg.num_train_scenes,
        cfg.num_val_images,
        cfg.blocks_per_image,
        cfg.image_width,
        cfg.image_height,
        cfg.seed,
        workers,
        root,
    )
    with staged_generation(root, workers) as (tmp, pool):
        data_dir = tmp / SMALL_DIR / "Data"
        data_dir.mkdir(parents=True)
        val_results = []
        with tqdm(total=len(jobs), disable=not progress, desc="SIDD pairs", unit="img") as bar:
            for job, result in zip(
                jobs,
                pool_map(pool, _run_job, [cfg] * len(jobs), jobs, [data_dir] * len(jobs), chunksize=4),
                strict=True,
            ):
                if job.split == "val":
                    val_results.append((job, result))
                bar.update(1)
        train_names = [j.instance.folder_name for j in jobs if j.split == "train"]
        save_bytes(tmp / SMALL_DIR / SCENE_LIST, ("\n".join(train_names) + "\n").encode())
        noisy = np.stack([r[0] for _, r in val_results])
        gt = np.stack([r[1] for _, r in val_results])
        save_bytes(tmp / VAL_NOISY_FILE, write_mat_v5(tmp / VAL_NOISY_FILE, {VAL_NOISY_KEY: noisy}))
        save_bytes(tmp / VAL_GT_FILE, write_mat_v5(tmp / VAL_GT_FILE, {VAL_GT_KEY: gt}))
        sidecar = {
            "description": "instance folder of each validation image (visionforge procedural SIDD)",
            "block_size": cfg.block_size,
            "images": [
                {"instance": job.instance.folder_name, "blocks_yx": [list(p) for p in r[2]]}
                for job, r in val_results
            ],
        }
        save_bytes(tmp / VAL_SIDECAR, (json.dumps(sidecar, indent=1) + "\n").encode())
        save_bytes(tmp / STAMP_NAME, (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode())
    log.info(
        "wrote %s: %d training pairs, %d validation blocks",
        root,
        len(train_names),
        noisy.shape[0] * noisy.shape[1],
    )
    return root
