"""What the exactness audit compares: final weights and reported metrics, bitwise on CPU or within a tolerance.

The audited row reports its metrics, so the verdict covers them as well as the weights: a metric
that differs between a branched run and its from-scratch twin is a failed audit even when the
weights are equal (e.g. a ``torchmetrics`` accumulator that a branch point does not carry). Metrics
must therefore be functions of the training: a process id or a duration differs between two
from-scratch runs and fails the audit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

DIFFERS = "differs"
EQUAL = "equal"


def tolerance(device: str, precision: str) -> float | None:
    """The relative tolerance of the comparison (``None``: bitwise) for a run's device type and precision.

    Example::

        >>> tolerance("cpu", "32-true"), tolerance("cuda", "32-true"), tolerance("cuda", "bf16-mixed")
        (None, 0.0001, 0.01)
    """
    if device == "cpu":
        return None
    return 1e-2 if "16" in str(precision) else 1e-4


@dataclass
class Comparison:
    """The outcome of comparing two state dicts (see :func:`compare_states`)."""

    tensors: int
    differing: list[str]
    max_diff: float
    rtol: float | None

    @property
    def equal(self) -> bool:
        return not self.differing

    def verdict(self) -> str:
        """The table's ``audit`` value."""
        if self.equal:
            return EQUAL if self.rtol is None else f"{EQUAL} within rtol={self.rtol:g} (max|diff|={self.max_diff:.3g})"
        how = "bitwise" if self.rtol is None else f"rtol={self.rtol:g}"
        return (f"{DIFFERS}: {self.differing[0]} max|diff|={self.max_diff:.3g} "
                f"({len(self.differing)} of {self.tensors} tensors differ, {how})")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not (a.is_floating_point() or a.is_complex()):
        return float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    nan = torch.isnan(a) | torch.isnan(b)
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return math.inf
    d = (a.double() - b.double()).abs().masked_fill(nan, 0.0)
    return float(d.nan_to_num(nan=math.inf).max()) if d.numel() else 0.0  # inf - inf is nan: a real difference


def compare_states(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float | None = None) -> Comparison:
    """Compare every entry of two state dicts: bitwise (``rtol=None``; NaN equals NaN) or within ``rtol``.

    Within ``rtol`` means ``max|a - b| <= rtol * max|b|`` per tensor; integer tensors are always exact.
    ``max_diff`` is the largest absolute difference of the first differing tensor (or of all, when equal).

    Example::

        >>> import torch
        >>> x = {"w": torch.ones(2), "b": torch.zeros(1)}
        >>> compare_states(x, {"w": torch.ones(2), "b": torch.zeros(1)}).verdict()
        'equal'
        >>> compare_states(x, {"w": torch.tensor([1.0, 1.5]), "b": torch.zeros(1)}).verdict()
        'differs: w max|diff|=0.5 (1 of 2 tensors differ, bitwise)'
    """
    differing: list[str] = []
    first_diff, largest = 0.0, 0.0
    names = list(a) + [k for k in b if k not in a]
    for name in names:
        if name not in a or name not in b:
            diff, same = math.inf, False
        else:
            x, y = a[name], b[name]
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                diff, same = (0.0, True) if x == y else (math.inf, False)
            elif x.shape != y.shape or x.dtype != y.dtype:
                diff, same = math.inf, False
            else:
                diff = _diff(x, y)
                exact = rtol is None or not (x.is_floating_point() or x.is_complex())
                if exact:
                    same = diff == 0.0
                else:
                    scale = float(y.double().abs().nan_to_num(0.0).max()) if y.numel() else 0.0
                    same = diff <= rtol * scale  # type: ignore[operator]  # rtol is a float here
        largest = max(largest, diff)
        if not same:
            if not differing:
                first_diff = diff
            differing.append(name)
    return Comparison(len(names), differing, first_diff if differing else largest, rtol)


def _same_value(x: Any, y: Any, rtol: float | None) -> bool:
    if isinstance(x, numbers.Real) and isinstance(y, numbers.Real) and not isinstance(x, bool) \
            and not isinstance(y, bool):
        fx, fy = float(x), float(y)
        if math.isnan(fx) or math.isnan(fy):
            return math.isnan(fx) and math.isnan(fy)
        if fx == fy:
            return True
        return rtol is not None and math.isfinite(fx) and math.isfinite(fy) and \
            abs(fx - fy) <= rtol * max(abs(fx), abs(fy))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):  # a record read back from JSON has lists
        return len(x) == len(y) and all(_same_value(u, v, rtol) for u, v in zip(x, y, strict=True))
    try:
        return bool(x == y)
    except Exception:  # e.g. an array's ambiguous truth value
        return False


def compare_metrics(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float | None = None) -> str | None:
    """The first metric that differs between ``a`` (branched) and ``b`` (from scratch), described; ``None`` if none.

    Bitwise (``rtol=None``; NaN equals NaN) or within ``rtol`` of the larger magnitude; a metric
    only one side reports differs.

    Example::

        >>> compare_metrics({"loss": 0.5, "acc": float("nan")}, {"loss": 0.5, "acc": float("nan")}) is None
        True
        >>> compare_metrics({"loss": 0.5}, {"loss": 0.25})
        'metric loss: 0.5 branched, 0.25 from scratch'
        >>> compare_metrics({"loss": 1.0}, {"loss": 1.00001}, rtol=1e-4) is None
        True
    """
    for name in list(a) + [k for k in b if k not in a]:
        missing = name not in a or name not in b
        x, y = a.get(name), b.get(name)
        if missing or not _same_value(x, y, rtol):
            return f"metric {name}: {x!r} branched, {y!r} from scratch"
    return None
