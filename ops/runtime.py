"""One inference interface for every backend: a batch of normalised images in, raw outputs out.

A :class:`Predictor` takes the ONNX contract's input (``images``: float32 NCHW, RGB, scaled
to 0..1 then mean/std normalised) and returns the contract's outputs as numpy arrays
(``heatmap`` after the sigmoid, ``wh``, ``offset``). Evaluation, validation and the
benchmark only ever see this interface, so no code special-cases a backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

INPUT_NAME = "images"
OUTPUT_NAMES = ("heatmap", "wh", "offset")


class Predictor(Protocol):
    """A detector backend; ``backend`` names it in metrics files and tables."""

    backend: str

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...
