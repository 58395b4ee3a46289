"""How a network's input sources (or pathways) are addressed and replaced in a forward pass (plain torch).

Reliance measures ask the model the same question in several forms: "what does it compute
when source ``a`` is replaced by something else?". A :class:`Sources` object answers it with
one method, :meth:`Sources.run`, which calls the model on its arguments with one tensor
transform per replaced source. Three ways to say where a source is:

* :class:`PathwaySources`: a source is the *input of a pathway* (a name in the model's
  ``pathways`` mapping, a submodule path or a glob; see :mod:`lightning_critical.protocols`).
  A forward pre-hook transforms the pathway's first floating-point argument. For a
  multi-view model whose encoders are its pathways this is the view itself; for
  ``MultiPathwayLinearNet`` (every pathway sees the same input) it is that pathway's copy.
* :class:`ArgumentSources`: a source is a positional argument of ``forward``
  (``forward(xa, xb)`` trained on ``(xa, xb, y)`` batches: ``{"a": 0, "b": 1}``).
* :class:`SplitSources`: a user function splits the model arguments into named sources and
  another reassembles them (two halves of one image tensor, channels, time ranges...).

:func:`as_sources` builds one from what a user passes. :func:`replacement` gives the
transforms that ablation uses (zeros, noise, another example's source). Nothing here
imports Lightning.

Example::

    >>> import torch
    >>> from torch import nn
    >>> class Sum(nn.Module):
    ...     def forward(self, xa, xb):
    ...         return xa + 10 * xb
    >>> src = ArgumentSources({"a": 0, "b": 1})
    >>> args = (torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [2.0]]))
    >>> src.run(Sum(), args, {"b": torch.zeros_like}).flatten().tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_critical._batch_spec import forward_arguments
from lightning_critical._checks import check_choice
from lightning_critical.protocols import available_names, resolve_modules

Transform = Callable[[Tensor], Tensor]
REPLACEMENTS: tuple[str, ...] = ("zeros", "noise", "shuffle")


class Sources:
    """Named input sources of a model and how to run the model with some of them transformed.

    Subclasses set ``names`` and implement :meth:`run`.
    """

    names: tuple[str, ...] = ()

    def run(self, model: nn.Module, args: Sequence[Tensor], transforms: Mapping[str, Transform]) -> Any:
        """``model(*args)`` with the source ``name``'s value ``t`` replaced by ``transforms[name](t)``."""
        raise NotImplementedError

    def check(self, names: Sequence[str], what: str = "source") -> None:
        """Raise a ``ValueError`` naming ``what`` when one of ``names`` is not a source."""
        for name in names:
            if name not in self.names:
                raise ValueError(f"{what}={name!r} is not a source of the model; sources: {list(self.names)}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.names)})"


class PathwaySources(Sources):
    """Each source is the input of one pathway (submodule): transformed by a forward pre-hook.

    Args:
        model: the network.
        pathways: names in ``model.pathways``, submodule paths or globs (each must name one
            module; default: every name of ``model.pathways``).

    Example::

        >>> import lightning_critical as lc
        >>> net = lc.models.MultiPathwayLinearNet(depth=2, width=16, init="gaussian")
        >>> PathwaySources(net).names
        ('a', 'b')
    """

    def __init__(self, model: nn.Module, pathways: Sequence[str] | None = None) -> None:
        own = list(getattr(model, "pathways", None) or {})
        names = list(pathways) if pathways is not None else own
        if len(names) < 1:
            raise ValueError(f"sources: {type(model).__name__} has no `pathways` mapping; name the pathways "
                             f"(submodule paths) or the model's arguments; {available_names(model)}.")
        self.modules: dict[str, nn.Module] = {}
        for name in names:
            found = resolve_modules(model, name)
            if len(found) != 1:
                raise ValueError(f"sources: pathway {name!r} matches {len(found)} modules {sorted(found)}; "
                                 "each source must name one module.")
            self.modules[name] = next(iter(found.values()))
        self.names = tuple(names)

    def run(self, model: nn.Module, args: Sequence[Tensor], transforms: Mapping[str, Transform]) -> Any:
        self.check(list(transforms))
        handles = [self.modules[name].register_forward_pre_hook(_pre_hook(fn)) for name, fn in transforms.items()]
        try:
            return model(*args)
        finally:
            for handle in handles:
                handle.remove()


def _pre_hook(fn: Transform) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        for i, value in enumerate(inputs):
            if isinstance(value, Tensor) and value.is_floating_point():
                return inputs[:i] + (fn(value),) + inputs[i + 1:]
        raise ValueError(f"sources: the pathway {type(module).__name__} got no floating-point tensor to replace.")

    return hook


class ArgumentSources(Sources):
    """Each source is one positional argument of the model's ``forward``.

    Args:
        positions: ``{source name: argument index}``.

    Example::

        >>> ArgumentSources({"left": 0, "right": 1}).names
        ('left', 'right')
    """

    def __init__(self, positions: Mapping[str, int]) -> None:
        if not positions or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                    for i in positions.values()):
            raise ValueError(f"sources={dict(positions)!r}: give {{name: argument index >= 0}} for two or more "
                             "arguments of the model's forward.")
        self.positions = dict(positions)
        self.names = tuple(positions)

    def run(self, model: nn.Module, args: Sequence[Tensor], transforms: Mapping[str, Transform]) -> Any:
        self.check(list(transforms))
        values = list(args)
        for name, fn in transforms.items():
            index = self.positions[name]
            if index >= len(values):
                raise ValueError(f"sources: {name!r} is argument {index}, but the model gets {len(values)} arguments.")
            values[index] = fn(values[index])
        return model(*values)


