"""Which matrices a model has: weight-matrix discovery, matrix views and target-name matching.

Plain torch, no Lightning. The one name matcher of the package, :func:`name_matches`, lives
here too: the monitors, :mod:`lightning_critical.fisher` and
:func:`lightning_critical.protocols.resolve_modules` select their targets with it.

Matrix views (what "the matrix" of a parameter is):

* ``nn.Linear`` / any 2-D weight: used as is, ``(out, in)``.
* ``nn.Conv{1,2,3}d`` weight ``(out, in/groups, *kernel)`` -> ``(out, in/groups * prod(kernel))``
  (the monitor's view; :func:`~lightning_critical.spectral.analyze` defaults to weightwatcher's
  instead: one ``(out, in/groups)`` matrix per kernel position, :func:`conv_taps`).
* ``nn.ConvTranspose{1,2,3}d`` weight ``(in, out/groups, *kernel)`` is first transposed to
  ``(out/groups, in, *kernel)`` and then flattened the same way, so rows are output channels.
* ``nn.Embedding`` weight ``(num_embeddings, dim)``: used as is.
* ``nn.MultiheadAttention.in_proj_weight`` ``(3 * E, E)`` is split into three ``(E, E)``
  targets named ``<name>.q``, ``<name>.k`` and ``<name>.v``.
* Recurrent layers: every input-hidden and hidden-hidden matrix, of every layer and direction
  (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``..._reverse``; ``weight_ih`` / ``weight_hh`` of
  the cells), is split into one ``(hidden, in)`` matrix per gate, in PyTorch's documented
  gate order, named by the gate: ``nn.LSTM`` / ``nn.LSTMCell`` ``(4H, in)`` ->
  ``<name>.i``, ``.f``, ``.g``, ``.o`` (input, forget, cell, output gates); ``nn.GRU`` /
  ``nn.GRUCell`` ``(3H, in)`` -> ``<name>.r``, ``.z``, ``.n`` (reset, update, new). E.g.
  ``lstm.weight_ih_l0.i``, ``gru.weight_hh_l1_reverse.z``. ``nn.RNN`` has one gate: its
  matrices are used as is; so is an LSTM's projection ``weight_hr_l{k}``.
* complex parameters: the views keep the complex dtype (no cast drops the imaginary part).
* 0-D and 1-D parameters (biases, norm scales, a scalar temperature) have no matrix: skipped.
* any other parameter with 3 or more dimensions: its leading size-1 dimensions are dropped
  first, so a ``(1, 16, 32)`` positional embedding is the ``(16, 32)`` matrix it stands for
  (and a ``(1, 1, C)`` class token becomes a vector, skipped). What remains with 3 or more
  dimensions is read like a convolution kernel, ``(shape[0], prod(shape[1:]))``: rows are
  the first dimension. That is right for custom convolution kernels, not for stacks of
  matrices such as per-head ``(heads, d, d)`` weights; ``exclude`` those, or pass their
  slices yourself.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

from torch import Tensor, nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
RNN_GATES: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
"""Gate suffixes of split recurrent matrices, in the order PyTorch stacks the gates."""
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

Patterns = str | Sequence[str]


def matrix_views(name: str, param: Tensor, owner: nn.Module | None = None) -> dict[str, Tensor]:
    """The matrix (or matrices) a parameter stands for; empty for 0-D and 1-D parameters.

    ``owner`` is the module holding the parameter; it decides the conv, attention and
    recurrent views (see the module docstring). The returned tensors are views of ``param``
    (no copy).

    Example::

        >>> import torch
        >>> lstm = nn.LSTM(3, 5)
        >>> {k: tuple(v.shape) for k, v in matrix_views("weight_ih_l0", lstm.weight_ih_l0, lstm).items()}
        {'weight_ih_l0.i': (5, 3), 'weight_ih_l0.f': (5, 3), 'weight_ih_l0.g': (5, 3), 'weight_ih_l0.o': (5, 3)}
        >>> {k: tuple(v.shape) for k, v in matrix_views("pos", torch.zeros(1, 16, 32)).items()}
        {'pos': (16, 32)}
    """
    if param.dim() < 2:
        return {}
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(owner, nn.MultiheadAttention) and leaf == "in_proj_weight":
        q, k, v = param.chunk(3, dim=0)
        return {f"{name}.q": q, f"{name}.k": k, f"{name}.v": v}
    gates = _gates(owner, leaf)
    if gates:
        return {f"{name}.{gate}": part for gate, part in zip(gates, param.chunk(len(gates), dim=0), strict=True)}
    if isinstance(owner, _CONV_T) and leaf == "weight":
        return {name: param.transpose(0, 1).reshape(param.shape[1], -1)}
    if isinstance(owner, _CONV) and leaf == "weight":
        return {name: param.reshape(param.shape[0], -1)}
    if param.dim() == 2:
        return {name: param}
    while param.dim() > 1 and param.shape[0] == 1:  # (1, 16, 32) -> (16, 32); (1, 1, C) -> (C,)
        param = param[0]
    if param.dim() < 2:
        return {}
    if param.dim() == 2:
        return {name: param}
    return {name: param.reshape(param.shape[0], -1)}



def _gates(owner: nn.Module | None, leaf: str) -> tuple[str, ...]:
    """The gate names of a recurrent weight matrix, in PyTorch's stacking order (``()``: not one)."""
    if isinstance(owner, (nn.LSTM, nn.GRU)):
        stacked = leaf.startswith(("weight_ih_l", "weight_hh_l"))
    elif isinstance(owner, (nn.LSTMCell, nn.GRUCell)):
        stacked = leaf in ("weight_ih", "weight_hh")
    else:
        return ()
    if not stacked:
        return ()
    return RNN_GATES["lstm"] if isinstance(owner, (nn.LSTM, nn.LSTMCell)) else RNN_GATES["gru"]


