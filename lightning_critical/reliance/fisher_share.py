"""Fisher share: each pathway's share of the trace of the Fisher information (plain torch).

The trace of the Fisher information splits exactly over parameters (see
:mod:`lightning_critical.fisher`), so a pathway's trace is the sum of the per-layer traces of
the layers inside it, and

    share_p = tr F_p / sum_q tr F_q

over the pathways ``q`` measured (layers outside every pathway, such as a shared head, are
left out of both). Kleinman, Achille & Soatto (CVPR 2023) follow the Fisher information of
each pathway over training: the deprived pathway's stays low after an early deficit.

Two likelihoods: ``"categorical"`` (a classifier's logits; the estimator of
:func:`lightning_critical.fisher.fisher_trace`, labels ``"expected"`` by default, exact in the
label) and ``"gaussian"`` (a regression output with unit-variance Gaussian noise, e.g.
``MultiPathwayLinearNet``): there ``F = E_x[J^T J]`` with ``J`` the Jacobian of the output
in the parameters, so ``tr F_p = (1/N) sum_n sum_k ||d f_k(x_n) / d w_p||^2``. Both run in
eval mode inside :func:`~lightning_critical.probing.probing`, without writing ``.grad``.
Nothing here imports Lightning.

Example::

    >>> import lightning_critical as lc
    >>> dm = lc.data.HierarchicalDataModule()
    >>> net = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis())
    >>> share = fisher_share(net, (dm.dataset().tensors[0],), likelihood="gaussian")
    >>> sorted(share), round(share["a"], 3)
    (['a', 'b'], 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lightning_critical._checks import check_choice, check_seed
from lightning_critical.fisher import LABELS, fisher_trace
from lightning_critical.probing import probing
from lightning_critical.protocols import resolve_modules

LIKELIHOODS: tuple[str, ...] = ("categorical", "gaussian")


def pathway_layers(model: nn.Module, pathways: Sequence[str] | None = None) -> dict[str, str]:
    """``{pathway name: qualified module name}`` (default: every name of ``model.pathways``).

    Example::

        >>> import lightning_critical as lc
        >>> pathway_layers(lc.models.MultiPathwayLinearNet(depth=2, width=4, init="gaussian"))
        {'a': 'pathways.a', 'b': 'pathways.b'}
    """
    names = list(pathways) if pathways is not None else list(getattr(model, "pathways", None) or {})
    if not names:
        raise ValueError(f"fisher share: {type(model).__name__} has no `pathways` mapping; pass pathways=[names].")
    qualified = {id(m): n for n, m in model.named_modules()}
    out = {}
    for name in names:
        found = resolve_modules(model, name)
        if len(found) != 1:
            raise ValueError(f"fisher share: pathway {name!r} matches {len(found)} modules {sorted(found)}.")
        out[name] = qualified[id(next(iter(found.values())))]
    return out


def _inside(param: str, module: str) -> bool:
    return module == "" or param.startswith(module + ".")


def gaussian_fisher_trace(model: nn.Module, args: Sequence[Tensor], param_names: Sequence[str]) -> dict[str, float]:
    """``{parameter: (1/N) sum_n sum_k ||d f_k(x_n) / d w||^2}``: the Fisher trace of a unit-variance Gaussian."""
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in param_names}
    xs = tuple(a.detach() for a in args)

    def output(p: dict[str, Tensor], *xi: Tensor) -> Tensor:
        return functional_call(model, p, tuple(x.unsqueeze(0) for x in xi)).flatten()

    jac = vmap(jacrev(output), in_dims=(None,) + (0,) * len(xs))(params, *xs)
    n = int(xs[0].shape[0])
    return {name: float(j.double().pow(2).sum()) / n for name, j in jac.items()}


def pathway_fisher_traces(model: nn.Module, args: Sequence[Tensor], pathways: Sequence[str] | None = None,
                          likelihood: str = "categorical", labels: str = "expected", seed: int = 0) -> dict[str, float]:
    """``{pathway: tr F_p}``, the Fisher trace summed over the pathway's trainable parameters."""
    check_choice("likelihood", likelihood, LIKELIHOODS)
    check_choice("labels", labels, LABELS)
    check_seed("seed", seed)
    layers = pathway_layers(model, pathways)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with probing(devices=list({p.device for p in model.parameters()})):
            if likelihood == "gaussian":
                mine = [n for n in trainable if any(_inside(n, q) for q in layers.values())]
                per_param = gaussian_fisher_trace(model, args, mine)
                per_layer = {n: (v, 1) for n, v in per_param.items()}
            else:
                gen = torch.Generator(device=args[0].device).manual_seed(seed)
                per_layer = fisher_trace(model, tuple(args), generator=gen, labels=labels)
    finally:
        for module, mode in modes:
            module.training = mode
    return {p: sum(total / count for key, (total, count) in per_layer.items() if _inside(key, q) or key == q)
            for p, q in layers.items()}


def fisher_share(model: nn.Module, args: Sequence[Tensor], pathways: Sequence[str] | None = None,
                 likelihood: str = "categorical", labels: str = "expected", seed: int = 0) -> dict[str, float]:
    """``{pathway: tr F_p / sum_q tr F_q}`` (module docstring); NaN when every trace is zero or not finite.

    Args:
        model, args: the network and its positional arguments (batch first).
        pathways: names in ``model.pathways``, submodule paths or globs (default: all pathways).
        likelihood: ``"categorical"`` (logits) or ``"gaussian"`` (regression outputs).
        labels: categorical only: ``"expected"`` (exact) or ``"sample"`` (one draw per example).
        seed: seed of the sampled labels.

    Example::

        >>> net = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.Linear(2, 3)})
        >>> net.forward = lambda x: net["a"](x) + 0 * net["b"](x)   # pathway b never reaches the output
        >>> share = fisher_share(net, (torch.randn(5, 2),), pathways=["a", "b"])
        >>> round(share["a"], 3), round(share["b"], 3)
        (1.0, 0.0)
    """
    traces = pathway_fisher_traces(model, args, pathways, likelihood, labels, seed)
    total = sum(traces.values())
    ok = total > 0 and torch.isfinite(torch.tensor(total))
    return {p: (v / total if ok else float("nan")) for p, v in traces.items()}
