"""SIDD layouts: folder names, the procedural generator, the loaders and their errors, and the
generic pair tools (PSNR/SSIM, the pair report)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from ops.config import SiddGeneratorConfig
from ops.data import writing
from ops.errors import DatasetError
from ops.restoration.pairs import SSIM_SETTINGS, psnr, read_rgb8, ssim, write_pair_report
from ops.restoration.sidd import (
    MEDIUM_DIR,
    SMALL_DIR,
    VAL_GT_FILE,
    VAL_GT_KEY,
    VAL_NOISY_FILE,
    VAL_NOISY_KEY,
    VAL_SIDECAR,
    SiddInstance,
    generate_sidd_dataset,
    load_sidd,
    parse_instance_name,
    read_mat_array,
)

CFG = SiddGeneratorConfig(
    seed=11,
    num_train_scenes=6,
    num_val_images=3,
    blocks_per_image=2,
    block_size=32,
    image_width=64,
    image_height=64,
    iso_levels=[100, 800, 3200],
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generated dataset, shared read-only by the tests of this module."""
    return generate_sidd_dataset(tmp_path_factory.mktemp("sidd") / "sidd", CFG)


@pytest.fixture
def copy(generated: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(generated, tmp_path / "sidd"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / SMALL_DIR / "Data").iterdir() if p.is_dir())


# --------------------------------------------------------------------------- folder names


def test_folder_name_parse_and_format_round_trip() -> None:
    inst = parse_instance_name("0001_001_S6_00100_00060_3200_L")
    assert inst == SiddInstance(1, 1, "S6", 100, 60, 3200, "L")
    assert inst.folder_name == "0001_001_S6_00100_00060_3200_L"
    other = SiddInstance(
        instance=199, scene=10, phone="GP", iso=6400, shutter=2000, illuminant=5500, brightness="N"
    )
    assert parse_instance_name(other.folder_name) == other
    assert other.folder_name == "0199_010_GP_06400_02000_5500_N"


@pytest.mark.parametrize(
    "name",
    [
        "0001_001_XX_00100_00060_3200_L",  # unknown phone
        "0001_001_S6_00100_00060_3200_Q",  # unknown brightness
        "1_001_S6_00100_00060_3200_L",  # instance not zero-padded
        "0001_001_S6_00100_00060_3200",  # field missing
        "scene_instance_folder",
    ],
)
def test_a_bad_folder_name_is_refused_naming_it(name: str) -> None:
    with pytest.raises(DatasetError, match=name):
        parse_instance_name(name)


# --------------------------------------------------------------------------- the generator


def test_generator_writes_the_official_layout(generated: Path) -> None:
    folders = _folders(generated)
    assert len(folders) == CFG.num_train_scenes
    listed = (generated / SMALL_DIR / "Scene_Instances.txt").read_text().split()
    assert listed == [f.name for f in folders]
    for folder in folders:
        inst = parse_instance_name(folder.name)
        assert inst.iso in CFG.iso_levels
        assert sorted(p.name for p in folder.iterdir()) == ["GT_SRGB_010.PNG", "NOISY_SRGB_010.PNG"]
        for name in ("GT_SRGB_010.PNG", "NOISY_SRGB_010.PNG"):
            raw = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8 and raw.shape == (CFG.image_height, CFG.image_width, 3)
    assert [parse_instance_name(f.name).phone for f in folders] == ["GP", "IP", "S6", "N6", "G4", "GP"]
    for file, key in ((VAL_NOISY_FILE, VAL_NOISY_KEY), (VAL_GT_FILE, VAL_GT_KEY)):
        assert (generated / file).read_bytes().startswith(b"MATLAB 5.0 MAT-file")
        array = scipy.io.loadmat(str(generated / file))[key]
        assert array.dtype == np.uint8 and array.shape == (3, 2, 32, 32, 3)
    sidecar = json.loads((generated / VAL_SIDECAR).read_text())
    assert len(sidecar["images"]) == CFG.num_val_images
    assert sorted(parse_instance_name(e["instance"]).iso for e in sidecar["images"]) == [100, 800, 3200]
    assert json.loads((generated / ".generator.json").read_text())["config"]["seed"] == CFG.seed


