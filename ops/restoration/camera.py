"""A smartphone camera's noise, simulated on sRGB images (Brooks et al. 2019, "Unprocessing
images for learned raw denoising").

Noise on a real phone is not additive Gaussian noise in sRGB: it is born in the raw sensor
values (photon shot noise grows with the signal, read noise does not), is spread and
coloured by demosaicing and colour correction, and is then squeezed by gamma and tone
curve, so dark areas are noisier than bright ones and the noise has colour. A denoiser
trained on i.i.d. sRGB noise learns none of that, so the procedural SIDD stand-in runs the
clean image back to raw, adds noise there and develops it again:

``unprocess``: sRGB uint8 -> [0, 1] -> inverse smoothstep tone curve -> inverse gamma 2.2
-> inverse colour correction (RGB -> camera) -> inverse white balance (highlight-preserving)
-> RGGB Bayer mosaic.

``add_raw_noise``: ``N(0, shot * x + read)`` per photosite, clipped to the sensor's range.

``process``: white balance -> 16-bit quantisation -> demosaic (Malvar-He-Cutler) -> colour correction
(camera -> RGB) -> gamma 1/2.2 -> smoothstep -> uint8.

Choices that differ from the paper, and why:

* The shot-noise level is a monotonic function of the ISO (:func:`shot_noise_for_iso`,
  log-linear in ISO) rather than drawn uniformly, so the procedural dataset's folder names
  (which carry the ISO, as SIDD's do) agree with the noise in its pixels. The read noise
  follows the paper's relation ``log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26)``.
* The camera colour matrix is drawn as in the paper: a random convex combination of the four
  XYZ->camera matrices the paper lists, times sRGB->XYZ, rows normalised to sum to 1.
* ``process`` re-applies the overall brightness gain ``rgb_gain`` that ``unprocess``
  removed (the paper's ``process`` leaves it out because its network works on raw
  brightness), so that a noise-free round trip returns the clean image.
* Demosaicing is Malvar-He-Cutler (2004, "High-quality linear interpolation for
  demosaicing of Bayer-patterned color images": bilinear plus a gradient correction from
  the other colours, four 5x5 kernels) on the white-balanced mosaic quantised to 16 bits,
  as a phone's ISP would see it. OpenCV's bilinear Bayer demosaic (``cv2.cvtColor``) was
  measured first: on the procedural scenes its noise-free round trip was off by 1.5-3.7
  uint8 levels on average at 256x256 (edges, text, wood grain), Malvar's by 1-2 at the
  same cost (about 1 ms for 256x256); its remaining interpolation error at sharp edges is
  part of the degradation, as it is in a phone photograph.

The round trip without noise reproduces flat and smooth regions to within a level, and
whole procedural scenes to 1-2 levels on average: the residual is demosaicing at edges and
highlights that the inverse gains keep saturated (a phone clips them too).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

# The paper's four XYZ -> camera matrices (from its reference implementation, ``unprocess.py``).
XYZ_TO_CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
    ],
    dtype=np.float64,
)
RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)

GAMMA = 2.2
GAMMA_EPS = 1e-8
# Gray level above which the inverse white-balance gains fade to 1 (the paper's value).
HIGHLIGHT_INFLECTION = 0.9
# log(read) = READ_SLOPE * log(shot) + READ_INTERCEPT + N(0, READ_STD)  (Brooks et al. 2019)
READ_SLOPE, READ_INTERCEPT, READ_STD = 2.18, 1.20, 0.26
# Shot-noise anchors: log(shot) is linear in log(ISO) through these two points (the paper
# draws log(shot) from [log 1e-4, log 0.012]). Tuned on the procedural SIDD validation blocks
# (ISO 100-3200, 256x256 images, 64x64 blocks): mean noisy-input PSNR about 24-24.5 dB, from
# about 29.6 dB at ISO 100 to 17.5 dB at ISO 3200 (SIDD's real blocks average 23.7 dB).
SHOT_ANCHORS: tuple[tuple[float, float], tuple[float, float]] = ((100.0, 5.0e-4), (3200.0, 0.012))
# Sanity bounds for ISOs far outside the anchors (extrapolation is clamped to these).
SHOT_RANGE = (1e-5, 0.05)

_U16 = 65535.0

# Malvar-He-Cutler kernels (/8): green at a red or blue site; the colour whose neighbours
# lie along the row (``_K_ROW``) or the column (``_K_COL``) at a green site; red at a blue
# site and blue at a red site (``_K_DIAG``).
_K_G = np.array(
    [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], np.float32
) / np.float32(8)
_K_ROW = np.array(
    [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]],
    np.float32,
) / np.float32(8)
_K_COL = np.ascontiguousarray(_K_ROW.T)
_K_DIAG = np.array(
    [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]],
    np.float32,
) / np.float32(8)


def shot_noise_for_iso(iso: float) -> float:
    """Shot-noise variance factor for ``iso``: log-linear interpolation through
    :data:`SHOT_ANCHORS`, so doubling the ISO multiplies the shot noise by a fixed factor
    (the sensor's analogue gain doubles), clamped to :data:`SHOT_RANGE`."""
    if not iso > 0:
        raise ValueError(f"ISO must be positive, got {iso!r}")
    (iso0, shot0), (iso1, shot1) = SHOT_ANCHORS
    t = (math.log(iso) - math.log(iso0)) / (math.log(iso1) - math.log(iso0))
    log_shot = math.log(shot0) + t * (math.log(shot1) - math.log(shot0))
    return float(min(max(math.exp(log_shot), SHOT_RANGE[0]), SHOT_RANGE[1]))


def random_rgb_to_cam(rng: np.random.Generator) -> np.ndarray:
    """A plausible sRGB -> camera matrix (3x3, rows sum to 1), drawn as in the paper."""
    weights = rng.uniform(1e-8, 1.0, size=len(XYZ_TO_CAMS))
    xyz_to_cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAMS, axes=1)
    rgb_to_cam = xyz_to_cam @ RGB_TO_XYZ
    return rgb_to_cam / rgb_to_cam.sum(axis=-1, keepdims=True)


