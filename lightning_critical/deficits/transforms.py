"""The named input transforms of ``InputDeficit``: a registry ``{name: Transform}`` (plain torch).

``InputDeficit("blur", window)`` looks ``"blur"`` up in :data:`TRANSFORMS`. Each entry is a
:class:`Transform`: a function ``fn(tensor, context) -> tensor`` of one batch element, with
what the deficit needs to know about it (which element it replaces, whether it reads the
spatial dimensions, whether it needs floating point). The deficit finds the element in the
batch (:mod:`lightning_critical._batch`), checks it, calls ``fn`` with a
:class:`TransformContext` (its settings and a seeded generator) and puts the result back in a
copy of the batch.

Built in:

* ``"blur"``: :func:`blur`, area-downsample by ``factor`` then linearly upsample back, over
  the spatial dimensions;
* ``"downsample"``: :func:`downsample` only (the input shrinks);
* ``"noise"``: ``x + noise_std * N(0, 1)``;
* ``"vflip"``: flip the height axis, the second-to-last spatial dimension (the only one for a
  single spatial dimension);
* ``"label_shuffle"``: permute the targets within the batch.

A new name is one :func:`register_transform` call; from then on
``InputDeficit("<name>", window)`` applies it.

Example::

    >>> import torch
    >>> sorted(TRANSFORMS)
    ['blur', 'downsample', 'label_shuffle', 'noise', 'vflip']
    >>> ctx = TransformContext(factor=2, noise_std=0.0, spatial_dims=(2, 3), generator=torch.Generator)
    >>> TRANSFORMS["vflip"].fn(torch.arange(4.0).reshape(1, 1, 2, 2), ctx)[0, 0].tolist()
    [[2.0, 3.0], [0.0, 1.0]]
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_critical._checks import check_choice

__all__ = [
    "ACTS_ON",
    "DEFAULT_SPATIAL_DIMS",
    "TRANSFORMS",
    "Transform",
    "TransformContext",
    "blur",
    "check_spatial_dims",
    "downsample",
    "register_transform",
    "unregister_transform",
    "spatial_dims_of",
]

_UPSAMPLE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
ACTS_ON = ("input", "target")
DEFAULT_SPATIAL_DIMS = {4: (2, 3), 5: (2, 3, 4)}  # (N, C, H, W) images, (N, C, D, H, W) volumes


# -- tensor transforms over chosen spatial / temporal dimensions ------------------------------
def _dims_or_trailing(x: Tensor, dims: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(range(2, x.dim())) if dims is None else tuple(dims)


def _over_dims(x: Tensor, dims: tuple[int, ...], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` (which takes ``(N, C, *spatial)``) with ``dims`` as the spatial dimensions."""
    if dims == tuple(range(2, x.dim())):
        return fn(x)
    rest = [d for d in range(x.dim()) if d not in dims]
    moved = x.permute(*rest, *dims)
    lead = moved.shape[: len(rest)]
    out = fn(moved.reshape(-1, 1, *moved.shape[len(rest):]))
    out = out.reshape(*lead, *out.shape[2:])
    perm = rest + list(dims)
    return out.permute(*(perm.index(d) for d in range(x.dim())))


def blur(x: Tensor, factor: int, dims: Sequence[int] | None = None) -> Tensor:
    """Downsample by ``factor`` (area averaging) and upsample back (linear interpolation).

    ``dims`` are the 1 to 3 spatial (or temporal) dimensions, by default every dimension after
    the first two (``x`` is ``(N, C, *spatial)``). Each size ``L`` goes to
    ``max(1, L // factor)`` and back to ``L``, so the shape is unchanged.

    Example::

        >>> blur(torch.ones(1, 1, 8, 8), 4).shape
        torch.Size([1, 1, 8, 8])
        >>> blur(torch.rand(2, 10, 3), 2, dims=(1,)).shape   # a (N, T, D) sequence, blurred in time
        torch.Size([2, 10, 3])
    """
    dims = _dims_or_trailing(x, dims)

    def down_up(t: Tensor) -> Tensor:
        size = tuple(t.shape[2:])
        return F.interpolate(_area(t, factor), size=size, mode=_UPSAMPLE_MODES[len(size)], align_corners=False)

    return _over_dims(x, dims, down_up)


