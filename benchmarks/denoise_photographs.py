"""Does the SIDD denoiser help on real photographs, not only on the generated scenes it trained on?

The photographs are the RGB ones scikit-image ships (astronaut, chelsea, coffee, motorcycle,
rocket); each is degraded by the same camera noise model as the generated data (Brooks et al.
2019, ISO-dependent shot and read noise on a raw mosaic) and restored by the trained model.
OpenCV's non-local means (``fastNlMeansDenoisingColored``, h chosen per ISO from a small grid
on the first photograph) is printed beside it as a classical reference.

    python -m benchmarks.denoise_photographs [--weights artifacts/sidd/model/model.pt] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import skimage.io
import torch

from ops.deploy.runtime import RESTORER, TorchPredictor
from ops.restoration.camera import add_camera_noise
from ops.restoration.evaluate import restore
from ops.restoration.pairs import SSIM_SETTINGS, psnr, ssim
from ops.restoration.training import load_restorer

# Read from the files in the package itself: some skimage.data loaders fetch from the internet.
PHOTOGRAPHS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
ISOS = (400, 1600, 3200)
NLM_STRENGTHS = (3, 5, 7, 10, 14, 18)


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` crop (the photographs are 300-800 px; training crops are 64 px)."""
    height, width = image.shape[:2]
    size = min(size, height, width)
    y, x = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[y : y + size, x : x + size, :3])


def _nlm(noisy: np.ndarray, strength: int) -> np.ndarray:
    bgr = cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(
        cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21), cv2.COLOR_BGR2RGB
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("artifacts/sidd/model/model.pt"))
    parser.add_argument("--size", type=int, default=256, help="centre crop of each photograph (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_restorer(args.weights).model
    predictor = TorchPredictor(model, contract=RESTORER)
    data_dir = Path(skimage.data.__file__).parent
    clean = {name: _crop(skimage.io.imread(data_dir / name), args.size) for name in PHOTOGRAPHS}
    rng = np.random.default_rng(args.seed)
    noisy = {(name, iso): add_camera_noise(image, iso, rng) for iso in ISOS for name, image in clean.items()}
    best_h = {
        iso: max(
            NLM_STRENGTHS,
            key=lambda h, iso=iso: psnr(_nlm(noisy[PHOTOGRAPHS[0], iso], h), clean[PHOTOGRAPHS[0]]),
        )
        for iso in ISOS
    }
    print(f"{args.weights}: centre {args.size}x{args.size} crops, camera noise model, PSNR dB / SSIM")
    print(f"({SSIM_SETTINGS})")
    header = f"{'photograph':<20} {'ISO':>5}  {'noisy':>14}  {'denoiser':>14}  {'gain':>6}  {'NL-means':>14}"
    print(header)
    print("-" * len(header))
    gains = []
    for iso in ISOS:
        for name in PHOTOGRAPHS:
            before, reference = noisy[name, iso], clean[name]
            after = restore(predictor, before[None])[0]
            classical = _nlm(before, best_h[iso])
            gain = psnr(after, reference) - psnr(before, reference)
            gains.append(gain)
            print(
                f"{name:<20} {iso:>5}  {psnr(before, reference):6.2f} / {ssim(before, reference):.3f}  "
                f"{psnr(after, reference):6.2f} / {ssim(after, reference):.3f}  {gain:+6.2f}  "
                f"{psnr(classical, reference):6.2f} / {ssim(classical, reference):.3f}"
            )
    print(
        f"mean PSNR gain of the denoiser on {len(gains)} degraded photographs: {np.mean(gains):+.2f} dB "
        f"(min {min(gains):+.2f}); NL-means strength per ISO {best_h}"
    )


if __name__ == "__main__":
    main()
