"""Procedural photographs of indoor scenes of objects: the clean side of the SIDD stand-in.

SIDD's scenes are objects on tables and shelves photographed indoors. A denoiser trained on
them has to keep what such photographs contain while removing noise, so the clean images
carry each of those statistics on purpose:

* flat regions and smooth gradients: walls, table tops, smooth illumination fields, shaded
  cylinders and balls (where noise is most visible and over-smoothing costs nothing);
* fine texture: wood grain, fabric weave, paper and orange-peel grain (where a denoiser that
  smooths too much loses detail that looks like noise);
* sharp edges: boxes, cards, tiles, table edges (where blurring shows);
* small high-contrast detail: text-like strokes on labels and pages, thin cables, fine
  stripes, checkerboards and dot grids, small dots;
* dark areas (dark objects, cast shadows, low-light instances) and saturated areas (colour
  charts, saturated objects, specular highlights that clip to white).

A *scene* is a canvas slightly larger than the image, drawn from the scene's own random
stream; an *instance* (one SIDD folder) photographs it with its own framing (crop offset),
light level (the folder's L/N/H), light gradient and colour tint. Instances of one scene
share content, as SIDD's do, and a scene's canvas depends only on its seed, so any worker
process can redraw it.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX)
# Multiplicative light level per SIDD brightness code (low, normal, high light).
BRIGHTNESS_GAIN = {"L": (0.38, 0.58), "N": (0.68, 0.88), "H": (0.9, 1.08)}
# Residual colour cast per illuminant (kelvin) after the camera's white balance.
ILLUMINANT_TINT = {3200: (1.05, 1.0, 0.92), 4400: (1.02, 1.0, 0.97), 5500: (1.0, 1.0, 1.0)}
CANVAS_MARGIN = 0.08  # extra canvas per side, as a fraction of the image's larger side


# --------------------------------------------------------------------------- small helpers


def _fp(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _color(rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A colour of a kind: saturated, muted, dark, light (or one of them at random)."""
    if kind is None:
        kind = ("saturated", "muted", "dark", "light")[int(rng.choice(4, p=[0.4, 0.35, 0.1, 0.15]))]
    h = float(rng.random())
    if kind == "saturated":
        return _hsv(h, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
    if kind == "muted":
        return _hsv(h, rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.85))
    if kind == "dark":
        return _hsv(h, rng.uniform(0.0, 0.5), rng.uniform(0.02, 0.12))
    return _hsv(h, rng.uniform(0.0, 0.12), rng.uniform(0.8, 0.97))


