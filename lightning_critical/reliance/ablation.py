"""Ablation reliance: how much of a network's performance is lost when one source is taken away (plain torch).

A source (or pathway input) is replaced by zeros, by Gaussian noise, or by the same source of
another example of the batch (``"shuffle"``: the source keeps its statistics but no longer
says anything about the example), and the metric ``m`` (accuracy, loss, or a user function)
is compared with the intact one and with the *reference* ``m_none``, the metric with every
source replaced the same way (or a given ``chance``):

    reliance_s = (m_intact - m_without_s) / (m_intact - m_none)

the share of what the inputs contribute to the metric that is lost without ``s``: 0 when
the network does not use ``s`` (ablating it changes nothing), 1 when it is as bad without
``s`` as with no input at all. The same formula holds for higher-is-better (accuracy) and
lower-is-better (loss) metrics, since numerator and denominator change sign together.
Why this form: a plain drop ``m_intact - m_without_s`` mixes "uses ``s``" with "performs
well at all" (a network at 60% that falls to chance relies on ``s`` as much as one at 99%
that does), and a ratio to the intact metric (``m_without / m_intact``) has no fixed zero:
for accuracy it bottoms out at chance, and for a loss it blows up as the intact loss goes to
zero (a converged network would rely "completely" on a pathway that carries 1% of its map).
For accuracy, ``chance=1 / classes`` gives Kleinman et al.'s chance-level reference exactly;
the default reference (every source shuffled) is close to it for balanced classes. NaN when
the intact network is no better than the reference. Negative when removing ``s`` helps.

Kleinman, Achille & Soatto (CVPR 2023) report the accuracy with one source only, i.e. with
the other removed: ``accuracy/without/<other>`` here. Nothing here imports Lightning.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_critical.reliance.sources import ArgumentSources
    >>> class OnlyA(nn.Module):                 # classifies from xa; xb is ignored
    ...     def forward(self, xa, xb):
    ...         return torch.cat([xa, -xa], dim=1) + 0 * xb
    >>> xa = torch.randn(200, 1)
    >>> args, target = (xa, torch.randn(200, 1)), (xa[:, 0] < 0).long()
    >>> result = ablation_reliance(OnlyA(), args, target, ArgumentSources({"a": 0, "b": 1}), replace="shuffle")
    >>> result.intact, round(result.reliance["a"], 2), result.reliance["b"]
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_critical._checks import check_choice, check_float, check_seed
from lightning_critical.reliance.sources import REPLACEMENTS, Sources, replacement
from lightning_critical.reliance.variance import measuring

METRICS: tuple[str, ...] = ("accuracy", "loss")
MetricFn = Callable[[Tensor, Tensor], float]


@dataclasses.dataclass(frozen=True)
class Ablation:
    """The intact metric, the reference (no source), the metric without each source, each source's reliance.

    Example::

        >>> Ablation("accuracy", 0.9, 0.1, {"a": 0.5}, {"a": 0.5}).as_dict()
        {'accuracy/intact': 0.9, 'accuracy/reference': 0.1, 'accuracy/without/a': 0.5, 'reliance/a': 0.5}
    """

    metric: str
    intact: float
    reference: float
    without: dict[str, float]
    reliance: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}``: ``<metric>/intact``, ``/reference``, ``/without/<s>``, and ``reliance/<s>``."""
        out = {f"{self.metric}/intact": self.intact, f"{self.metric}/reference": self.reference}
        out.update({f"{self.metric}/without/{s}": v for s, v in self.without.items()})
        out.update({f"reliance/{s}": v for s, v in self.reliance.items()})
        return out


def metric_value(metric: str | MetricFn, output: Tensor, target: Tensor) -> float:
    """``"accuracy"`` (argmax), ``"loss"`` (cross-entropy, or mean squared error for real targets) or ``metric(...)``.

    Example::

        >>> metric_value("accuracy", torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
        0.5
    """
    if callable(metric):
        return float(metric(output, target))
    if metric == "accuracy":
        if target.is_floating_point():
            raise ValueError("metric='accuracy' needs integer class targets; use metric='loss' for real targets.")
        return float((output.argmax(dim=1) == target).double().mean())
    if target.is_floating_point():
        return float(F.mse_loss(output.double(), target.double()))
    return float(F.cross_entropy(output.double(), target))


