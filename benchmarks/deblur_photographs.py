"""Does the GOPRO deblurrer help on real photographs, not only on the generated scenes it trained on?

The photographs are the RGB ones scikit-image ships (astronaut, chelsea, coffee, motorcycle,
rocket). Each is filmed by the generator's hand-held camera (pan, shake, roll, zoom at 240
fps; ``ops.restoration.gopro.film_still``) and every blurred frame is the average of 7, 10
or 13 sharp frames, GOPRO's recipe, so the blur is real camera motion over a real scene. The
trained model restores them; unsharp masking (the best amount of a small grid, chosen on the
first photograph) is printed beside it as a classical blind reference.

    python -m benchmarks.deblur_photographs [--weights artifacts/gopro/model/model.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import skimage.io
import torch

from ops.config import load_params
from ops.deploy.runtime import RESTORER, TorchPredictor
from ops.restoration.evaluate import restore
from ops.restoration.gopro import film_still
from ops.restoration.pairs import SSIM_SETTINGS, psnr, ssim
from ops.restoration.training import load_restorer

# Read from the files in the package itself: some skimage.data loaders fetch from the internet.
PHOTOGRAPHS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
BLUR_FRAMES = (7, 10, 13)
UNSHARP_AMOUNTS = (0.25, 0.5, 1.0, 1.5, 2.0)


def _unsharp(image: np.ndarray, amount: float) -> np.ndarray:
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2.0)
    return np.clip(np.rint(image + amount * (image - blurred)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("artifacts/gopro/model/model.pt"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="camera settings")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = TorchPredictor(load_restorer(args.weights).model, contract=RESTORER)
    camera = load_params(args.params).gopro.dataset.generator.model_copy(
        update={"image_width": args.width, "image_height": args.height}
    )
    data_dir = Path(skimage.data.__file__).parent
    photos = {name: skimage.io.imread(data_dir / name)[..., :3] for name in PHOTOGRAPHS}
    pairs = {
        (name, n): film_still(image, camera, args.seed + i, n)
        for i, (name, image) in enumerate(photos.items())
        for n in BLUR_FRAMES
    }
    first = PHOTOGRAPHS[0]
    amount = max(
        UNSHARP_AMOUNTS,
        key=lambda a: np.mean(
            [psnr(_unsharp(pairs[first, n][0], a), pairs[first, n][1]) for n in BLUR_FRAMES]
        ),
    )
    print(
        f"{args.weights}: {args.width}x{args.height} frames of real photographs, camera max pan "
        f"{camera.max_pan_px} px/frame, shake {camera.shake_px} px; PSNR dB / SSIM ({SSIM_SETTINGS})"
    )
    header = (
        f"{'photograph':<20} {'frames':>6}  {'blurred':>14}  {'deblurrer':>14}  {'gain':>6}  {'unsharp':>14}"
    )
    print(header)
    print("-" * len(header))
    gains = []
    for n in BLUR_FRAMES:
        for name in PHOTOGRAPHS:
            blurred, sharp = pairs[name, n]
            after = restore(predictor, blurred[None])[0]
            classical = _unsharp(blurred, amount)
            gain = psnr(after, sharp) - psnr(blurred, sharp)
            gains.append(gain)
            print(
                f"{name:<20} {n:>6}  {psnr(blurred, sharp):6.2f} / {ssim(blurred, sharp):.3f}  "
                f"{psnr(after, sharp):6.2f} / {ssim(after, sharp):.3f}  {gain:+6.2f}  "
                f"{psnr(classical, sharp):6.2f} / {ssim(classical, sharp):.3f}"
            )
    print(
        f"mean PSNR gain of the deblurrer on {len(gains)} blurred photographs: {np.mean(gains):+.2f} dB "
        f"(min {min(gains):+.2f}); unsharp amount {amount}"
    )


if __name__ == "__main__":
    main()