def downsample(x: Tensor, factor: int, dims: Sequence[int] | None = None) -> Tensor:
    """Area-average the spatial dimensions ``dims`` (default: all after the first two) to ``max(1, L // factor)``.

    Example::

        >>> downsample(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    return _over_dims(x, _dims_or_trailing(x, dims), lambda t: _area(t, factor))


def _area(t: Tensor, factor: int) -> Tensor:
    if not 3 <= t.dim() <= 5:
        raise ValueError(f"downsampling needs 1 to 3 spatial dimensions after (N, C); got shape {tuple(t.shape)}.")
    return F.interpolate(t, size=tuple(max(1, s // factor) for s in t.shape[2:]), mode="area")


# -- which dimensions are spatial --------------------------------------------------------------
def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_spatial_dims(value: Any) -> tuple[int, ...] | None:
    """The ``spatial_dims`` argument as a tuple of 1 to 3 distinct non-zero indices (or ``None``).

    Example::

        >>> check_spatial_dims(1), check_spatial_dims([2, 3]), check_spatial_dims(None)
        ((1,), (2, 3), None)
    """
    if value is None:
        return None
    dims = (value,) if _is_integer(value) else value
    ok = isinstance(dims, (tuple, list)) and 1 <= len(dims) <= 3 and all(_is_integer(d) and d != 0 for d in dims)
    if not ok or len({int(d) for d in dims}) != len(dims):
        raise ValueError(
            f"spatial_dims={value!r} is not valid: give 1 to 3 distinct dimension indices of the input other than the "
            "batch dimension 0, e.g. (2, 3) for (N, C, H, W) images or (1,) for (N, T, D) sequences; or None."
        )
    return tuple(int(d) for d in dims)


def spatial_dims_of(x: Tensor, spatial_dims: tuple[int, ...] | None, owner: str) -> tuple[int, ...]:
    """The sorted non-negative spatial dimensions of ``x``: ``spatial_dims`` resolved, or the default for its rank.

    Only 4-D images and 5-D volumes have a default (:data:`DEFAULT_SPATIAL_DIMS`); ``owner``
    names the caller in the ``ValueError``.

    Example::

        >>> spatial_dims_of(torch.zeros(2, 3, 8, 8), None, "me"), spatial_dims_of(torch.zeros(2, 10, 4), (-2,), "me")
        ((2, 3), (1,))
    """
    if spatial_dims is None:
        if x.dim() not in DEFAULT_SPATIAL_DIMS:
            raise ValueError(
                f"{owner}: spatial_dims=None has no default for an input of shape {tuple(x.shape)} ({x.dim()}-D): "
                "only 4-D (N, C, H, W) images and 5-D (N, C, D, H, W) volumes have one. Pass spatial_dims, e.g. "
                "(1,) for batch-first sequences (N, T, D) or (2,) for signals (N, C, L)."
            )
        return DEFAULT_SPATIAL_DIMS[x.dim()]
    dims = tuple(d % x.dim() if -x.dim() <= d < x.dim() else -1 for d in spatial_dims)
    if any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{owner}: spatial_dims={spatial_dims!r} do not name distinct non-batch dimensions "
                         f"of the input of shape {tuple(x.shape)}.")
    return tuple(sorted(dims))


# -- the registry of named transforms ----------------------------------------------------------
@dataclass(frozen=True)
class TransformContext:
    """What a named transform may use: the deficit's settings and its seeded random stream.

    ``spatial_dims`` are non-negative dimension indices of the tensor being transformed;
    ``generator(device)`` returns a generator seeded for this micro-batch (the same on every
    call, so a transform that draws twice must draw from one generator).
    """

    factor: int
    noise_std: float
    spatial_dims: tuple[int, ...]
    generator: Callable[[torch.device], torch.Generator]


@dataclass(frozen=True)
class Transform:
    """A named corruption ``fn(tensor, context) -> tensor`` of the batch's input or target.

    Attributes:
        fn: the tensor transform.
        acts_on: ``"input"`` or ``"target"``: which batch element it replaces.
        spatial: whether it reads ``spatial_dims`` (and so needs them known).
        floating: whether it needs a floating-point tensor.
    """

    fn: Callable[[Tensor, TransformContext], Tensor]
    acts_on: str = "input"
    spatial: bool = False
    floating: bool = False


def _blur(x: Tensor, ctx: TransformContext) -> Tensor:
    return blur(x, ctx.factor, ctx.spatial_dims)


def _downsample(x: Tensor, ctx: TransformContext) -> Tensor:
    return downsample(x, ctx.factor, ctx.spatial_dims)


def _noise(x: Tensor, ctx: TransformContext) -> Tensor:
    gen = ctx.generator(x.device)
    return x + ctx.noise_std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def _vflip(x: Tensor, ctx: TransformContext) -> Tensor:
    dims = ctx.spatial_dims
    return x.flip(dims[-2] if len(dims) >= 2 else dims[0])


def _label_shuffle(y: Tensor, ctx: TransformContext) -> Tensor:
    perm = torch.randperm(y.shape[0], generator=ctx.generator(torch.device("cpu"))).to(y.device)
    return y[perm]


TRANSFORMS: dict[str, Transform] = {
    # Module-level functions, so a deficit holding its entry pickles (sweep workers) without cloudpickle.
    "blur": Transform(_blur, spatial=True, floating=True),
    "downsample": Transform(_downsample, spatial=True, floating=True),
    "noise": Transform(_noise, floating=True),
    "vflip": Transform(_vflip, spatial=True),
    "label_shuffle": Transform(_label_shuffle, acts_on="target"),
}
"""Named transforms of :class:`~lightning_critical.InputDeficit`; a new entry makes a new ``transform=`` name."""
_BUILT_IN = frozenset(TRANSFORMS)


def register_transform(
    name: str,
    fn: Callable[[Tensor, TransformContext], Tensor],
    acts_on: str = "input",
    spatial: bool = False,
    floating: bool = False,
) -> Transform:
    """Add ``fn`` to :data:`TRANSFORMS` as ``name``, so that ``InputDeficit(name, window)`` applies it.

    ``fn(tensor, context)`` gets the batch's input (or target, ``acts_on="target"``) and a
    :class:`TransformContext`, and returns the tensor that replaces it in a copy of the batch;
    it must not modify its argument. Random draws must come from ``context.generator(device)``
    (seeded per micro-batch, so runs repeat and the global RNG is untouched). Register before
    constructing the deficit, at the top level of your module, so that sweep workers importing it
    know the name too; the deficit keeps the entry it was built with. Built-in names cannot be
    replaced (a worker would silently apply the built-in); :func:`unregister_transform` removes
    a registered one.

    Args:
        name: the new ``transform=`` name (a non-empty string not yet registered).
        fn: the tensor transform.
        acts_on: ``"input"`` or ``"target"``.
        spatial: ``fn`` reads ``context.spatial_dims`` (the deficit resolves them and accepts
            ``spatial_dims=``).
        floating: ``fn`` needs a floating-point tensor (others fail at the first batch).

    Returns:
        The registered :class:`Transform`.

    Raises:
        ValueError: ``name`` empty, not a string or already registered; ``fn`` not callable;
            ``acts_on`` not one of ``("input", "target")``.

    Example::

        >>> import torch
        >>> import lightning_critical as lc
        >>> entry = register_transform("invert", lambda x, ctx: 1 - x, floating=True)
        >>> lc.InputDeficit("invert", window=(0, 5)).apply((torch.zeros(2, 3), torch.tensor([0, 1])))[0]
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
        >>> unregister_transform("invert")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} is not valid: it must be a non-empty string.")
    if name in _BUILT_IN:
        raise ValueError(f"name={name!r} is a built-in transform ({sorted(_BUILT_IN)}); choose another name.")
    if name in TRANSFORMS:
        raise ValueError(f"name={name!r} is already a transform ({sorted(TRANSFORMS)}); choose another name, "
                         f"or unregister_transform({name!r}) first to replace it.")
    if not callable(fn):
        raise ValueError(f"fn={fn!r} is not valid: it must be a callable (tensor, TransformContext) -> tensor.")
    entry = Transform(fn, check_choice("acts_on", acts_on, ACTS_ON), bool(spatial), bool(floating))
    TRANSFORMS[name] = entry
    return entry


def unregister_transform(name: str) -> None:
    """Forget a transform added by :func:`register_transform` (built-in transforms stay).

    Deficits already built keep the entry they were built with.

    Raises:
        ValueError: for a built-in or unknown name.
    """
    if name in _BUILT_IN or name not in TRANSFORMS:
        raise ValueError(f"name={name!r} is not valid: only registered transforms can be removed; registered: "
                         f"{sorted(set(TRANSFORMS) - _BUILT_IN)}.")
    del TRANSFORMS[name]