def reliance_value(intact: float, without: float, reference: float, higher_is_better: bool) -> float:
    """``(intact - without) / (intact - reference)``; NaN when ``intact`` is no better than ``reference``.

    Example::

        >>> reliance_value(0.9, 0.5, 0.1, True), reliance_value(1.0, 4.0, 5.0, False)
        (0.5, 0.75)
    """
    span = intact - reference
    if not (span > 0 if higher_is_better else span < 0):
        return math.nan
    return (intact - without) / span


def ablation_reliance(model: nn.Module, args: Sequence[Tensor], target: Tensor, sources: Sources,
                      names: Sequence[str] | None = None, replace: str = "zeros", metric: str | MetricFn = "accuracy",
                      higher_is_better: bool | None = None, chance: float | None = None, noise_std: float = 1.0,
                      seed: int = 0) -> Ablation:
    """Each source's reliance: the metric with that source replaced, relative to intact (module docstring).

    Args:
        model, args: the network and its positional arguments (batch first).
        target: the targets of the ``N`` examples.
        sources: where the sources are; ``names``: which to ablate (default: all).
        replace: ``"zeros"``, ``"noise"`` (``N(0, noise_std^2)``) or ``"shuffle"`` (another example's).
        metric: ``"accuracy"``, ``"loss"`` or a callable ``(output, target) -> float``.
        higher_is_better: for a callable metric (default ``True``); fixed for the named ones.
        chance: the reference metric (default: the metric with every source replaced);
            ``1 / classes`` is chance-level accuracy.
        seed: seed of the noise / shuffle draws (a private generator; the global RNG is untouched).

    Example::

        >>> from lightning_critical.reliance.sources import ArgumentSources
        >>> x = torch.linspace(-1, 1, 10).unsqueeze(1)
        >>> class Half(nn.Module):                  # regression on a + b, using a fully and b half
        ...     def forward(self, a, b):
        ...         return a + 0.5 * b
        >>> out = ablation_reliance(Half(), (x, x), 2 * x, ArgumentSources({"a": 0, "b": 1}), metric="loss")
        >>> round(out.reliance["a"], 3), round(out.reliance["b"], 3)   # losses / var(x): a (2.25 - 0.25) / (4 - 0.25)
        (0.533, 0.2)
    """
    check_choice("replace", replace, REPLACEMENTS)
    if not callable(metric):
        check_choice("metric", metric, METRICS, extra=" or a callable (output, target) -> float")
    check_float("noise_std", noise_std, low=0)
    check_seed("seed", seed)
    names = list(names or sources.names)
    sources.check(names)
    higher = metric == "accuracy" if not callable(metric) else higher_is_better is None or higher_is_better
    label = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    with measuring(model):
        intact = metric_value(metric, _logits(sources.run(model, args, {})), target)
        without = {name: _without(model, args, target, sources, [name], replace, metric, noise_std, seed)
                   for name in names}
        reference = chance if chance is not None else _without(model, args, target, sources, sources.names,
                                                               replace, metric, noise_std, seed)
    reliance = {name: reliance_value(intact, value, reference, higher) for name, value in without.items()}
    return Ablation(label, intact, float(reference), without, reliance)


def _without(model: nn.Module, args: Sequence[Tensor], target: Tensor, sources: Sources, names: Sequence[str],
             replace: str, metric: str | MetricFn, noise_std: float, seed: int) -> float:
    """The metric with the sources ``names`` replaced; each source gets its own draw (seeded by its position)."""
    transforms = {name: replacement(replace, torch.Generator().manual_seed(seed + 7919 * sources.names.index(name)),
                                    noise_std) for name in names}
    return metric_value(metric, _logits(sources.run(model, args, transforms)), target)


def _logits(out: Any) -> Tensor:
    value = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(value, Tensor):
        raise ValueError(f"ablation reliance needs a model that returns a tensor; it returned {type(out).__name__}.")
    return value.detach()