def test_same_seed_writes_byte_identical_files_whatever_the_workers(generated: Path, tmp_path: Path) -> None:
    again = generate_sidd_dataset(tmp_path / "again", CFG, workers=2)
    assert _files(again) == _files(generated)
    other = generate_sidd_dataset(tmp_path / "other", CFG.model_copy(update={"seed": 12}), workers=1)
    assert _files(other)[VAL_NOISY_FILE] != _files(generated)[VAL_NOISY_FILE]


def test_validation_scenes_never_appear_in_training(generated: Path) -> None:
    train_scenes = {parse_instance_name(f.name).scene for f in _folders(generated)}
    sidecar = json.loads((generated / VAL_SIDECAR).read_text())
    val_scenes = {parse_instance_name(e["instance"]).scene for e in sidecar["images"]}
    assert train_scenes and val_scenes and not train_scenes & val_scenes
    instances = [parse_instance_name(f.name).instance for f in _folders(generated)]
    instances += [parse_instance_name(e["instance"]).instance for e in sidecar["images"]]
    assert len(set(instances)) == len(instances)


def test_an_existing_root_is_kept_replaced_or_protected(copy: Path, tmp_path: Path) -> None:
    stamp = (copy / ".generator.json").stat().st_mtime_ns
    assert generate_sidd_dataset(copy, CFG) == copy
    assert (copy / ".generator.json").stat().st_mtime_ns == stamp  # same settings: not regenerated
    generate_sidd_dataset(copy, CFG.model_copy(update={"num_train_scenes": 2}))
    assert len(_folders(copy)) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a generated dataset")
    with pytest.raises(DatasetError, match="refusing"):
        generate_sidd_dataset(foreign, CFG)
    assert (foreign / "notes.txt").exists()


def test_a_full_disk_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = writing.write_bytes

    def filling_disk(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(writing, "write_bytes", filling_disk)
    root = tmp_path / "data" / "sidd"
    with pytest.raises(DatasetError, match="no space left on the device writing .*PNG"):
        generate_sidd_dataset(root, CFG, workers=1)
    assert not root.exists()
    assert list((tmp_path / "data").iterdir()) == []  # no temporary directory either


# --------------------------------------------------------------------------- the loaders


def test_loader_reads_the_small_layout(generated: Path) -> None:
    split = load_sidd(generated, "train")
    assert split.name == "train" and split.num_pairs == CFG.num_train_scenes and split.num_blocks == 0
    pair = split.pairs[0]
    assert pair.degraded.name == "NOISY_SRGB_010.PNG" and pair.clean.name == "GT_SRGB_010.PNG"
    assert pair.info["iso"] == parse_instance_name(pair.group).iso and pair.info["layout"] == "small"
    degraded, clean, info = next(split.iter_samples())
    bgr = cv2.imread(str(pair.clean))
    assert np.array_equal(clean, bgr[..., ::-1])  # RGB order
    assert degraded.shape == clean.shape == (64, 64, 3) and info["group"] == pair.group
    assert len(load_sidd(generated, "train", check_images=False).pairs) == CFG.num_train_scenes


def test_loader_reads_the_medium_layout(copy: Path) -> None:
    medium = copy / MEDIUM_DIR / "Data"
    medium.mkdir(parents=True)
    for folder in _folders(copy):
        target = medium / folder.name
        target.mkdir()
        prefix = folder.name[:4]
        for frame in ("010", "011"):
            shutil.copy(folder / "GT_SRGB_010.PNG", target / f"{prefix}_GT_SRGB_{frame}.PNG")
            shutil.copy(folder / "NOISY_SRGB_010.PNG", target / f"{prefix}_NOISY_SRGB_{frame}.PNG")
    both = load_sidd(copy, "train")  # Small's folders are all in Medium: taken from Medium only
    assert both.num_pairs == 2 * CFG.num_train_scenes
    assert {p.info["layout"] for p in both.pairs} == {"medium"}
    assert {p.info["frame"] for p in both.pairs} == {"010", "011"}
    shutil.rmtree(copy / SMALL_DIR)
    only_medium = load_sidd(copy, "train")
    assert [p.degraded for p in only_medium.pairs] == [p.degraded for p in both.pairs]


def test_validation_blocks_and_their_sidecar(copy: Path) -> None:
    split = load_sidd(copy, "val")
    assert split.blocks_degraded.shape == split.blocks_clean.shape == (6, 32, 32, 3)
    assert split.num_pairs == 0 and len(split) == 6
    isos = [info["iso"] for info in split.block_info]
    assert sorted(set(isos)) == [100, 800, 3200] and [b["image"] for b in split.block_info] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    samples = list(split.iter_samples())
    assert len(samples) == 6 and samples[0][2]["iso"] == isos[0]
    (copy / VAL_SIDECAR).unlink()  # real SIDD: no ISO known
    plain = load_sidd(copy, "val")
    assert "iso" not in plain.block_info[0] and np.array_equal(plain.blocks_clean, split.blocks_clean)


def _write_mat73(path: Path, key: str, array: np.ndarray) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 behind a 512-byte user block that starts
    with the MATLAB header text, the array stored column-major (dimensions reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=np.ascontiguousarray(array.T))
        f[key].attrs["MATLAB_class"] = np.bytes_("uint8")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(128))


