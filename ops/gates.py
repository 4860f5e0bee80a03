"""Release gates as data: each one says whether it passed, its value and its threshold.

The orchestration layer shows them (asset checks) and the release step refuses to promote
a model unless every gate passed; neither needs to know how a gate is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    value: float | None
    threshold: float
    comparison: Literal["<", ">="]
    detail: str
    # Nothing to judge (e.g. no GPU for TensorRT): does not block a release, and is reported as
    # skipped with its reason rather than as passed.
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_gate(
    metric: str, label: str, backend: str, reference: float, candidate: float, max_drop: float
) -> Gate:
    """``metric`` (higher is better) lost by ``backend`` against PyTorch must stay below ``max_drop``."""
    drop = reference - candidate
    return Gate(
        name=f"{metric}_drop_{backend}",
        passed=drop < max_drop,
        value=round(drop, 6),
        threshold=max_drop,
        comparison="<",
        detail=f"{backend} {label} {candidate:.4f} vs PyTorch {reference:.4f}",
    )


def map_drop_gate(backend: str, reference_map50: float, candidate_map50: float, max_drop: float) -> Gate:
    """mAP@0.5 lost against PyTorch must stay below ``max_drop`` (fractions: 0.01 = 1 point)."""
    return drop_gate("map50", "mAP@0.5", backend, reference_map50, candidate_map50, max_drop)


def minimum_gate(name: str, value: float, minimum: float, detail: str) -> Gate:
    """``value`` must reach ``minimum``."""
    passed = value >= minimum
    return Gate(name, passed, round(value, 6), minimum, ">=", detail)


def cosine_gate(backend: str, cosine: float, min_cosine: float) -> Gate:
    """Every output of ``backend`` must point the same way as PyTorch's (cosine similarity)."""
    return Gate(
        name=f"output_cosine_{backend}",
        passed=cosine >= min_cosine,
        value=round(cosine, 8),
        threshold=min_cosine,
        comparison=">=",
        detail=f"lowest cosine similarity of {backend}'s outputs to PyTorch's",
    )


def skipped_gate(name: str, threshold: float, comparison: Literal["<", ">="], reason: str) -> Gate:
    return Gate(
        name, passed=True, value=None, threshold=threshold, comparison=comparison, detail=reason, skipped=True
    )


def all_passed(gates: list[Gate]) -> bool:
    return all(g.passed for g in gates)
