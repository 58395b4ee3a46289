"""Relative source variance (RSV) of the units of a layer (Kleinman, Achille & Soatto, CVPR 2023).

For a unit ``i`` of a chosen representation ``h`` and two sources ``a``, ``b`` of the input
(``SV_a``: only ``a`` varies, ``b`` held fixed, averaged over the fixed values)::

    SV_a(i) = E_{x_b} [ Var_{x_a} h_i(x_a, x_b) ]
    RSV(i)  = (SV_a(i) - SV_b(i)) / (SV_a(i) + SV_b(i))   in [-1, 1]

+1: the unit responds to ``a`` only; -1: to ``b`` only; 0: to both alike. Kleinman et al.
show the distribution over units: after a long early deficit on ``b`` it piles up at +1
and stays there however long the network trains on both sources afterwards. With more than
two sources, "held fixed" holds every source other than the one varied.

Estimator: from ``N`` examples, for each of ``fixed`` examples ``j`` every source but ``a``
is pinned to example ``j``'s while ``a`` takes all ``N`` values; the population variance
over the ``N`` rows is averaged over the ``j``. Units whose two variances are both zero (a
dead ReLU, a constant) have no RSV: NaN, counted as ``dead`` by :func:`rsv_summary`. The
model runs in eval mode inside :func:`~lightning_critical.probing.probing`, without
gradients: measuring leaves training as it was. Nothing here imports Lightning.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_critical.reliance.sources import ArgumentSources
    >>> class Units(nn.Module):                 # unit 0 sees xa only, unit 1 both, unit 2 xb only
    ...     def forward(self, xa, xb):
    ...         return torch.cat([xa, xa + xb, xb], dim=1)
    >>> xa = torch.linspace(-1, 1, 64).unsqueeze(1)
    >>> args = (xa, xa.flip(0))                   # two sources of equal variance
    >>> rsv = relative_source_variance(Units(), args, ArgumentSources({"a": 0, "b": 1}), "a", "b")
    >>> [round(v, 1) for v in rsv.tolist()]
    [1.0, 0.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_critical._checks import check_float, check_int
from lightning_critical.probing import probing
from lightning_critical.protocols import available_names
from lightning_critical.reliance.sources import Sources, Transform, pin


@contextmanager
def measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, deficit hooks inert, RNG restored; every submodule's mode put back after."""
    modes = [(m, m.training) for m in model.modules()]
    devices = list({p.device for p in model.parameters()})
    model.eval()
    try:
        with probing(devices=devices), torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def layer_output(model: nn.Module, layer: str | None, sources: Sources, args: Sequence[Tensor],
                 transforms: Mapping[str, Transform]) -> Tensor:
    """The output of submodule ``layer`` (``None``: the model's output) as ``(N, units)``, one forward pass."""
    if layer is None:
        return _flat(sources.run(model, args, transforms))
    try:
        module = model.get_submodule(layer)
    except AttributeError as err:
        raise ValueError(f"layer={layer!r} is not a submodule of {type(model).__name__}; "
                         f"{available_names(model)}.") from err
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, out: seen.append(_flat(out)))
    try:
        sources.run(model, args, transforms)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"layer={layer!r} was not called in the model's forward pass.")
    return seen[-1]


def _flat(out: Any) -> Tensor:
    value = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(value, Tensor) or value.dim() < 1:
        raise ValueError(f"the measured layer's output must be a tensor with a batch dimension; got {type(value)}.")
    return value.detach().flatten(1).double() if value.dim() > 1 else value.detach().double().unsqueeze(1)