def _mask(shape: tuple[int, int], draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """Coverage in [0, 1] of whatever ``draw`` paints (with value 255, anti-aliased) into an
    8-bit canvas: OpenCV anti-aliases only 8-bit images, the scene is float."""
    m = np.zeros(shape, np.uint8)
    draw(m)
    return m.astype(np.float32) * np.float32(1.0 / 255.0)


def _smooth(rng: np.random.Generator, w: int, h: int, cells: int, amp: float) -> np.ndarray:
    """A smooth random field ``1 + amp * U(-1, 1)`` interpolated from a coarse grid."""
    gh = max(2, round(cells * h / max(w, h)) + 1)
    gw = max(2, round(cells * w / max(w, h)) + 1)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return 1.0 + np.float32(amp) * field


def _grain(rng: np.random.Generator, w: int, h: int, amp: float, sigma: float = 0.8) -> np.ndarray:
    """Fine isotropic texture ``1 + amp * blurred noise`` (unit variance before scaling)."""
    noise = rng.standard_normal((h, w), dtype=np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    blurred *= np.float32(amp / max(float(blurred.std()), 1e-6))
    return 1.0 + blurred


def _words(rng: np.random.Generator, n_chars: int) -> str:
    out = []
    while sum(len(w) + 1 for w in out) < n_chars:
        out.append("".join(rng.choice(list(_CHARS), int(rng.integers(2, 9)))))
    return " ".join(out)


def _text_mask(rng: np.random.Generator, w: int, h: int, scale: float, thickness: int = 1) -> np.ndarray:
    """Lines of random text-like strokes filling a ``w`` x ``h`` area (coverage mask)."""
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    (_, th), _ = cv2.getTextSize("Ag", font, scale, thickness)
    line = max(th + 3, int(th * rng.uniform(1.5, 2.0)))
    chars_per_line = max(2, int(w / max(1.0, th * 0.75)))
    m = np.zeros((h, w), np.uint8)
    y = line
    while y < h - 2:
        text = _words(rng, int(chars_per_line * rng.uniform(0.5, 1.2)))
        cv2.putText(m, text, (int(rng.integers(1, 4)), y), font, scale, 255, thickness, cv2.LINE_AA)
        y += line
    return m.astype(np.float32) * np.float32(1.0 / 255.0)


def _composite(img: np.ndarray, x0: int, y0: int, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """Paint ``rgb`` with coverage ``alpha`` onto ``img`` at (x0, y0), clipped to the image."""
    h, w = alpha.shape
    H, W = img.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
    region = img[cy0:cy1, cx0:cx1]
    region += a * (rgb[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] - region)


def _cast_shadow(
    img: np.ndarray,
    x0: int,
    y0: int,
    alpha: np.ndarray,
    offset: tuple[float, float],
    soft: float,
    dark: float,
) -> None:
    """Darken the image under ``alpha`` moved by ``offset`` and blurred by ``soft`` pixels."""
    pad = int(3 * soft + max(abs(offset[0]), abs(offset[1]))) + 2
    h, w = alpha.shape
    big = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    m = np.float32([[1, 0, pad + offset[0]], [0, 1, pad + offset[1]]])
    cv2.warpAffine(alpha, m, (big.shape[1], big.shape[0]), dst=big, flags=cv2.INTER_LINEAR)
    big = cv2.GaussianBlur(big, (0, 0), soft)
    factor = 1.0 - np.float32(dark) * big
    H, W = img.shape[:2]
    X0, Y0 = x0 - pad, y0 - pad
    cx0, cy0, cx1, cy1 = max(X0, 0), max(Y0, 0), min(X0 + big.shape[1], W), min(Y0 + big.shape[0], H)
    if cx0 < cx1 and cy0 < cy1:
        img[cy0:cy1, cx0:cx1] *= factor[cy0 - Y0 : cy1 - Y0, cx0 - X0 : cx1 - X0, None]


def _solid(h: int, w: int, color: np.ndarray) -> np.ndarray:
    return np.broadcast_to(color, (h, w, 3)).astype(np.float32)


# --------------------------------------------------------------------------- surfaces


def _surface(rng: np.random.Generator, w: int, h: int, where: str) -> np.ndarray:
    """A wall or table surface: plain, wallpaper stripes, tiles, wood grain or fabric."""
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    if where == "wall":
        kind = ("plain", "stripes", "tiles")[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
        base = _color(rng, "muted" if rng.random() < 0.7 else "light")
    else:
        kind = ("wood", "fabric", "plain")[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
        base = (
            _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.75))
            if kind == "wood"
            else _color(rng)
        )
    lum = _smooth(rng, w, h, 3, 0.08)
    if kind == "stripes":
        period = rng.uniform(8, 40)
        lum = lum * (
            1.0
            - np.float32(rng.uniform(0.05, 0.15)) * (0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * xx / period)))
        )
    elif kind == "tiles":
        tile = int(rng.integers(16, 64))
        grout = np.zeros((h, w), np.uint8)
        for x in range(int(rng.integers(tile)), w, tile):
            grout[:, x : x + 1 + int(rng.integers(2))] = 255
        for y in range(int(rng.integers(tile)), h, tile):
            grout[y : y + 1 + int(rng.integers(2)), :] = 255
        lum = lum * (1.0 - np.float32(rng.uniform(0.2, 0.45)) * grout.astype(np.float32) / 255.0)
    elif kind == "wood":
        period = rng.uniform(4, 14)
        warp = (_smooth(rng, w, h, 4, 1.0) - 1.0) * np.float32(rng.uniform(1.5, 4.0))
        rings = np.sin(2 * np.pi * (yy / period + warp))
        streak = rng.standard_normal((h, w), dtype=np.float32)
        streak = cv2.GaussianBlur(streak, (0, 0), sigmaX=rng.uniform(4, 10), sigmaY=0.6)
        streak /= max(float(streak.std()), 1e-6)
        lum = lum * (1.0 + np.float32(rng.uniform(0.06, 0.14)) * rings + np.float32(0.05) * streak)
        plank = int(rng.integers(max(20, h // 4), max(21, h)))
        for y in range(int(rng.integers(plank)), h, plank):
            lum[y : y + 1] *= 0.55
    elif kind == "fabric":
        period = rng.uniform(3.0, 6.0)
        weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        lum = lum * (1.0 + np.float32(rng.uniform(0.04, 0.1)) * weave) * _grain(rng, w, h, 0.04, 0.7)
    else:
        lum = lum * _grain(rng, w, h, float(rng.uniform(0.005, 0.02)), 1.0)
    return lum[..., None] * base


# --------------------------------------------------------------------------- objects

# Every object function returns (x0, y0, rgb patch, coverage) for an object standing with its
# bottom centre at (cx, by), about ``s`` pixels across, lit from ``light`` (-1 left .. 1 right).
Patch = tuple[int, int, np.ndarray, np.ndarray]


def _label(rng: np.random.Generator, rgb: np.ndarray, x0: int, y0: int, w: int, h: int) -> None:
    """Print a label on a face: text strokes, stripes or a logo disc, in a contrasting colour."""
    if w < 8 or h < 8:
        return
    region = rgb[y0 : y0 + h, x0 : x0 + w]
    paper = _color(rng, "light" if rng.random() < 0.6 else "saturated")
    ink = _color(rng, "dark") if float(paper.mean()) > 0.5 else _color(rng, "light")
    choice = rng.random()
    region[:] = paper
    if choice < 0.6:
        m = _text_mask(rng, w, h, float(rng.uniform(0.25, 0.45)))
    elif choice < 0.8:
        period = rng.uniform(3, 8)
        m = (np.sin(2 * np.pi * np.arange(w, dtype=np.float32) / period)[None, :] > 0).astype(np.float32)
        m = np.broadcast_to(m, (h, w))
    else:
        r = max(2, min(w, h) // 3)
        m = _mask((h, w), lambda c: cv2.circle(c, (w // 2, h // 2), r, 255, -1, cv2.LINE_AA))
    region += m[..., None] * (ink - region)


def _box(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    bw, bh = s, s * rng.uniform(0.45, 1.3)
    dx = s * rng.uniform(0.1, 0.35) * (-1 if light > 0 else 1)
    dy = s * rng.uniform(0.1, 0.3)
    w, h = int(math.ceil(bw + abs(dx))) + 2, int(math.ceil(bh + dy)) + 2
    ox = abs(dx) if dx < 0 else 0.0
    front = np.array([[ox, dy], [ox + bw, dy], [ox + bw, dy + bh], [ox, dy + bh]])
    top = np.array([[ox, dy], [ox + bw, dy], [ox + bw + dx, 0], [ox + dx, 0]])
    side_x = ox + bw if dx > 0 else ox
    side = np.array([[side_x, dy], [side_x + dx, 0], [side_x + dx, bh], [side_x, dy + bh]])
    base = _color(rng)
    # Faces are painted back to front over the side face's colour (not over black), so the
    # anti-aliased silhouette edge is not darkened when the patch is composited.
    rgb = _solid(h, w, np.clip(base * 0.62, 0, 1))
    alpha = np.zeros((h, w), np.float32)
    for poly, shade, is_front in ((side, 0.62, False), (top, 1.18, False), (front, 1.0, True)):
        cover = _mask((h, w), lambda c, p=poly: cv2.fillConvexPoly(c, _fp(p), 255, cv2.LINE_AA, _SHIFT))
        face = _solid(h, w, np.clip(base * shade, 0, 1))
        if is_front:
            face *= np.linspace(1.04, 0.92, h, dtype=np.float32)[:, None, None]
            if rng.random() < 0.65:
                lw, lh = int(bw * rng.uniform(0.4, 0.85)), int(bh * rng.uniform(0.25, 0.6))
                _label(rng, face, int(ox + (bw - lw) / 2), int(dy + (bh - lh) / 2), lw, lh)
        rgb += cover[..., None] * (face - rgb)
        alpha = np.maximum(alpha, cover)
    rgb *= _grain(rng, w, h, float(rng.uniform(0.0, 0.03)), 0.8)[..., None]
    return int(round(cx - w / 2)), int(round(by - h)), rgb, alpha


def _cylinder(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    cw, ch = s * rng.uniform(0.45, 0.8), s * rng.uniform(0.6, 1.4)
    ry = cw * rng.uniform(0.1, 0.22)
    w, h = int(math.ceil(cw)) + 2, int(math.ceil(ch + 2 * ry)) + 2
    r = cw / 2
    ccx = w / 2
    body = _mask(
        (h, w),
        lambda c: (
            cv2.rectangle(
                c, _fp([ccx - r, ry]).tolist(), _fp([ccx + r, ry + ch]).tolist(), 255, -1, cv2.LINE_AA, _SHIFT
            ),
            cv2.ellipse(
                c,
                _fp([ccx, ry + ch]).tolist(),
                _fp([r, ry]).tolist(),
                0,
                0,
                180,
                255,
                -1,
                cv2.LINE_AA,
                _SHIFT,
            ),
        ),
    )
    top = _mask(
        (h, w),
        lambda c: cv2.ellipse(
            c, _fp([ccx, ry]).tolist(), _fp([r, ry]).tolist(), 0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT
        ),
    )
    t = np.clip((np.arange(w, dtype=np.float32) + 0.5 - ccx) / r, -1, 1)
    profile = 0.3 + 0.7 * np.sqrt(1 - t * t) * (1 + 0.35 * light * t)
    base = _color(rng)
    rgb = profile[None, :, None] * _solid(h, w, base)
    if rng.random() < 0.45:  # printed bands, as on a can or a mug
        band = _color(rng)
        y = ry + ch * rng.uniform(0.2, 0.5)
        bh = ch * rng.uniform(0.15, 0.35)
        rows = slice(int(y), int(y + bh))
        rgb[rows] = profile[None, :, None] * band
        if rng.random() < 0.6:
            strokes = _text_mask(rng, w, max(1, int(bh)), float(rng.uniform(0.25, 0.4)))
            ink = _color(rng, "dark" if float(band.mean()) > 0.45 else "light")
            seg = rgb[rows][: strokes.shape[0]]
            seg += strokes[: seg.shape[0], :, None] * (profile[None, :, None] * ink - seg)
    if rng.random() < 0.7:  # glossy highlight
        gloss = np.exp(-(((t - 0.45 * light) / 0.09) ** 2)) * np.float32(rng.uniform(0.3, 0.8))
        rgb += gloss[None, :, None] * (1.0 - rgb)
    top_rgb = _solid(h, w, np.clip(base * (0.55 if rng.random() < 0.5 else 1.1), 0, 1))
    rgb += top[..., None] * (top_rgb - rgb)
    alpha = np.maximum(body, top)
    return int(round(cx - w / 2)), int(round(by - h + ry)), rgb.astype(np.float32), alpha


def _ball(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    r = s * rng.uniform(0.2, 0.4)
    size = int(math.ceil(2 * r)) + 3
    c0 = size / 2
    alpha = _mask(
        (size, size),
        lambda c: cv2.circle(c, _fp([c0, c0]).tolist(), int(r * _ONE), 255, -1, cv2.LINE_AA, _SHIFT),
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    nx, ny = (xx + 0.5 - c0) / r, (yy + 0.5 - c0) / r
    nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0, 1))
    lvec = np.array([0.6 * light, -0.5, 0.7], np.float32)
    lvec /= np.linalg.norm(lvec)
    lambert = np.clip(nx * lvec[0] + ny * lvec[1] + nz * lvec[2], 0, 1)
    base = _color(rng, "saturated" if rng.random() < 0.7 else None)
    rgb = (0.18 + 0.82 * lambert)[..., None] * base
    rgb *= _grain(rng, size, size, float(rng.uniform(0.0, 0.05)), 0.7)[..., None]
    spec = np.clip(2 * lambert * nz - lvec[2], 0, 1) ** rng.uniform(20, 60) * rng.uniform(0.5, 1.0)
    rgb += spec[..., None] * (1.0 - rgb)
    return int(round(cx - size / 2)), int(round(by - size)), rgb.astype(np.float32), alpha


def _rotated(rgb: np.ndarray, alpha: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a patch about its centre, growing it to fit (bilinear: a camera would blur too)."""
    h, w = alpha.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos) + 2, int(h * cos + w * sin) + 2
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    out_rgb = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out_alpha = cv2.warpAffine(alpha, m, (nw, nh), flags=cv2.INTER_LINEAR)
    return out_rgb, out_alpha


def _paper(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    """A page, card or book cover with lines of text: dense high-contrast strokes."""
    w, h = int(s * rng.uniform(0.7, 1.3)) + 4, int(s * rng.uniform(0.5, 1.1)) + 4
    cover = rng.random() < 0.35
    paper = _color(rng, "saturated" if cover else "light")
    rgb = _solid(h, w, paper) * _grain(rng, w, h, float(rng.uniform(0.005, 0.025)), 0.8)[..., None]
    ink = _color(rng, "light" if cover and float(paper.mean()) < 0.5 else "dark")
    margin = max(2, int(min(w, h) * 0.08))
    strokes = _text_mask(
        rng,
        w - 2 * margin,
        h - 2 * margin,
        float(rng.uniform(0.25, 0.5) if not cover else rng.uniform(0.5, 0.9)),
        1 if not cover else 2,
    )
    inner = rgb[margin : h - margin, margin : w - margin]
    inner += strokes[..., None] * (ink - inner)
    if rng.random() < 0.4:  # a coloured heading bar
        bar = max(2, int(h * 0.1))
        rgb[margin : margin + bar, margin : w - margin] = _color(rng, "saturated")
    alpha = np.ones((h, w), np.float32)
    rgb, alpha = _rotated(rgb, alpha, float(rng.uniform(-25, 25)))
    return int(round(cx - alpha.shape[1] / 2)), int(round(by - alpha.shape[0])), rgb, alpha


def _chart(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    """A colour chart: saturated patches and a grey ramp on a black frame."""
    rows, cols = (4, 6) if rng.random() < 0.6 else (3, 4)
    cell = max(4, int(s * rng.uniform(0.9, 1.5) / cols))
    gap = max(1, cell // 6)
    w, h = cols * cell + gap, rows * cell + gap
    rgb = _solid(h, w, np.float32([0.03, 0.03, 0.03]))
    hues = rng.permutation(12) / 12.0
    for i in range(rows):
        for j in range(cols):
            if i == rows - 1:
                color = np.full(3, 0.96 * (1 - j / max(1, cols - 1)) + 0.03, np.float32)
            else:
                color = _hsv(float(hues[(i * cols + j) % 12]), rng.uniform(0.7, 1.0), rng.uniform(0.55, 1.0))
            rgb[i * cell + gap : (i + 1) * cell, j * cell + gap : (j + 1) * cell] = color
    return int(round(cx - w / 2)), int(round(by - h)), rgb, np.ones((h, w), np.float32)


def _pattern(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    """A printed card with fine detail: checkerboard, stripes, dot grid or concentric rings."""
    w, h = int(s * rng.uniform(0.5, 1.0)) + 2, int(s * rng.uniform(0.5, 1.0)) + 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:
        cell = int(rng.integers(2, 7))
        m = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 1:
        period = rng.uniform(2.5, 7)
        theta = rng.choice([0.0, np.pi / 4, np.pi / 2, rng.uniform(0, np.pi)])
        m = (np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0).astype(np.float32)
    elif kind == 2:
        step = int(rng.integers(4, 9))
        radius = float(rng.uniform(0.8, step / 3))
        m = (((xx % step - step / 2) ** 2 + (yy % step - step / 2) ** 2) <= radius**2).astype(np.float32)
    else:
        period = rng.uniform(3, 8)
        m = (np.sin(2 * np.pi * np.hypot(xx - w / 2, yy - h / 2) / period) > 0).astype(np.float32)
    bg, fg = (
        (_color(rng, "light"), _color(rng, "dark"))
        if rng.random() < 0.7
        else (_color(rng, "saturated"), _color(rng, "light"))
    )
    rgb = bg + m[..., None] * (fg - bg)
    return int(round(cx - w / 2)), int(round(by - h)), rgb.astype(np.float32), np.ones((h, w), np.float32)


def _dark_object(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    """A near-black object (phone, remote, pouch) with small buttons and a faint sheen."""
    w, h = int(s * rng.uniform(0.35, 0.9)) + 2, int(s * rng.uniform(0.5, 1.2)) + 2
    rad = max(1, int(min(w, h) * 0.15))
    alpha = _mask(
        (h, w),
        lambda c: (
            cv2.rectangle(c, (rad, 0), (w - 1 - rad, h - 1), 255, -1, cv2.LINE_AA),
            cv2.rectangle(c, (0, rad), (w - 1, h - 1 - rad), 255, -1, cv2.LINE_AA),
            *[
                cv2.circle(c, p, rad, 255, -1, cv2.LINE_AA)
                for p in ((rad, rad), (w - 1 - rad, rad), (rad, h - 1 - rad), (w - 1 - rad, h - 1 - rad))
            ],
        ),
    )
    base = _color(rng, "dark")
    sheen = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :] * np.float32(rng.uniform(0.0, 0.06))
    rgb = _solid(h, w, base) + sheen[..., None]
    for _ in range(int(rng.integers(0, 8))):
        p = (int(rng.integers(w)), int(rng.integers(h)))
        dot = _mask((h, w), lambda c, p=p: cv2.circle(c, p, int(rng.integers(1, 3)), 255, -1, cv2.LINE_AA))
        rgb += dot[..., None] * (_color(rng) - rgb)
    return int(round(cx - w / 2)), int(round(by - h)), rgb, alpha


def _blob(rng: np.random.Generator, cx: float, by: float, s: float, light: float) -> Patch:
    """An organic shape (fruit, toy, pouch) with radial shading and peel-like texture."""
    r0 = s * rng.uniform(0.2, 0.4)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = r0 * (1 + sum(rng.uniform(0, 0.12) * np.sin(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5)))
    size = int(math.ceil(2 * radius.max())) + 4
    c0 = size / 2
    pts = np.stack([c0 + radius * np.cos(theta), c0 + radius * np.sin(theta) * rng.uniform(0.7, 1.0)], 1)
    alpha = _mask((size, size), lambda c: cv2.fillPoly(c, [_fp(pts)], 255, cv2.LINE_AA, _SHIFT))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.hypot(xx - c0 - 0.3 * light * r0, yy - c0 + 0.3 * r0) / (r0 * 1.3)
    shade = np.clip(1.05 - 0.6 * d * d, 0.25, 1.05)
    base = _color(rng, "saturated" if rng.random() < 0.6 else None)
    rgb = shade[..., None] * base * _grain(rng, size, size, float(rng.uniform(0.02, 0.07)), 0.6)[..., None]
    if rng.random() < 0.5:  # a stem or a seam: a thin dark stroke
        p0 = (int(c0), int(c0 - radius[0] * 0.9))
        cv2.line(
            rgb, p0, (int(c0 + rng.uniform(-3, 3)), int(p0[1] - rng.uniform(2, 6))), (0.08, 0.06, 0.03), 1
        )
    return int(round(cx - size / 2)), int(round(by - size)), rgb.astype(np.float32), alpha


_OBJECTS = (_box, _cylinder, _ball, _paper, _chart, _pattern, _dark_object, _blob)
_OBJECT_P = (0.18, 0.15, 0.1, 0.16, 0.08, 0.1, 0.1, 0.13)


def _cables_and_specks(rng: np.random.Generator, img: np.ndarray) -> None:
    """Thin curves (cables, threads) and small dots (screws, crumbs): the smallest detail."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        pts = np.cumsum(rng.normal(0, min(w, h) * 0.08, (8, 2)), axis=0) + rng.uniform([0, 0], [w, h])
        thick = int(rng.integers(1, 3))
        cover = _mask(
            (h, w), lambda c, p=pts, t=thick: cv2.polylines(c, [_fp(p)], False, 255, t, cv2.LINE_AA, _SHIFT)
        )
        color = _color(rng, "dark" if rng.random() < 0.6 else "saturated")
        img += cover[..., None] * (color - img)
    for _ in range(int(rng.integers(0, 12))):
        p = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        rad = float(rng.uniform(0.6, 2.0))
        cover = _mask(
            (h, w),
            lambda c, p=p, r=rad: cv2.circle(c, _fp(p).tolist(), int(r * _ONE), 255, -1, cv2.LINE_AA, _SHIFT),
        )
        color = _color(rng, "dark" if rng.random() < 0.5 else "light")
        img += cover[..., None] * (color - img)


# --------------------------------------------------------------------------- scenes


def canvas_size(width: int, height: int) -> tuple[int, int]:
    """Canvas (width, height) a scene is drawn on for ``width`` x ``height`` instances."""
    margin = int(round(CANVAS_MARGIN * max(width, height)))
    return width + 2 * margin, height + 2 * margin


def render_scene_canvas(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A scene drawn on a ``width`` x ``height`` float32 RGB canvas in [0, 1] (may exceed 1 in
    highlights before the instance's exposure clips them)."""
    w, h = width, height
    top_down = rng.random() < 0.3
    horizon = 0 if top_down else int(h * rng.uniform(0.2, 0.55))
    img = np.empty((h, w, 3), np.float32)
    if horizon:
        img[:horizon] = _surface(rng, w, horizon, "wall")
        edge = _color(rng, "dark" if rng.random() < 0.5 else "light")
        img[horizon:] = _surface(rng, w, h - horizon, "table")
        img[horizon : horizon + int(rng.integers(1, 4))] = edge
    else:
        img[:] = _surface(rng, w, h, "table")
    light = float(rng.uniform(-1, 1))
    shadow_dir = (-light * 0.12, 0.08 if not top_down else 0.1)
    n = int(rng.integers(5, 12))
    unit = min(w, h)
    placed = []
    for _ in range(n):
        by = (
            float(rng.uniform(horizon + 0.15 * (h - horizon), h * 1.05))
            if horizon
            else float(rng.uniform(0.15 * h, 1.1 * h))
        )
        depth = (by - horizon) / max(1.0, h - horizon)
        s = unit * float(rng.uniform(0.12, 0.32)) * (0.65 + 0.6 * depth)
        placed.append((by, float(rng.uniform(-0.05 * w, 1.05 * w)), s))
    for by, cx, s in sorted(placed):  # back to front
        kind = int(rng.choice(len(_OBJECTS), p=_OBJECT_P))
        x0, y0, rgb, alpha = _OBJECTS[kind](rng, cx, by, s, light)
        _cast_shadow(
            img,
            x0,
            y0,
            alpha,
            (shadow_dir[0] * s, shadow_dir[1] * s),
            1.0 + 0.06 * s,
            float(rng.uniform(0.25, 0.55)),
        )
        _composite(img, x0, y0, rgb, alpha)
    _cables_and_specks(rng, img)
    img *= _smooth(rng, w, h, 2, 0.12)[..., None]
    return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.45, 0.8)))


def render_instance(
    scene_rng: np.random.Generator,
    instance_rng: np.random.Generator,
    width: int,
    height: int,
    brightness: str = "N",
    illuminant: int = 5500,
) -> np.ndarray:
    """One photograph (``height`` x ``width`` x 3 uint8 RGB) of the scene drawn from
    ``scene_rng``: framed, lit and tinted from ``instance_rng`` and the folder's brightness
    code (L/N/H) and illuminant (kelvin)."""
    cw, ch = canvas_size(width, height)
    canvas = render_scene_canvas(scene_rng, cw, ch)
    dx = int(instance_rng.integers(0, cw - width + 1))
    dy = int(instance_rng.integers(0, ch - height + 1))
    img = canvas[dy : dy + height, dx : dx + width].copy()
    lo, hi = BRIGHTNESS_GAIN[brightness]
    theta = instance_rng.uniform(0, 2 * np.pi)
    slope = np.float32(instance_rng.uniform(0.0, 0.35))
    xx = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    yy = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    light = np.float32(instance_rng.uniform(lo, hi)) * (
        1.0 + slope * (xx * np.cos(theta) + yy * np.sin(theta))
    )
    tint = np.asarray(ILLUMINANT_TINT.get(illuminant, (1.0, 1.0, 1.0)), np.float32)
    tint = tint * instance_rng.uniform(0.98, 1.02, 3).astype(np.float32)
    img *= light[..., None] * tint
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
