"""Trace of the Fisher information of a classifier, per layer (plain torch, no Lightning).

For a model ``p_w(y | x)`` the Fisher information is
``F = E_x E_{y ~ p_w(y|x)} [grad_w log p_w(y|x) grad_w log p_w(y|x)^T]``; its trace is
``E_x E_y ||grad_w log p_w(y|x)||^2``. The estimator of Achille, Rovere & Soatto (2019)
used here draws one label per example from the model's own predictive distribution
``y_n ~ softmax(f_w(x_n))`` (not the true label: that would give the "empirical Fisher")
and averages the squared norm of the per-example gradient:

    tr F  ~=  (1/N) sum_n ||grad_w log p_w(y_n | x_n)||^2.

The trace splits exactly over parameters, so the per-layer trace is the same sum restricted
to that layer's parameters (a "layer" is the module that owns the parameters; its name is
the module's qualified name). Per-example gradients come from ``torch.func`` (``vmap`` of
``grad``), with a plain loop as fallback for models ``vmap`` cannot handle. Everything runs
in float32 or better, in eval mode (no dropout draw, BatchNorm statistics untouched), with a
private generator, without writing ``.grad``: the model and the global RNG are left as found.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_critical.spectral import name_matches


def layer_of(param_name: str) -> str:
    """The layer (owning module's qualified name) of a parameter; top-level ones keep their name."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def fisher_layers(model: nn.Module, targets: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """``{layer: [parameter names]}`` for trainable parameters, optionally filtered by names/globs.

    Example::

        >>> fisher_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
        {'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}
    """
    out: dict[str, list[str]] = defaultdict(list)
    for name, p in model.named_parameters():
        if p.requires_grad and (targets is None or name_matches(layer_of(name), targets)):
            out[layer_of(name)].append(name)
    return dict(out)


def sample_labels(logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One label per row drawn from ``softmax(logits)``."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def per_example_squared_norms(
    model: nn.Module, inputs: Tensor, labels: Tensor, param_names: Sequence[str], chunk_size: int = 32
) -> dict[str, Tensor]:
    """``{param: (N,) tensor}`` of ``||grad_param log softmax(model(x_n))[y_n]||^2``."""
    named = dict(model.named_parameters())
    cdtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    params = {n: named[n].detach().to(cdtype) for n in param_names}
    x = inputs.detach().to(cdtype) if inputs.is_floating_point() else inputs

    def log_prob(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return F.log_softmax(out.to(cdtype), dim=-1)[0, yi]

    try:
        grads = vmap(grad(log_prob), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, labels)
        return {n: g.flatten(1).pow(2).sum(1) for n, g in grads.items()}
    except Exception:  # noqa: BLE001 - some modules (in-place ops, data-dependent control flow) defeat vmap
        rows: dict[str, list[Tensor]] = defaultdict(list)
        leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        for xi, yi in zip(x, labels):
            with torch.enable_grad():
                gs = torch.autograd.grad(log_prob(leaves, xi, yi), list(leaves.values()), allow_unused=True)
            for n, g in zip(leaves, gs):
                rows[n].append(torch.zeros((), dtype=cdtype, device=x.device) if g is None else g.pow(2).sum())
        return {n: torch.stack(v) for n, v in rows.items()}


def fisher_trace(
    model: nn.Module,
    inputs: Tensor,
    targets: Optional[Sequence[str]] = None,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = 32,
) -> dict[str, tuple[float, int]]:
    """Per-layer sums ``sum_n ||grad_layer log p(y_n|x_n)||^2`` and the example count ``N``.

    Divide a sum by ``N`` for the layer's Fisher trace (sums and counts let callers pool
    several batches). ``model(inputs)`` must return class logits ``(N, classes)``.

    Example::

        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> out = fisher_trace(net, torch.randn(5, 3), generator=torch.Generator().manual_seed(0))
        >>> sorted(out), out["0"][1]
        (['0', '2'], 5)
    """
    layers = fisher_layers(model, targets)
    # Restore each submodule's own mode afterwards (a user may keep e.g. a frozen BatchNorm in eval).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(inputs)
        if logits.dim() != 2:
            raise ValueError(f"the model's output must be class logits of shape (N, classes); got {tuple(logits.shape)}.")
        labels = sample_labels(logits, generator).to(logits.device)
        names = [n for group in layers.values() for n in group]
        norms = per_example_squared_norms(model, inputs, labels, names, chunk_size)
    finally:
        for module, mode in modes:
            module.training = mode
    n = int(inputs.shape[0])
    return {layer: (float(sum(norms[p].sum() for p in group)), n) for layer, group in layers.items()}