def test_mat_v5_and_v73_read_to_the_same_arrays(copy: Path) -> None:
    before = load_sidd(copy, "val")
    for file, key in ((VAL_NOISY_FILE, VAL_NOISY_KEY), (VAL_GT_FILE, VAL_GT_KEY)):
        v5 = read_mat_array(copy / file, key)
        _write_mat73(copy / file, key, v5)
        assert h5py.is_hdf5(copy / file)
        assert h5py.File(copy / file, "r")[key].shape == v5.shape[::-1]
        assert np.array_equal(read_mat_array(copy / file, key), v5)
    after = load_sidd(copy, "val")
    assert np.array_equal(after.blocks_degraded, before.blocks_degraded)
    assert np.array_equal(after.blocks_clean, before.blocks_clean)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p, k, a: p.write_text("this is not a MATLAB file\n" * 10), "not a MATLAB file"),
        (
            lambda p, k, a: scipy.io.savemat(str(p), {"SomethingElse": a}),
            "no variable 'ValidationNoisyBlocksSrgb'",
        ),
        (lambda p, k, a: scipy.io.savemat(str(p), {k: a.astype(np.float32)}), "dtype float32"),
        (lambda p, k, a: scipy.io.savemat(str(p), {k: a[..., :1]}), r"shape \(3, 2, 32, 32, 1\)"),
        (lambda p, k, a: scipy.io.savemat(str(p), {k: a[0]}), r"shape \(2, 32, 32, 3\)"),
        (lambda p, k, a: scipy.io.savemat(str(p), {k: a[:2]}), "shapes must match"),
        (lambda p, k, a: _write_mat73(p, "Wrong", a), "no variable 'ValidationNoisyBlocksSrgb'"),
    ],
    ids=[
        "not-matlab",
        "wrong-key",
        "wrong-dtype",
        "wrong-last-dim",
        "wrong-ndim",
        "mismatch",
        "v73-wrong-key",
    ],
)
def test_a_bad_mat_file_is_named(copy: Path, damage, message: str) -> None:
    path = copy / VAL_NOISY_FILE
    damage(path, VAL_NOISY_KEY, read_mat_array(path, VAL_NOISY_KEY))
    with pytest.raises(DatasetError, match=message) as caught:
        load_sidd(copy, "val")
    assert str(path) in str(caught.value)


