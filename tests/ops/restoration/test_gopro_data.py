"""GOPRO layouts: the blur recipe, the procedural generator, the loaders (official and flattened
layouts) and their errors."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ops.config import GoproGeneratorConfig
from ops.data import writing
from ops.errors import DatasetError
from ops.restoration import gopro
from ops.restoration.gopro import (
    LARGE_DIR,
    SIDECAR,
    average_frames,
    film_still,
    generate_gopro_dataset,
    load_gopro,
    plan_sequences,
)
from ops.restoration.pairs import psnr, read_rgb8

# 64x36 keeps GOPRO's 16:9; motion scaled from the 256x144 demo (1.4 px pan, 1 px shake).
CFG = GoproGeneratorConfig(
    seed=5,
    num_train_sequences=3,
    num_test_sequences=2,
    frames_per_sequence=4,
    image_width=64,
    image_height=36,
    blur_frames_min=7,
    blur_frames_max=13,
    max_pan_px=0.35,
    shake_px=0.25,
    zoom_per_frame=0.003,
    moving_objects=4,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generated dataset, shared read-only by the tests of this module."""
    return generate_gopro_dataset(tmp_path_factory.mktemp("gopro") / "gopro", CFG)


@pytest.fixture
def copy(generated: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(generated, tmp_path / "gopro"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sequences(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / LARGE_DIR / folder).iterdir() if p.is_dir())


# --------------------------------------------------------------------------- the blur recipe


def test_a_blurred_frame_is_the_average_of_its_sharp_frames() -> None:
    black, white = np.zeros((2, 3, 3), np.uint8), np.full((2, 3, 3), 255, np.uint8)
    assert average_frames([black, white], linear=False).tolist() == np.full((2, 3, 3), 128).tolist()
    # in linear light half the photons of white is 255 * 0.5 ** (1 / 2.2) = 186.1, not 127.5
    assert average_frames([black, white], linear=True).tolist() == np.full((2, 3, 3), 186).tolist()

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(9)]
    stack = np.stack(frames).astype(np.float64)
    srgb = np.clip(np.rint(stack.mean(0)), 0, 255)
    linear = np.clip(np.rint(255 * ((stack / 255) ** 2.2).mean(0) ** (1 / 2.2)), 0, 255)
    assert np.array_equal(average_frames(frames, linear=False), srgb.astype(np.uint8))
    assert np.array_equal(average_frames(frames, linear=True), linear.astype(np.uint8))
    assert np.array_equal(average_frames(frames[:1], linear=True), frames[0])  # one frame: itself
    with pytest.raises(ValueError):
        average_frames([frames[0], frames[1][:2]], linear=False)


def test_blur_gamma_differs_from_blur_and_is_never_darker(generated: Path) -> None:
    """The power mean with exponent 2.2 is at least the arithmetic mean: averaged in linear
    light, blurred highlights stay brighter (up to one level of rounding)."""
    seq = _sequences(generated, "test")[0]
    for name in ("000001.png", "000002.png"):
        blur = read_rgb8(seq / "blur" / name).astype(int)
        gamma = read_rgb8(seq / "blur_gamma" / name).astype(int)
        assert (gamma - blur).min() >= -1
        assert (gamma - blur).mean() > 0.5


# --------------------------------------------------------------------------- the generator


def test_generator_writes_the_official_layout(generated: Path) -> None:
    names = [f"{i:06d}.png" for i in range(1, CFG.frames_per_sequence + 1)]
    for folder, count in (("train", CFG.num_train_sequences), ("test", CFG.num_test_sequences)):
        sequences = _sequences(generated, folder)
        assert len(sequences) == count
        for seq in sequences:
            assert gopro._SEQ_RE.match(seq.name)
            for sub in ("blur", "blur_gamma", "sharp"):
                assert sorted(p.name for p in (seq / sub).iterdir()) == names
                assert read_rgb8(seq / sub / names[0]).shape == (CFG.image_height, CFG.image_width, 3)
            sidecar = json.loads((seq / SIDECAR).read_text())
            assert [f["name"] for f in sidecar["frames"]] == names
            lengths = [f["blur_frames"] for f in sidecar["frames"]]
            assert all(CFG.blur_frames_min <= n <= CFG.blur_frames_max for n in lengths)
            starts = [f["first_frame"] for f in sidecar["frames"]]
            assert starts == [sum(lengths[:i]) for i in range(len(lengths))]  # consecutive windows
    stamp = json.loads((generated / ".generator.json").read_text())
    assert stamp["config"] == CFG.model_dump(mode="json")


