"""The camera noise model (Brooks et al. 2019 unprocessing, ISO-driven shot noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ops.restoration import camera
from ops.restoration.camera import (
    CameraNoise,
    add_camera_noise,
    add_raw_noise,
    process,
    shot_noise_for_iso,
    simulate_capture,
    unprocess,
)
from ops.restoration.pairs import psnr
from ops.restoration.scenes import render_instance


def _scene(seed: int, size: int = 64, brightness: str = "N") -> np.ndarray:
    return render_instance(
        np.random.default_rng(seed), np.random.default_rng(seed + 1000), size, size, brightness
    )


def test_noise_free_round_trip_returns_the_clean_image() -> None:
    """Demosaicing costs a little at edges; on average the image comes back within 1-2 levels."""
    rng = np.random.default_rng(0)
    errors = []
    for seed in range(4):
        clean = _scene(seed, 256)
        cam = CameraNoise.sample(800, rng).noiseless()
        out = simulate_capture(clean, cam, rng)
        assert out.dtype == np.uint8 and out.shape == clean.shape
        error = np.abs(out.astype(np.int16) - clean.astype(np.int16))
        assert error.mean() < 2.0, f"scene {seed}: mean round-trip error {error.mean():.2f} levels"
        assert np.median(error) <= 1
        errors.append(error.mean())
    assert np.mean(errors) < 1.5


def test_round_trip_is_exact_on_flat_colours_and_keeps_odd_sizes() -> None:
    rng = np.random.default_rng(1)
    flat = np.zeros((15, 21, 3), np.uint8)
    flat[:, :10] = (30, 120, 200)  # away from highlights: the inverse gains are exact there
    flat[:, 10:] = (180, 90, 40)
    out = simulate_capture(flat, CameraNoise.sample(100, rng).noiseless(), rng)
    assert out.shape == flat.shape
    interior = np.abs(out.astype(int) - flat)[:, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 18]]
    assert interior.max() <= 1


def test_noise_grows_with_iso() -> None:
    clean = [_scene(seed, 64, "N") for seed in range(3)]
    by_iso = {}
    for iso in (100, 800, 3200):
        rng = np.random.default_rng(iso)
        by_iso[iso] = np.mean([psnr(add_camera_noise(c, iso, rng), c) for c in clean])
    assert by_iso[3200] < by_iso[800] < by_iso[100]
    assert by_iso[100] - by_iso[3200] > 6  # a clear spread, not a rounding effect


def test_shot_noise_is_monotonic_in_iso_and_hits_its_anchors() -> None:
    levels = [50, 100, 200, 400, 800, 1600, 3200, 6400]
    shots = [shot_noise_for_iso(iso) for iso in levels]
    assert all(a < b for a, b in zip(shots, shots[1:], strict=False))
    (iso0, shot0), (iso1, shot1) = camera.SHOT_ANCHORS
    assert shot_noise_for_iso(iso0) == pytest.approx(shot0)
    assert shot_noise_for_iso(iso1) == pytest.approx(shot1)
    with pytest.raises(ValueError):
        shot_noise_for_iso(0)


def test_sampled_cameras_follow_the_paper() -> None:
    rng = np.random.default_rng(2)
    cams = [CameraNoise.sample(400, rng) for _ in range(400)]
    assert all(1.9 <= c.red_gain <= 2.4 and 1.5 <= c.blue_gain <= 1.9 for c in cams)
    assert all(np.allclose(c.rgb_to_cam.sum(axis=1), 1.0) for c in cams)
    assert all(np.allclose(c.ccm @ c.rgb_to_cam, np.eye(3), atol=1e-9) for c in cams)
    residual = np.array([math.log(c.read) - (2.18 * math.log(c.shot) + 1.20) for c in cams])
    assert abs(residual.mean()) < 0.05 and residual.std() == pytest.approx(0.26, abs=0.04)


def test_raw_noise_variance_is_shot_times_signal_plus_read() -> None:
    rng = np.random.default_rng(3)
    cam = CameraNoise.sample(1600, rng)
    for level in (0.1, 0.5):
        bayer = np.full((256, 256), level, np.float32)
        noisy = add_raw_noise(bayer, cam, rng)
        assert noisy.var() == pytest.approx(cam.shot * level + cam.read, rel=0.05)


def test_same_seed_same_noise_and_bad_input_is_refused() -> None:
    clean = _scene(4)
    a = add_camera_noise(clean, 400, np.random.default_rng(9))
    b = add_camera_noise(clean, 400, np.random.default_rng(9))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        unprocess(clean.astype(np.float32), CameraNoise.sample(100, np.random.default_rng(0)))
    mosaic = unprocess(clean, CameraNoise.sample(100, np.random.default_rng(0)))
    assert mosaic.shape == clean.shape[:2] and mosaic.dtype == np.float32
    assert process(mosaic, CameraNoise.sample(100, np.random.default_rng(0))).shape == clean.shape