class SplitSources(Sources):
    """Sources cut out of the model's arguments by ``split`` and put back by ``join``.

    Args:
        split: ``args -> {name: tensor}`` (each tensor with the batch as dimension 0).
        join: ``(args, {name: tensor}) -> args``: the model's arguments with the sources put back.
        names: the source names (default: the keys ``split`` returns, read on first use).

    Example::

        >>> import torch
        >>> halves = SplitSources(split=lambda args: {"left": args[0][:, :2], "right": args[0][:, 2:]},
        ...                       join=lambda args, s: (torch.cat([s["left"], s["right"]], 1),),
        ...                       names=("left", "right"))
        >>> halves.run(lambda x: x, (torch.ones(1, 4),), {"right": torch.zeros_like}).tolist()
        [[1.0, 1.0, 0.0, 0.0]]
    """

    def __init__(self, split: Callable[[tuple[Tensor, ...]], Mapping[str, Tensor]],
                 join: Callable[[tuple[Tensor, ...], Mapping[str, Tensor]], Sequence[Tensor]],
                 names: Sequence[str]) -> None:
        if not callable(split) or not callable(join):
            raise ValueError("SplitSources: split and join must be callables (args -> {name: tensor}, "
                             "(args, {name: tensor}) -> args).")
        self.split, self.join = split, join
        self.names = tuple(names)

    def run(self, model: Any, args: Sequence[Tensor], transforms: Mapping[str, Transform]) -> Any:
        self.check(list(transforms))
        parts = dict(self.split(tuple(args)))
        for name, fn in transforms.items():
            parts[name] = fn(parts[name])
        return model(*self.join(tuple(args), parts))


SourcesLike = Sources | Sequence[str] | Mapping[str, int] | None


def as_sources(spec: SourcesLike, model: nn.Module) -> Sources:
    """Build :class:`Sources` from what a user gives: a ``Sources``, pathway names, ``{name: argument index}``.

    ``None``: the model's ``pathways`` when it has two or more, else its ``forward``
    arguments when it requires two or more (named as in the signature).

    Example::

        >>> import torch
        >>> class TwoInputs(torch.nn.Module):
        ...     def forward(self, xa, xb):
        ...         return xa + xb
        >>> as_sources(None, TwoInputs())
        ArgumentSources(['xa', 'xb'])
    """
    if isinstance(spec, Sources):
        return spec
    if isinstance(spec, Mapping):
        return ArgumentSources(spec)
    if isinstance(spec, str):
        spec = [spec]
    if spec is not None:
        return PathwaySources(model, list(spec))
    if len(getattr(model, "pathways", None) or {}) >= 2:
        return PathwaySources(model)
    forward = forward_arguments(model) or ()
    if len(forward) >= 2:
        return ArgumentSources({name: i for i, name in enumerate(forward)})
    raise ValueError(
        f"sources=None: {type(model).__name__} has neither two `pathways` nor two forward arguments; pass sources= "
        "(pathway names, {name: argument index}, or lc.reliance.SplitSources(split, join, names))."
    )


def replacement(kind: str, generator: torch.Generator | None = None, noise_std: float = 1.0) -> Transform:
    """The transform that ablates a source: ``"zeros"``, ``"noise"`` (``N(0, noise_std^2)``) or ``"shuffle"``.

    ``"shuffle"`` gives every example the source of another example of the batch (a random
    derangement drawn with ``generator``): the source keeps its statistics but carries no
    information about the example.

    Example::

        >>> t = torch.arange(4.0).unsqueeze(1)
        >>> shuffled = replacement("shuffle", torch.Generator().manual_seed(0))(t)
        >>> sorted(shuffled.flatten().tolist()), bool((shuffled != t).all())
        ([0.0, 1.0, 2.0, 3.0], True)
    """
    check_choice("replace", kind, REPLACEMENTS)
    if kind == "zeros":
        return torch.zeros_like

    def noise(t: Tensor) -> Tensor:
        draw = torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(t.device)
        return draw * noise_std

    def shuffle(t: Tensor) -> Tensor:
        n = t.shape[0]
        perm = torch.randperm(n, generator=generator)
        index = torch.empty_like(perm)
        index[perm] = perm.roll(1)  # example perm[k] takes perm[k - 1]'s source: nobody keeps its own
        return t[index.to(t.device)]

    return noise if kind == "noise" else shuffle


def pin(j: int) -> Transform:
    """The transform that gives every example the source of example ``j`` (holds the source fixed).

    Example::

        >>> pin(1)(torch.tensor([[1.0], [2.0], [3.0]])).flatten().tolist()
        [2.0, 2.0, 2.0]
    """
    return lambda t: t[j:j + 1].expand_as(t)