def test_one_error_lists_every_offending_item(copy: Path) -> None:
    a, b, c, d, e = _folders(copy)[:5]
    (a / "NOISY_SRGB_010.PNG").unlink()  # half a pair
    gt = (b / "GT_SRGB_010.PNG").read_bytes()
    (b / "GT_SRGB_010.PNG").write_bytes(gt[: len(gt) // 2])  # truncated
    cv2.imwrite(str(c / "NOISY_SRGB_010.PNG"), np.zeros((64, 64, 3), np.uint16))  # 16-bit
    cv2.imwrite(str(d / "GT_SRGB_010.PNG"), np.zeros((64, 64), np.uint8))  # grayscale
    cv2.imwrite(str(e / "NOISY_SRGB_010.PNG"), np.zeros((48, 64, 3), np.uint8))  # size mismatch
    bad = copy / SMALL_DIR / "Data" / "not_a_sidd_folder"
    bad.mkdir()
    shutil.copy(e / "GT_SRGB_010.PNG", bad / "GT_SRGB_010.PNG")
    with pytest.raises(DatasetError) as caught:
        load_sidd(copy, "train")
    text = str(caught.value)
    assert "6 problem(s)" in text
    assert f"{a}: has GT_SRGB_010.PNG but not NOISY_SRGB_010.PNG" in text
    assert f"{b / 'GT_SRGB_010.PNG'} is a truncated PNG" in text
    assert f"{c / 'NOISY_SRGB_010.PNG'} is uint16 (16-bit)" in text
    assert f"{d / 'GT_SRGB_010.PNG'} is grayscale" in text
    assert f"{e}: GT is 64x64 but NOISY is 64x48" in text
    assert "'not_a_sidd_folder' does not follow SIDD's naming pattern" in text
    # paths only: the folder-level problems are still found, the image contents are not read
    with pytest.raises(DatasetError) as fast:
        load_sidd(copy, "train", check_images=False)
    assert "2 problem(s)" in str(fast.value) and "not_a_sidd_folder" in str(fast.value)


def test_missing_layouts_and_unknown_splits(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_sidd(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="no SIDD sRGB training layout"):
        load_sidd(tmp_path, "train")
    with pytest.raises(DatasetError, match=f"{VAL_NOISY_FILE}: file does not exist") as caught:
        load_sidd(tmp_path, "val")
    assert VAL_GT_FILE in str(caught.value)  # both files named in the one error
    with pytest.raises(ValueError):
        load_sidd(tmp_path, "test")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pairs: images, metrics, report


def test_read_rgb8_converts_to_rgb_and_refuses_bad_images(tmp_path: Path) -> None:
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    assert read_rgb8(tmp_path / "blue.png")[0, 0].tolist() == [0, 0, 200]
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="junk.png cannot be decoded"):
        read_rgb8(tmp_path / "junk.png")
    with pytest.raises(DatasetError, match="missing.png does not exist"):
        read_rgb8(tmp_path / "missing.png")


def test_psnr_and_ssim_known_values() -> None:
    a = np.full((32, 32, 3), 100, np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = a + np.uint8(10)  # MSE 100
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 100))
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(psnr(a, b))
    # constant images: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-9)
    # the data range is the argument's, never inferred: float images in [0, 1] with range 1 agree
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
    assert ssim(x / 255.0, y / 255.0, data_range=1.0) == pytest.approx(ssim(x, y), abs=1e-9)
    assert ssim(x, y) < 1.0 and "sigma=1.5" in SSIM_SETTINGS and "data_range" in SSIM_SETTINGS


def test_pair_report_for_blocks_and_files(generated: Path, tmp_path: Path) -> None:
    val = write_pair_report(load_sidd(generated, "val"), tmp_path)
    assert val["num_blocks"] == 6 and val["num_pairs"] == 0
    assert sum(val["counts"]["iso"].values()) == 6 and set(val["counts"]["iso"]) == {"100", "800", "3200"}
    by_iso = val["degraded_input"]["by"]["iso"]
    assert by_iso["3200"]["psnr"] < by_iso["100"]["psnr"]  # noise follows the ISO
    assert 0 < val["degraded_input"]["ssim"] < 1 and val["ssim_settings"] == SSIM_SETTINGS
    assert json.loads(Path(val["files"]["json"]).read_text())["num_blocks"] == 6
    assert Path(val["files"]["png"]).read_bytes().startswith(b"\x89PNG")
    train = write_pair_report(load_sidd(generated, "train"), tmp_path, max_metric_samples=3)
    assert train["num_pairs"] == 6 and train["degraded_input"]["num_samples"] == 3
    assert sum(train["counts"]["phone"].values()) == 6
    assert Path(train["files"]["json"]).name == "report_train.json"