@dataclass(frozen=True, eq=False)
class CameraNoise:
    """One simulated capture: the camera's colour matrix, white balance and noise level.

    ``shot`` and ``read`` are the raw-domain variance factors (variance = shot * x + read
    for a photosite of value x in [0, 1]); ``rgb_to_cam`` is the sRGB-linear -> camera
    matrix the image is unprocessed with (its inverse develops it again).
    """

    iso: int
    shot: float
    read: float
    rgb_gain: float
    red_gain: float
    blue_gain: float
    rgb_to_cam: np.ndarray

    @classmethod
    def sample(cls, iso: int, rng: np.random.Generator) -> CameraNoise:
        """Draw a capture at ``iso``: shot noise from the ISO, read noise, gains and colour
        matrix at random as in the paper (rgb gain 1/N(0.8, 0.1), red gain U[1.9, 2.4],
        blue gain U[1.5, 1.9])."""
        shot = shot_noise_for_iso(iso)
        log_read = READ_SLOPE * math.log(shot) + READ_INTERCEPT + float(rng.normal(0.0, READ_STD))
        rgb_gain = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.5, 1.1))
        red_gain = float(rng.uniform(1.9, 2.4))
        blue_gain = float(rng.uniform(1.5, 1.9))
        return cls(
            iso=int(iso),
            shot=shot,
            read=math.exp(log_read),
            rgb_gain=rgb_gain,
            red_gain=red_gain,
            blue_gain=blue_gain,
            rgb_to_cam=random_rgb_to_cam(rng),
        )

    def noiseless(self) -> CameraNoise:
        """The same camera with the noise switched off (round-trip checks, clean references)."""
        return dataclasses.replace(self, shot=0.0, read=0.0)

    @property
    def cam_to_rgb(self) -> np.ndarray:
        """The colour correction matrix (camera -> linear sRGB) the ISP applies."""
        return np.linalg.inv(self.rgb_to_cam)

    @property
    def ccm(self) -> np.ndarray:
        """Alias of :attr:`cam_to_rgb` under the paper's name."""
        return self.cam_to_rgb


# --------------------------------------------------------------------------- tone and gamma


def inverse_smoothstep(y: np.ndarray) -> np.ndarray:
    """Inverse of ``3x^2 - 2x^3`` on [0, 1] (the paper's approximation of a tone curve)."""
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


def smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)


def _srgb8_to_linear_lut() -> np.ndarray:
    """uint8 sRGB -> linear light for all 256 levels (exact, and the same on every machine)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return (np.maximum(inverse_smoothstep(levels), GAMMA_EPS) ** GAMMA).astype(np.float32)


_LINEAR_LUT = _srgb8_to_linear_lut()


def _transform(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``image @ matrix.T`` per pixel; cv2.transform is deterministic and needs no temporaries."""
    return cv2.transform(image, np.ascontiguousarray(matrix, dtype=np.float32))


# --------------------------------------------------------------------------- the pipeline