def source_variances(model: nn.Module, args: Sequence[Tensor], sources: Sources, names: Sequence[str] | None = None,
                     layer: str | None = None, fixed: int = 32) -> dict[str, Tensor]:
    """``{source: SV_source}``: each unit's variance when only that source varies (see the module docstring).

    Args:
        model: the network (run in eval mode, without gradients).
        args: the model's positional arguments, batch first (``N >= 2`` examples).
        sources: where the sources are (:mod:`lightning_critical.reliance.sources`).
        names: the sources to vary (default: all).
        layer: the submodule whose output is measured (default: the model's output).
        fixed: how many examples provide the fixed values of the other sources (at most ``N``).
    """
    check_int("fixed", fixed)
    names = list(names or sources.names)
    sources.check(names)
    n = int(args[0].shape[0])
    if n < 2:
        raise ValueError(f"source variance needs at least 2 examples; got {n}.")
    out: dict[str, Tensor] = {}
    with measuring(model):
        for name in names:
            total: Tensor | None = None
            for j in range(min(fixed, n)):
                pinned = {other: pin(j) for other in sources.names if other != name}
                h = layer_output(model, layer, sources, args, pinned)
                var = h.var(dim=0, unbiased=False)
                total = var if total is None else total + var
            assert total is not None
            out[name] = total / min(fixed, n)
    return out


def relative_source_variance(model: nn.Module, args: Sequence[Tensor], sources: Sources, a: str, b: str,
                             layer: str | None = None, fixed: int = 32) -> Tensor:
    """Per-unit ``RSV = (SV_a - SV_b) / (SV_a + SV_b)`` in ``[-1, 1]``; NaN where both variances vanish.

    Kleinman, Achille & Soatto, "Critical learning periods for multisensory integration in
    deep networks", CVPR 2023. Arguments as in :func:`source_variances`.

    Example::

        >>> from lightning_critical.reliance.sources import ArgumentSources
        >>> class Mix(nn.Module):
        ...     def forward(self, a, b):
        ...         return torch.cat([a, 3 * a + b], 1)
        >>> x = torch.linspace(0, 1, 8).unsqueeze(1)
        >>> rsv = relative_source_variance(Mix(), (x, x), ArgumentSources({"a": 0, "b": 1}), "a", "b")
        >>> [round(v, 2) for v in rsv.tolist()]       # (9 - 1) / (9 + 1) for the mixed unit
        [1.0, 0.8]
    """
    if a == b:
        raise ValueError(f"relative source variance compares two different sources; got a=b={a!r}.")
    sv = source_variances(model, args, sources, [a, b], layer, fixed)
    total = sv[a] + sv[b]
    tiny = 1e-12 * float(total.max()) if total.numel() and float(total.max()) > 0 else 0.0
    rsv = (sv[a] - sv[b]) / total
    return torch.where(total > tiny, rsv, torch.full_like(rsv, float("nan"))).float()


def rsv_summary(rsv: Tensor, threshold: float = 0.9) -> dict[str, float]:
    """An RSV distribution's ``mean``, ``frac_a`` (``> threshold``), ``frac_b`` (``< -threshold``) and ``dead``.

    ``mean``, ``frac_a`` and ``frac_b`` are over the units that have an RSV; ``dead`` is the
    fraction that has none (NaN). Kleinman et al. read ``frac_a`` / ``frac_b``: the units
    that became exclusive to one source.

    Example::

        >>> rsv_summary(torch.tensor([1.0, 0.75, 0.0, -1.0, float("nan")]))
        {'mean': 0.1875, 'frac_a': 0.25, 'frac_b': 0.25, 'dead': 0.2}
    """
    check_float("threshold", threshold, low=0, high=1)
    alive = rsv[~torch.isnan(rsv)].double()
    dead = (rsv.numel() - alive.numel()) / max(1, rsv.numel())
    if not alive.numel():
        return {"mean": float("nan"), "frac_a": float("nan"), "frac_b": float("nan"), "dead": dead}
    return {"mean": float(alive.mean()), "frac_a": float((alive > threshold).double().mean()),
            "frac_b": float((alive < -threshold).double().mean()), "dead": dead}


def rsv_histogram(rsv: Tensor, bins: int = 10) -> tuple[Tensor, Tensor]:
    """``(counts, edges)`` of the units' RSV over ``[-1, 1]`` in ``bins`` equal bins (NaN units left out).

    Example::

        >>> counts, edges = rsv_histogram(torch.tensor([-1.0, 0.1, 1.0, 1.0]), bins=2)
        >>> counts.tolist(), edges.tolist()
        ([1, 3], [-1.0, 0.0, 1.0])
    """
    check_int("bins", bins)
    alive = rsv[~torch.isnan(rsv)].double()
    counts = torch.histc(alive, bins=bins, min=-1.0, max=1.0).long()
    return counts, torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)
