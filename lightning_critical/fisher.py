"""Trace of the Fisher information of a classifier, per layer (plain torch, no Lightning).

For a model ``p_w(y | x)`` the Fisher information is
``F = E_x E_{y ~ p_w(y|x)} [grad_w log p_w(y|x) grad_w log p_w(y|x)^T]``; its trace is
``E_x E_y ||grad_w log p_w(y|x)||^2``. The estimator of Achille, Rovere & Soatto (2019)
used here draws one label per example from the model's own predictive distribution
``y_n ~ softmax(f_w(x_n))`` (not the true label: that would give the "empirical Fisher")
and averages the squared norm of the per-example gradient:

    tr F  ~=  (1/N) sum_n ||grad_w log p_w(y_n | x_n)||^2.

This one-label estimate is unbiased but heavy-tailed once the model is confident: the
gradient of ``log p(y|x)`` nearly vanishes for the predicted class and is large for any
other, so the trace is carried by the few examples that happen to draw a non-predicted label
(about ``sum_n (1 - max_y p(y|x_n))`` of them). When that expected count is a few, drawing
none at all is not rare and the estimate then falls by one or two orders of magnitude for
that record. ``labels="expected"`` removes this label noise: it averages over every class
exactly, ``(1/N) sum_n sum_y p(y|x_n) ||grad_w log p_w(y|x_n)||^2``, at ``classes`` times
the cost.

The trace splits exactly over parameters, so the per-layer trace is the same sum restricted
to that layer's parameters (a "layer" is the module that owns the parameters; its name is
the module's qualified name). Per-example gradients come from ``torch.func`` (``vmap`` of
``grad``), with a plain loop as fallback for models ``vmap`` cannot handle. Everything runs
in float32 or better, in eval mode (no dropout draw, BatchNorm statistics untouched), with a
private generator, without writing ``.grad``: the model and the global RNG are left as found.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_critical._checks import check_choice
from lightning_critical.spectral.matrices import name_matches

LABELS: tuple[str, ...] = ("sample", "expected")


def layer_of(param_name: str) -> str:
    """The layer (owning module's qualified name) of a parameter; top-level ones keep their name."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def fisher_layers(model: nn.Module, targets: Sequence[str] | None = None) -> dict[str, list[str]]:
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


def sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One label per row drawn from ``softmax(logits)``."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _as_args(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    args = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not args or not all(isinstance(a, Tensor) and a.dim() >= 1 for a in args):
        raise ValueError(
            f"inputs must be a tensor or a non-empty tuple of tensors with a batch dimension; got {inputs!r}."
        )
    if len({int(a.shape[0]) for a in args}) != 1:
        raise ValueError(
            f"the model's inputs must share the batch dimension; got shapes {[tuple(a.shape) for a in args]}."
        )
    return args


def per_example_squared_norms(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    labels: Tensor,
    param_names: Sequence[str],
    chunk_size: int = 32,
) -> dict[str, Tensor]:
    """``{param: (N,) tensor}`` of ``||grad_param log softmax(model(*x_n))[y_n]||^2``.

    ``inputs`` is the model's input, or a tuple of its positional arguments (each with the
    batch as dimension 0).
    """
    args = _as_args(inputs)
    named = dict(model.named_parameters())
    cdtype = torch.float64 if any(a.dtype == torch.float64 for a in args) else torch.float32
    params = {n: named[n].detach().to(cdtype) for n in param_names}
    xs = tuple(a.detach().to(cdtype) if a.is_floating_point() else a.detach() for a in args)

    def log_prob(p: dict[str, Tensor], yi: Tensor, *xi: Tensor) -> Tensor:
        out = functional_call(model, p, tuple(x.unsqueeze(0) for x in xi))
        return F.log_softmax(out.to(cdtype), dim=-1)[0, yi]

    try:
        in_dims = (None, 0) + (0,) * len(xs)
        grads = vmap(grad(log_prob), in_dims=in_dims, chunk_size=chunk_size)(params, labels, *xs)
        return {n: g.flatten(1).pow(2).sum(1) for n, g in grads.items()}
    except Exception:  # some modules (in-place ops, data-dependent control flow) defeat vmap
        rows: dict[str, list[Tensor]] = defaultdict(list)
        leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        for i, yi in enumerate(labels):
            with torch.enable_grad():
                gs = torch.autograd.grad(
                    log_prob(leaves, yi, *(x[i] for x in xs)), list(leaves.values()), allow_unused=True
                )
            for n, g in zip(leaves, gs, strict=True):
                rows[n].append(torch.zeros((), dtype=cdtype, device=labels.device) if g is None else g.pow(2).sum())
        return {n: torch.stack(v) for n, v in rows.items()}


def fisher_trace(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    targets: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 32,
    labels: str = "sample",
) -> dict[str, tuple[float, int]]:
    """Per-layer sums ``sum_n ||grad_layer log p(y_n|x_n)||^2`` and the example count ``N``.

    Divide a sum by ``N`` for the layer's Fisher trace (sums and counts let callers pool
    several batches). ``inputs`` is the model's input or a tuple of its positional arguments;
    ``model(*inputs)`` must return class logits ``(N, classes)``. When a logit is NaN or
    infinite (e.g. the weights diverged) the predictive distribution, and so the Fisher, is
    undefined: every sum is NaN. ``labels``: ``"sample"`` draws one label per example from
    the model's predictive distribution (with ``generator``); ``"expected"`` sums over every
    class weighted by its probability (exact in the label, ``classes`` times the cost).

    Example::

        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> out = fisher_trace(net, torch.randn(5, 3), generator=torch.Generator().manual_seed(0))
        >>> sorted(out), out["0"][1]
        (['0', '2'], 5)
    """
    check_choice("labels", labels, LABELS)
    args = _as_args(inputs)
    layers = fisher_layers(model, targets)
    n = int(args[0].shape[0])
    # Restore each submodule's own mode afterwards (a user may keep e.g. a frozen BatchNorm in eval).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(*args)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the model's output must be class logits of shape (N, classes); got {shape}.")
        if not bool(torch.isfinite(logits).all()):
            return {layer: (float("nan"), n) for layer in layers}
        names = [p for group in layers.values() for p in group]
        if labels == "sample":
            drawn = sample_labels(logits, generator).to(logits.device)
            norms = per_example_squared_norms(model, args, drawn, names, chunk_size)
        else:  # expected
            probs = torch.softmax(logits.detach().double(), dim=-1)
            norms = {}
            for c in range(probs.shape[1]):
                every = torch.full((n,), c, dtype=torch.long, device=logits.device)
                for name, values in per_example_squared_norms(model, args, every, names, chunk_size).items():
                    weighted = probs[:, c].to(values.dtype) * values
                    norms[name] = norms[name] + weighted if name in norms else weighted
    finally:
        for module, mode in modes:
            module.training = mode
    return {layer: (float(sum(norms[p].sum() for p in group)), n) for layer, group in layers.items()}