def as_patterns(value: Patterns | None) -> tuple[str, ...]:
    """Names or globs as a tuple: one string is one pattern, ``None`` is none."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def name_matches(name: str, patterns: Patterns | None) -> bool:
    """Whether ``name`` equals or glob-matches one of ``patterns`` (a string or a sequence).

    Example::

        >>> name_matches("encoder.0.weight", "encoder.*"), name_matches("a[0]", ["a[0]"]), name_matches("b", None)
        (True, True, False)
    """
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in as_patterns(patterns))


def find_weight_matrices(
    module: nn.Module, include: Patterns | None = None, exclude: Patterns | None = None
) -> dict[str, Tensor]:
    """Every weight matrix of ``module``, keyed by qualified parameter name (plus split suffix).

    Args:
        module: any ``nn.Module``.
        include: names or globs of targets to keep (``None`` keeps all). A pattern matches
            either the target name (``attn.in_proj_weight.q``) or its parameter name.
        exclude: names or globs to drop, matched the same way.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> sorted(find_weight_matrices(net))
        ['0.weight', '2.weight']
    """
    inc, exc = as_patterns(include), as_patterns(exclude)
    owners = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    out: dict[str, Tensor] = {}
    for name, param in module.named_parameters():
        for target, mat in matrix_views(name, param, owners.get(name)).items():
            keys = (target, name)
            if inc and not any(name_matches(k, inc) for k in keys):
                continue
            if exc and any(name_matches(k, exc) for k in keys):
                continue
            out[target] = mat
    return out


def conv_views(module: nn.Module, conv: str) -> dict[str, str]:
    """``{weight name: view}`` for every convolution weight of ``module`` under ``analyze(conv=...)``:
    ``conv`` for ``nn.Conv1d/2d/3d`` (for a one-position kernel both views are the same matrix),
    ``"flatten"`` for ``nn.ConvTranspose1d/2d/3d``, which has no per-tap view.

    Example::

        >>> conv_views(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ConvTranspose1d(3, 2, 2), nn.Linear(2, 2)), "taps")
        {'0.weight': 'taps', '1.weight': 'flatten'}
    """
    out = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _CONV + _CONV_T) and isinstance(getattr(mod, "weight", None), Tensor):
            out[f"{mod_name}.weight" if mod_name else "weight"] = "flatten" if isinstance(mod, _CONV_T) else conv
    return out


def conv_taps(module: nn.Module) -> dict[str, Tensor]:
    """``{parameter name: (prod(kernel), out, in/groups)}`` for the weight of every ``nn.Conv1d/2d/3d``
    with a kernel of more than one position: one matrix per kernel position (views, no copy)."""
    out = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _CONV) and isinstance(getattr(mod, "weight", None), Tensor) and mod.weight.dim() >= 3:
            w = mod.weight
            if math.prod(w.shape[2:]) > 1:
                name = f"{mod_name}.weight" if mod_name else "weight"
                out[name] = w.flatten(2).permute(2, 0, 1)
    return out