def test_same_seed_writes_byte_identical_files_whatever_the_workers(generated: Path, tmp_path: Path) -> None:
    again = generate_gopro_dataset(tmp_path / "again", CFG, workers=2)
    assert _files(again) == _files(generated)
    other = CFG.model_copy(update={"seed": 6, "num_train_sequences": 1, "num_test_sequences": 1})
    different = generate_gopro_dataset(tmp_path / "other", other)
    first = _sequences(different, "train")[0] / "sharp" / "000001.png"
    assert first.read_bytes() != (_sequences(generated, "train")[0] / "sharp" / "000001.png").read_bytes()


def test_train_and_test_sequences_are_disjoint(generated: Path) -> None:
    plan = plan_sequences(CFG)
    train = {job.name for job in plan if job.split == "train"}
    test = {job.name for job in plan if job.split == "test"}
    assert len(train) == CFG.num_train_sequences and len(test) == CFG.num_test_sequences
    assert not train & test
    assert {p.name for p in _sequences(generated, "train")} == train
    # different scenes, not just different names: no sharp frame is shared
    digests = {
        folder: {
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (generated / LARGE_DIR / folder).rglob("*.png")
        }
        for folder in ("train", "test")
    }
    assert not digests["train"] & digests["test"]


def test_an_existing_root_is_kept_replaced_or_protected(tmp_path: Path) -> None:
    small = CFG.model_copy(
        update={"num_train_sequences": 1, "num_test_sequences": 1, "frames_per_sequence": 1}
    )
    root = generate_gopro_dataset(tmp_path / "gopro", small)
    stamp = (root / ".generator.json").stat().st_mtime_ns
    assert generate_gopro_dataset(root, small) == root
    assert (root / ".generator.json").stat().st_mtime_ns == stamp  # same settings: not regenerated
    generate_gopro_dataset(root, small.model_copy(update={"num_train_sequences": 2}))
    assert len(_sequences(root, "train")) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a generated dataset")
    with pytest.raises(DatasetError, match="refusing"):
        generate_gopro_dataset(foreign, small)
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
    root = tmp_path / "data" / "gopro"
    with pytest.raises(DatasetError, match=r"no space left on the device writing .*\.png"):
        generate_gopro_dataset(root, CFG, workers=1)
    assert not root.exists()
    assert list((tmp_path / "data").iterdir()) == []  # no temporary directory either


def _mean_psnr(root: Path) -> float:
    return float(np.mean([psnr(d, c) for d, c, _ in load_gopro(root, "val").iter_samples()]))


def test_blurred_input_psnr_falls_as_more_frames_are_averaged(tmp_path: Path) -> None:
    """Same scenes and camera paths (the seed), only the exposure changes: averaging more
    sharp frames gives longer blur paths and a worse blurred input."""
    base = CFG.model_copy(
        update={"num_train_sequences": 1, "num_test_sequences": 4, "frames_per_sequence": 3}
    )
    means = [
        _mean_psnr(
            generate_gopro_dataset(
                tmp_path / f"n{n}", base.model_copy(update={"blur_frames_min": n, "blur_frames_max": n})
            )
        )
        for n in (7, 10, 13)
    ]
    assert means[0] > means[1] > means[2], means
    assert means[0] - means[2] > 1.0, means


def test_per_blur_length_figures_on_one_dataset(generated: Path) -> None:
    """The sidecar lets evaluation bin by blur length; on mixed lengths the longer half of the
    exposures is, on average, the more degraded (a loose check)."""
    samples = [
        (info["blur_frames"], psnr(d, c)) for d, c, info in load_gopro(generated, "train").iter_samples()
    ]
    samples += [
        (info["blur_frames"], psnr(d, c)) for d, c, info in load_gopro(generated, "val").iter_samples()
    ]
    middle = (CFG.blur_frames_min + CFG.blur_frames_max) / 2
    short = [p for n, p in samples if n < middle]
    long = [p for n, p in samples if n > middle]
    assert short and long
    assert np.mean(short) > np.mean(long)