def _even(image: np.ndarray) -> np.ndarray:
    """Pad to even height and width (the Bayer pattern tiles 2x2) by edge reflection."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REFLECT_101)


def unprocess(clean: np.ndarray, camera: CameraNoise) -> np.ndarray:
    """sRGB uint8 (H, W, 3), H and W even -> RGGB Bayer mosaic (H, W) float32 in [0, 1]."""
    if clean.dtype != np.uint8 or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {clean.dtype} {clean.shape}")
    if clean.shape[0] % 2 or clean.shape[1] % 2:
        raise ValueError(f"unprocess needs even height and width, got {clean.shape[:2]}")
    linear = _LINEAR_LUT[clean]  # inverse tone curve and inverse gamma in one lookup
    cam = _transform(linear, camera.rgb_to_cam)
    gains = np.array([1.0 / camera.red_gain, 1.0, 1.0 / camera.blue_gain], np.float32) / np.float32(
        camera.rgb_gain
    )
    # Highlight-preserving inverse gains: near white the gains fade to 1, so a saturated
    # pixel stays saturated after white balance instead of turning a dim colour.
    gray = cam.mean(axis=-1, keepdims=True)
    mask = np.square(np.maximum(gray - HIGHLIGHT_INFLECTION, 0.0) / (1.0 - HIGHLIGHT_INFLECTION))
    safe = np.maximum(mask + (1.0 - mask) * gains, gains)
    raw = cam * safe
    bayer = np.empty(clean.shape[:2], np.float32)
    bayer[0::2, 0::2] = raw[0::2, 0::2, 0]
    bayer[0::2, 1::2] = raw[0::2, 1::2, 1]
    bayer[1::2, 0::2] = raw[1::2, 0::2, 1]
    bayer[1::2, 1::2] = raw[1::2, 1::2, 2]
    return np.clip(bayer, 0.0, 1.0, out=bayer)


def add_raw_noise(bayer: np.ndarray, camera: CameraNoise, rng: np.random.Generator) -> np.ndarray:
    """Heteroscedastic Gaussian noise ``N(0, shot * x + read)``, clipped to the sensor's [0, 1]."""
    if camera.shot == 0.0 and camera.read == 0.0:
        return bayer.copy()
    std = np.sqrt(np.float32(camera.shot) * bayer + np.float32(camera.read))
    noisy = bayer + std * rng.standard_normal(bayer.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0, out=noisy)


def demosaic(mosaic: np.ndarray) -> np.ndarray:
    """RGGB mosaic (H, W) float32 -> (H, W, 3) float32 by Malvar-He-Cutler interpolation.

    Borders reflect about the edge pixel (``BORDER_REFLECT_101``), which maps every site to
    one of the same colour, so the Bayer pattern stays consistent up to the edge.
    """

    def conv(kernel: np.ndarray) -> np.ndarray:
        return cv2.filter2D(mosaic, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT_101)

    at_rb, along_row, along_col, diagonal = conv(_K_G), conv(_K_ROW), conv(_K_COL), conv(_K_DIAG)
    out = np.empty((*mosaic.shape, 3), np.float32)
    red, green, blue = out[..., 0], out[..., 1], out[..., 2]
    red[0::2, 0::2] = mosaic[0::2, 0::2]
    red[0::2, 1::2] = along_row[0::2, 1::2]  # green site in a red row: red left and right
    red[1::2, 0::2] = along_col[1::2, 0::2]  # green site in a blue row: red above and below
    red[1::2, 1::2] = diagonal[1::2, 1::2]
    green[:] = mosaic
    green[0::2, 0::2] = at_rb[0::2, 0::2]
    green[1::2, 1::2] = at_rb[1::2, 1::2]
    blue[1::2, 1::2] = mosaic[1::2, 1::2]
    blue[1::2, 0::2] = along_row[1::2, 0::2]
    blue[0::2, 1::2] = along_col[0::2, 1::2]
    blue[0::2, 0::2] = diagonal[0::2, 0::2]
    return np.clip(out, 0.0, 1.0, out=out)


def process(bayer: np.ndarray, camera: CameraNoise) -> np.ndarray:
    """RGGB mosaic (H, W) float32 -> sRGB uint8 (H, W, 3): the inverse of :func:`unprocess`."""
    wb = bayer.copy()
    wb[0::2, 0::2] *= camera.red_gain * camera.rgb_gain
    wb[0::2, 1::2] *= camera.rgb_gain
    wb[1::2, 0::2] *= camera.rgb_gain
    wb[1::2, 1::2] *= camera.blue_gain * camera.rgb_gain
    mosaic16 = np.rint(np.clip(wb, 0.0, 1.0) * _U16)  # the ISP's 16-bit raw
    mosaic16 *= np.float32(1.0 / _U16)
    rgb = _transform(demosaic(mosaic16), camera.cam_to_rgb)
    np.clip(rgb, GAMMA_EPS, 1.0, out=rgb)
    srgb = smoothstep(np.power(rgb, np.float32(1.0 / GAMMA)))
    return np.rint(np.clip(srgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def simulate_capture(clean: np.ndarray, camera: CameraNoise, rng: np.random.Generator) -> np.ndarray:
    """``clean`` (H, W, 3) uint8 RGB as ``camera`` would have photographed it (any H, W)."""
    h, w = clean.shape[:2]
    bayer = unprocess(_even(clean), camera)
    return process(add_raw_noise(bayer, camera, rng), camera)[:h, :w]


def add_camera_noise(
    clean: np.ndarray, iso: int, rng: np.random.Generator, *, camera: CameraNoise | None = None
) -> np.ndarray:
    """The noisy photograph of ``clean`` (H, W, 3) uint8 RGB at ``iso``: a capture drawn with
    :meth:`CameraNoise.sample` (or the given ``camera``) run through the raw pipeline."""
    camera = CameraNoise.sample(iso, rng) if camera is None else camera
    return simulate_capture(clean, camera, rng)
