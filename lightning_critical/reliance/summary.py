"""The reliance measures as one flat dict of scalars, and a ``(trainer, module)`` callable that computes them.

:func:`reliance_metrics` runs the chosen measures on a set of examples and names every
scalar ``reliance/<measure>/<what>``:

* ``ablation``: ``reliance/ablation/<source>`` (see :mod:`.ablation`), plus the metric intact,
  with no source (the reference) and without each source: ``reliance/<metric>/intact``,
  ``reliance/<metric>/reference``, ``reliance/<metric>/without/<source>``;
* ``rsv``: for the pair ``(a, b)`` (default: the first two sources), ``reliance/rsv/mean``
  (towards ``+1``: ``a``), ``reliance/rsv/<a>`` and ``reliance/rsv/<b>`` (the fraction of
  units exclusive to that source: RSV beyond ``+-threshold``), ``reliance/rsv/dead``;
* ``fisher_share``: ``reliance/fisher_share/<pathway>``.

:class:`Reliance` is the same as a sweep final metric or a monitor's measurement: it reads
its examples from the trainer's datamodule (``dataloader="val"``, ``"train"`` or ``"test"``)
inside :func:`~lightning_critical.probing.probing`, so reading them draws nothing from the
global RNG. Nothing here imports Lightning (the trainer is only read).

Example::

    >>> import torch, lightning_critical as lc
    >>> net = lc.models.TwoViewNet(hidden=8, seed=0)
    >>> args, y = (torch.rand(16, 1, 8, 4), torch.rand(16, 1, 8, 4)), torch.arange(16) % 10
    >>> out = reliance_metrics(net, args, y, lc.reliance.as_sources(None, net), layer="fusion")
    >>> sorted(k for k in out if "/ablation/" in k or "/fisher_share/" in k)
    ['reliance/ablation/a', 'reliance/ablation/b', 'reliance/fisher_share/a', 'reliance/fisher_share/b']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightning_critical._checks import check_choice, check_float, check_int, check_seed
from lightning_critical.probing import probing
from lightning_critical.reliance.ablation import METRICS, MetricFn, ablation_reliance
from lightning_critical.reliance.examples import collect
from lightning_critical.reliance.fisher_share import LIKELIHOODS, fisher_share
from lightning_critical.reliance.sources import REPLACEMENTS, PathwaySources, Sources, SourcesLike, as_sources
from lightning_critical.reliance.variance import relative_source_variance, rsv_summary

MEASURES: tuple[str, ...] = ("ablation", "rsv", "fisher_share")
DATALOADERS: tuple[str, ...] = ("train", "val", "test")


def reliance_metrics(model: nn.Module, args: Sequence[Tensor], target: Tensor, sources: Sources,
                     measures: Sequence[str] = MEASURES, layer: str | None = None,
                     pair: Sequence[str] | None = None, replace: str = "shuffle", metric: str | MetricFn = "accuracy",
                     likelihood: str = "categorical", fixed: int = 32, threshold: float = 0.9,
                     seed: int = 0) -> dict[str, float]:
    """The chosen measures on ``args`` / ``target`` as ``{"reliance/<measure>/<what>": value}`` (module docstring)."""
    out: dict[str, float] = {}
    if "ablation" in measures:
        result = ablation_reliance(model, args, target, sources, replace=replace, metric=metric, seed=seed)
        out.update({f"reliance/ablation/{s}": v for s, v in result.reliance.items()})
        out[f"reliance/{result.metric}/intact"] = result.intact
        out[f"reliance/{result.metric}/reference"] = result.reference
        out.update({f"reliance/{result.metric}/without/{s}": v for s, v in result.without.items()})
    if "rsv" in measures:
        a, b = list(pair or sources.names[:2])
        summary = rsv_summary(relative_source_variance(model, args, sources, a, b, layer, fixed), threshold)
        out.update({"reliance/rsv/mean": summary["mean"], f"reliance/rsv/{a}": summary["frac_a"],
                    f"reliance/rsv/{b}": summary["frac_b"], "reliance/rsv/dead": summary["dead"]})
    if "fisher_share" in measures:
        pathways = list(sources.names) if isinstance(sources, PathwaySources) else None
        share = fisher_share(model, args, pathways, likelihood=likelihood, seed=seed)
        out.update({f"reliance/fisher_share/{p}": v for p, v in share.items()})
    return out


@dataclasses.dataclass
class Reliance:
    """A ``(trainer, module) -> dict[str, float]`` that measures reliance on the datamodule's examples.

    Args:
        measures: any of ``"ablation"``, ``"rsv"``, ``"fisher_share"``.
        sources: pathway names, ``{name: forward argument index}``, a
            :class:`~lightning_critical.reliance.Sources`, or ``None`` (the model's pathways,
            else its forward arguments).
        dataloader: ``"val"``, ``"train"`` or ``"test"``: the datamodule's loader to read.
        max_examples: how many examples to measure on.
        layer: the submodule whose units the RSV reads (``None``: the model's output).
        pair: the two sources the RSV compares (default: the first two).
        replace, metric: see :func:`~lightning_critical.reliance.ablation_reliance`.
        likelihood: the Fisher share's (``"categorical"`` or ``"gaussian"``).
        fixed, threshold: the RSV's (see :mod:`lightning_critical.reliance.variance`).
        seed: seed of the ablation's noise / shuffle and the Fisher's sampled labels.

    Example::

        >>> Reliance(measures=("ablation",), dataloader="val").measures
        ('ablation',)
        >>> Reliance(measures=("ablation", "saliency"))
        Traceback (most recent call last):
        ...
        ValueError: measures='saliency' is not valid; choose one of ('ablation', 'rsv', 'fisher_share').
    """

    measures: Sequence[str] = MEASURES
    sources: SourcesLike = None
    dataloader: str = "val"
    max_examples: int = 512
    layer: str | None = None
    pair: Sequence[str] | None = None
    replace: str = "shuffle"
    metric: str | MetricFn = "accuracy"
    likelihood: str = "categorical"
    fixed: int = 32
    threshold: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        measures = [self.measures] if isinstance(self.measures, str) else list(self.measures)
        if not measures:
            raise ValueError(f"measures={self.measures!r} is empty; choose from {list(MEASURES)}.")
        self.measures = tuple(check_choice("measures", m, MEASURES) for m in measures)
        check_choice("dataloader", self.dataloader, DATALOADERS)
        check_choice("replace", self.replace, REPLACEMENTS)
        if not callable(self.metric):
            check_choice("metric", self.metric, METRICS, extra=" or a callable (output, target) -> float")
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_int("max_examples", self.max_examples, low=2)
        check_int("fixed", self.fixed)
        check_float("threshold", self.threshold, low=0, high=1)
        check_seed("seed", self.seed)
        if self.pair is not None and (isinstance(self.pair, str) or len(self.pair) != 2):
            raise ValueError(f"pair={self.pair!r} is not valid: give two source names, like ('a', 'b').")

    def examples(self, trainer: Any, module: nn.Module) -> tuple[tuple[Tensor, ...], Tensor]:
        """The model arguments and targets of the first ``max_examples`` examples of the chosen loader."""
        datamodule = getattr(trainer, "datamodule", None)
        make = getattr(datamodule, f"{self.dataloader}_dataloader", None)
        if make is None:
            raise ValueError(f"reliance: dataloader={self.dataloader!r} needs a datamodule with "
                             f"{self.dataloader}_dataloader(); the trainer has {type(datamodule).__name__}.")
        with probing():  # a shuffled loader draws its order from the global RNG: leave no trace
            return collect(make(), module, max_examples=self.max_examples)

    def measure(self, module: nn.Module, args: Sequence[Tensor], target: Tensor) -> dict[str, float]:
        """:func:`reliance_metrics` with these settings on the given examples."""
        sources = as_sources(self.sources, module)
        return reliance_metrics(module, args, target, sources, self.measures, self.layer, self.pair, self.replace,
                                self.metric, self.likelihood, self.fixed, self.threshold, self.seed)

    def __call__(self, trainer: Any, module: nn.Module) -> dict[str, float]:
        args, target = self.examples(trainer, module)
        return self.measure(module, args, target)