# --------------------------------------------------------------------------- the loaders


def test_loader_reads_the_official_layout_with_either_blur(generated: Path) -> None:
    train = load_gopro(generated, "train")
    assert train.name == "train"
    assert train.num_pairs == CFG.num_train_sequences * CFG.frames_per_sequence
    assert {p.group for p in train.pairs} == {p.name for p in _sequences(generated, "train")}
    pair = train.pairs[0]
    assert pair.degraded.parent.name == "blur" and pair.clean.parent.name == "sharp"
    assert pair.info["sequence"] == pair.group
    assert CFG.blur_frames_min <= pair.info["blur_frames"] <= CFG.blur_frames_max

    val = load_gopro(generated / LARGE_DIR, "val", blur="blur_gamma")  # GOPRO_Large itself as root
    assert val.num_pairs == CFG.num_test_sequences * CFG.frames_per_sequence
    assert {p.group for p in val.pairs} == {p.name for p in _sequences(generated, "test")}
    assert all(p.degraded.parent.name == "blur_gamma" for p in val.pairs)
    degraded, clean, info = val.sample(0)
    assert degraded.shape == clean.shape == (CFG.image_height, CFG.image_width, 3)
    assert info["group"] == info["sequence"] and "blur_frames" in info
    with pytest.raises(ValueError):
        load_gopro(generated, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        load_gopro(generated, "train", blur="sharp")  # type: ignore[arg-type]


def test_loader_reads_the_flattened_layout(generated: Path, tmp_path: Path) -> None:
    """NAFNet / Restormer flatten GOPRO into {train,test}/{input,target}/<sequence>-<frame>.png."""
    flat = tmp_path / "GoPro"
    for folder in ("train", "test"):
        for side in ("input", "target"):
            (flat / folder / side).mkdir(parents=True)
        for seq in _sequences(generated, folder):
            for frame in sorted((seq / "blur").iterdir()):
                shutil.copy(frame, flat / folder / "input" / f"{seq.name}-{frame.name}")
                shutil.copy(seq / "sharp" / frame.name, flat / folder / "target" / f"{seq.name}-{frame.name}")
    official = load_gopro(generated, "val")
    val = load_gopro(flat, "val")
    assert val.num_pairs == official.num_pairs
    assert {p.group for p in val.pairs} == {p.group for p in official.pairs}
    assert all(p.info["sequence"] == p.group and p.info["layout"] == "flattened" for p in val.pairs)
    assert [p.degraded.read_bytes() for p in val.pairs] == [p.degraded.read_bytes() for p in official.pairs]
    assert load_gopro(flat, "train").num_pairs == CFG.num_train_sequences * CFG.frames_per_sequence

    (flat / "test" / "target" / val.pairs[0].clean.name).unlink()
    with pytest.raises(DatasetError, match="1 input/ image\\(s\\) without a target/ image"):
        load_gopro(flat, "val")


def test_one_error_lists_every_offending_item(copy: Path) -> None:
    a, b, c = _sequences(copy, "train")
    (a / "sharp" / "000002.png").unlink()  # a blur frame without its sharp frame
    blur = (a / "blur" / "000001.png").read_bytes()
    (a / "blur" / "000001.png").write_bytes(blur[: len(blur) // 2])  # truncated
    cv2.imwrite(str(b / "sharp" / "000003.png"), np.zeros((36, 64), np.uint8))  # grayscale
    cv2.imwrite(str(b / "blur" / "000002.png"), np.zeros((36, 64, 3), np.uint16))  # 16-bit
    cv2.imwrite(str(c / "blur" / "000004.png"), np.zeros((30, 64, 3), np.uint8))  # unequal sizes
    (c / SIDECAR).write_text("{not json")
    lonely = copy / LARGE_DIR / "train" / "GOPR9999_00_00"
    (lonely / "blur").mkdir(parents=True)  # a sequence without sharp/
    shutil.copy(c / "blur" / "000001.png", lonely / "blur" / "000001.png")
    with pytest.raises(DatasetError) as caught:
        load_gopro(copy, "train")
    text = str(caught.value)
    assert "7 problem(s)" in text
    assert f"{a}: 1 blur/ frame(s) without a sharp/ frame: 000002.png" in text
    assert f"{a / 'blur' / '000001.png'} is a truncated PNG" in text
    assert f"{b / 'sharp' / '000003.png'} is grayscale" in text
    assert f"{b / 'blur' / '000002.png'} is uint16 (16-bit)" in text
    assert f"{c / 'blur' / '000004.png'} is 64x30 but {c / 'sharp' / '000004.png'} is 64x36" in text
    assert f"{c / SIDECAR}: unreadable sidecar" in text
    assert f"{lonely}: no sharp/ folder" in text
    # paths only: the folder-level problems are still found, the image contents are not read
    with pytest.raises(DatasetError) as fast:
        load_gopro(copy, "train", check_images=False)
    assert "3 problem(s)" in str(fast.value)
    # the test split is untouched and still loads
    assert load_gopro(copy, "val").num_pairs == CFG.num_test_sequences * CFG.frames_per_sequence


def test_missing_and_empty_splits(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_gopro(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="no GOPRO test split"):
        load_gopro(tmp_path, "val")
    for seq in _sequences(copy, "test"):
        shutil.rmtree(seq)
    with pytest.raises(DatasetError, match="is empty"):
        load_gopro(copy, "val")
    (_sequences(copy, "train")[0] / "blur_gamma").rename(copy / "elsewhere")
    with pytest.raises(DatasetError, match="no blur_gamma/ folder .* load with blur='blur'"):
        load_gopro(copy, "train", blur="blur_gamma")


def test_a_copy_mixing_both_layouts_is_refused(copy: Path) -> None:
    test_dir = copy / "GOPRO_Large" / "test"
    (test_dir / "input").mkdir()
    with pytest.raises(DatasetError, match="mixes GOPRO's two layouts: input/ .* beside sequence folders"):
        load_gopro(copy, "val")
    (test_dir / "input").rmdir()
    (copy / "test" / "input").mkdir(parents=True)
    (copy / "test" / "target").mkdir()
    with pytest.raises(DatasetError, match="holds both .*official layout.*flattened layout"):
        load_gopro(copy, "val")
    shutil.rmtree(copy / "test")
    assert load_gopro(copy, "val", check_images=False).num_pairs > 0


def test_a_still_photograph_is_blurred_by_the_same_camera() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)  # a photograph full of edges
    photo = cv2.resize(blocks, (200, 160), interpolation=cv2.INTER_NEAREST)
    blurred, sharp = film_still(photo, CFG, seed=1, blur_frames=9)
    assert blurred.shape == sharp.shape == (CFG.image_height, CFG.image_width, 3)
    assert psnr(blurred, sharp) < 36  # the camera moved during the exposure
    longer = film_still(photo, CFG, seed=1, blur_frames=13)
    assert psnr(longer[0], longer[1]) < psnr(blurred, sharp)  # a longer exposure, more blur
    again = film_still(photo, CFG, seed=1, blur_frames=9)
    assert np.array_equal(again[0], blurred) and np.array_equal(again[1], sharp)
    with pytest.raises(ValueError, match="needs .* \\(the camera's reach\\)"):
        film_still(photo[:40, :40], CFG, seed=1, blur_frames=9)


def test_a_local_or_download_source_without_its_data_is_named(tmp_path: Path) -> None:
    from ops.config import DownloadConfig, GoproDatasetConfig
    from ops.restoration.tasks import GoproData

    download = DownloadConfig(url=None, sha256=None, max_bytes=1 << 20)
    local = GoproDatasetConfig(
        source="local", root=tmp_path / "missing", blur="blur", download=download, generator=CFG
    )
    with pytest.raises(DatasetError, match="gopro.dataset.source is 'local' but .*missing does not exist"):
        GoproData().prepare(local)
    fetch = local.model_copy(update={"source": "download"})
    with pytest.raises(DatasetError, match="gopro.dataset.download.url is not set"):
        GoproData().prepare(fetch)
