"""InputDeficit: corrupt the training inputs (or labels) during a window, e.g. blur them."""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lightning_critical._batch import INPUT_KEYS, TARGET_KEYS, BatchSpec, Key, get, replace
from lightning_critical._checks import check_choice, check_float, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.probing import is_probing
from lightning_critical.schedule import WindowLike

__all__ = [
    "InputDeficit",
    "TRANSFORMS",
    "Transform",
    "TransformContext",
    "blur",
    "downsample",
    "INPUT_KEYS",
    "TARGET_KEYS",
]

_UPSAMPLE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
BatchFn = Callable[[Any], Any]


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
    "blur": Transform(lambda x, c: blur(x, c.factor, c.spatial_dims), spatial=True, floating=True),
    "downsample": Transform(lambda x, c: downsample(x, c.factor, c.spatial_dims), spatial=True, floating=True),
    "noise": Transform(_noise, floating=True),
    "vflip": Transform(_vflip, spatial=True),
    "label_shuffle": Transform(_label_shuffle, acts_on="target"),
}
"""Named transforms of :class:`InputDeficit`; a new entry makes a new ``transform=`` name."""

_DEFAULT_SPATIAL = {4: (2, 3), 5: (2, 3, 4)}  # (N, C, H, W) images, (N, C, D, H, W) volumes


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_spatial_dims(value: Any) -> tuple[int, ...] | None:
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


def _mixed_seed(*parts: int) -> int:
    # A platform-independent 63-bit seed from integers (Python's hash() of a tuple is not documented as stable).
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class InputDeficit(WindowedDeficit):
    """Corrupt the training batches inside a window; validation and test batches stay clean.

    The classic critical-period protocol (Achille, Rovere & Soatto, ICLR 2019) blurs the
    training images for the first ``T`` epochs: ``InputDeficit("blur", window=(0, T))``.

    Mechanism: while the window is active, the LightningModule's ``training_step`` is
    wrapped (an instance attribute, the same forward-redirection trick Lightning's own
    strategies use) so the step receives the corrupted batch; nothing else sees it. The
    wrapper has the signature of the module's own ``training_step`` (Lightning passes
    ``batch_idx`` only to steps that take it). It is removed at the window's end, before
    validation, at the end of ``fit``, on an exception and at teardown, restoring the module
    exactly; a ``copy.deepcopy`` (EMA, snapshots) or pickle of the module taken inside the
    window gets the module's own, unwrapped ``training_step``. Several input deficits may be
    active at once; they apply in callback order.

    Transforms (``x`` = the batch's input; :data:`TRANSFORMS` is the registry):

    * ``"blur"``: :func:`blur`, area-downsample by ``factor`` then linearly upsample back,
      over ``spatial_dims``.
    * ``"downsample"``: :func:`downsample` only; the input shrinks, so the model must accept
      smaller inputs (e.g. global pooling).
    * ``"noise"``: ``x + noise_std * N(0, 1)``.
    * ``"vflip"``: flip the height axis: the second-to-last of ``spatial_dims`` (the only one
      for a single spatial dimension).
    * ``"label_shuffle"``: the targets are permuted within the batch (random labels with
      the true label frequencies); the inputs are unchanged.
    * a callable ``batch -> batch``: applied to the whole batch.

    ``spatial_dims`` (blur, downsample, vflip): which dimensions of the input are spatial or
    temporal. By default ``(2, 3)`` for 4-D ``(N, C, H, W)`` images and ``(2, 3, 4)`` for 5-D
    volumes; any other rank is ambiguous (a batch-first sequence ``(N, T, D)`` has time in
    dimension 1, a signal ``(N, C, L)`` in dimension 2), so it is an error unless given, e.g.
    ``spatial_dims=(1,)`` to blur ``(N, T, D)`` sequences in time.

    Random draws use a private generator seeded by ``(seed, global step, batch index in the
    epoch, global rank)``: every micro-batch of an accumulated step and every DDP rank draws
    its own noise / permutation, a resumed run draws the same, and the global RNG (data order,
    dropout) is never touched.

    Which element is the input (or target), see :mod:`lightning_critical._batch`: the batch
    itself if it is a tensor; for tuples/lists index ``input_key`` (default 0) /
    ``target_key`` (default: the **last** element); for mappings (``dict``, ``UserDict``,
    ``BatchEncoding``, ...) and dataclasses key ``input_key`` / ``target_key``, by default the
    first present among :data:`INPUT_KEYS` / :data:`TARGET_KEYS`
    (``("y", "label", "labels", "target", "targets")``). A model with several inputs has one
    of them corrupted: ``input_key`` chooses it, e.g. ``InputDeficit("blur", window,
    input_key=1)`` blurs ``x2`` of ``(x1, x2, y)`` batches (the target stays the last element);
    to corrupt several, use one deficit per input. The batch is copied, never modified in
    place, so data held by the dataset is never corrupted. The batch's structure is checked at
    the first training batch of the fit, even when the window opens later.

    Args:
        transform: one of :data:`TRANSFORMS` or a callable ``batch -> batch``.
        window: ``lc.Window`` or ``(start, end)``; half-open, in ``unit``.
        factor: resolution divisor of ``"blur"`` / ``"downsample"`` (integer >= 2).
        noise_std: standard deviation of ``"noise"`` (finite, >= 0).
        input_key: which element of the batch is the input (see above).
        target_key: which element holds the labels (``"label_shuffle"``).
        unit: unit of a tuple ``window``: ``"epoch"`` or ``"step"``.
        seed: seed of the random transforms (integer >= 0).
        name: key of the ``deficit/<name>`` scalar (default ``input/<transform>``).
        spatial_dims: spatial / temporal dimensions of the input (one index or a sequence) for
            ``"blur"``, ``"downsample"`` and ``"vflip"`` (see above).

    Raises:
        ValueError: unknown transform, bad factor / noise_std / seed / keys / spatial_dims /
            window; at the first training batch, a batch element that cannot be found or has
            the wrong shape or dtype (the message lists what the batch holds).

    Example::

        >>> import lightning_critical as lc
        >>> deficit = lc.InputDeficit("blur", window=(0, 40), factor=4)
        >>> deficit.apply((torch.ones(2, 1, 8, 8), torch.tensor([0, 1])))[0].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        transform: str | BatchFn,
        window: WindowLike,
        factor: int = 4,
        noise_std: float = 1.0,
        input_key: Key = None,
        target_key: Key = None,
        unit: str = "epoch",
        seed: int = 0,
        name: str | None = None,
        spatial_dims: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        if isinstance(transform, str) or not callable(transform):
            check_choice("transform", transform, TRANSFORMS, " or a callable batch -> batch")
        self.transform = transform
        self.factor = check_int("factor", factor, 2)
        self.noise_std = check_float("noise_std", noise_std, low=0)
        self.batch_spec = BatchSpec(input_key, target_key, owner=f"InputDeficit({self._label()!r})")
        self.input_key, self.target_key = self.batch_spec.input_key, self.batch_spec.target_key
        self.seed = check_seed("seed", seed)
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        if self.spatial_dims is not None and not (isinstance(transform, str) and TRANSFORMS[transform].spatial):
            spatial = [n for n, t in TRANSFORMS.items() if t.spatial]
            raise ValueError(f"spatial_dims={spatial_dims!r} is only used by the transforms {spatial}, "
                             f"not by transform={self._label()!r}; leave it None.")
        self._batch_idx = 0
        self._checked = False

    def _label(self) -> str:
        return self.transform if isinstance(self.transform, str) else getattr(self.transform, "__name__", "callable")

    @override
    def default_name(self) -> str:
        return f"input/{self._label()}"

    @override
    def repr_settings(self) -> dict[str, str]:
        out = {"transform": repr(self.transform) if isinstance(self.transform, str) else self._label(),
               **super().repr_settings()}
        if self.transform in ("blur", "downsample"):
            out["factor"] = str(self.factor)
        if self.transform == "noise":
            out["noise_std"] = f"{self.noise_std:g}"
        for key in ("input_key", "target_key", "spatial_dims"):
            if getattr(self, key) is not None:
                out[key] = repr(getattr(self, key))
        if self.seed and self.transform in ("noise", "label_shuffle"):
            out["seed"] = str(self.seed)
        return out

    # -- the transform ---------------------------------------------------------------------
    def _spatial_dims_for(self, x: Tensor) -> tuple[int, ...]:
        owner = self.batch_spec.owner
        if self.spatial_dims is None:
            if x.dim() not in _DEFAULT_SPATIAL:
                raise ValueError(
                    f"{owner}: spatial_dims=None has no default for an input of shape {tuple(x.shape)} ({x.dim()}-D): "
                    "only 4-D (N, C, H, W) images and 5-D (N, C, D, H, W) volumes have one. Pass spatial_dims, e.g. "
                    "(1,) for batch-first sequences (N, T, D) or (2,) for signals (N, C, L)."
                )
            return _DEFAULT_SPATIAL[x.dim()]
        dims = tuple(d % x.dim() if -x.dim() <= d < x.dim() else -1 for d in self.spatial_dims)
        if any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"{owner}: spatial_dims={self.spatial_dims!r} do not name distinct non-batch dimensions "
                             f"of the input of shape {tuple(x.shape)}.")
        return tuple(sorted(dims))

    def _element(self, batch: Any, spec: Transform) -> tuple[Key, Tensor, tuple[int, ...]]:
        """The key and tensor the named transform acts on, checked; nothing is modified."""
        key = self.batch_spec.target_key_of(batch) if spec.acts_on == "target" else self.batch_spec.input_key_of(batch)
        tensor = get(batch, key, spec.acts_on, self.batch_spec.owner)
        if spec.floating and not tensor.is_floating_point():
            raise ValueError(
                f"{self.batch_spec.owner} needs a floating-point {spec.acts_on}; element {key!r} has dtype "
                f"{tensor.dtype} and shape {tuple(tensor.shape)}."
            )
        if spec.acts_on == "target" and tensor.dim() == 0:
            raise ValueError(
                f"{self.batch_spec.owner}: the target (element {key!r}) is a scalar; it needs a batch dimension."
            )
        dims = self._spatial_dims_for(tensor) if spec.spatial else ()
        return key, tensor, dims

    def check_batch(self, batch: Any) -> None:
        """Raise the ``ValueError`` that :meth:`apply` would raise on ``batch``, without transforming it."""
        if isinstance(self.transform, str):
            self._element(batch, TRANSFORMS[self.transform])

    def apply(self, batch: Any, step: int = 0, batch_idx: int = 0, rank: int = 0) -> Any:
        """The corrupted copy of ``batch`` (``batch`` is not modified).

        ``step`` (optimizer steps done), ``batch_idx`` (index of the batch in its epoch) and
        ``rank`` (global rank) select the random draw, with :attr:`seed`.
        """
        if callable(self.transform):
            return self.transform(batch)
        spec = TRANSFORMS[self.transform]
        key, tensor, dims = self._element(batch, spec)
        seed = _mixed_seed(self.seed, step, batch_idx, rank)
        ctx = TransformContext(
            self.factor, self.noise_std, dims, lambda device: torch.Generator(device=device).manual_seed(seed)
        )
        return replace(batch, key, spec.fn(tensor, ctx))

    # -- attaching ---------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._checked = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
        if not self._checked:  # a wrong key or shape fails at the first batch, not when the window opens
            self.check_batch(batch)
            self._checked = True
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        def transform(batch: Any) -> Any:
            return self.apply(batch, trainer.global_step, self._batch_idx, trainer.global_rank)

        return [_BatchTransformHandle(pl_module, transform)]


# -- the training_step wrapper -----------------------------------------------------------------
def _own_training_step(module: Any, own: Any) -> Any:
    """What a copy of a wrapped module gets instead of the wrapper: its own ``training_step``."""
    if own is not None:
        return own
    return inspect.getattr_static(type(module), "training_step").__get__(module, type(module))


class _TrainingStep:
    """The ``training_step`` attribute put on a module while input deficits are active.

    It applies the active transforms to the batch and calls the module's own step. It
    presents that step's signature (``__wrapped__``, ``__signature__``), so Lightning passes
    ``batch_idx`` exactly when the module's step takes it. A deep copy or pickle of the module
    gets the module's own ``training_step`` back instead of this wrapper (which would call the
    original module).
    """

    def __init__(self, module: Any, original: Any, own: Any) -> None:
        functools.update_wrapper(self, original)
        self.__signature__ = inspect.signature(original)
        self.module, self.original, self.own = module, original, own
        self.transforms: list[BatchFn] = []

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_probing():
            for transform in self.transforms:
                batch = transform(batch)
        return self.original(batch, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> Any:
        module_copy = memo.get(id(self.module))
        if module_copy is None:  # the wrapper alone is copied: like a function, it is its own copy
            return self
        return _own_training_step(module_copy, copy.deepcopy(self.own, memo) if self.own is not None else None)

    def __reduce__(self) -> tuple:
        return _own_training_step, (self.module, self.own)


class _BatchTransformHandle:
    """Installs one transform in the module's :class:`_TrainingStep`; ``remove()`` undoes it.

    One wrapper per module holds the list of active transforms, so several deficits compose
    and can be removed in any order; the last removal restores the module's ``__dict__``.
    """

    def __init__(self, pl_module: pl.LightningModule, fn: BatchFn) -> None:
        self.module, self.fn = pl_module, fn
        current = pl_module.__dict__.get("training_step")
        if not isinstance(current, _TrainingStep):
            current = _TrainingStep(pl_module, pl_module.training_step, current)
            pl_module.__dict__["training_step"] = current
        current.transforms.append(fn)

    def remove(self) -> None:
        current = self.module.__dict__.get("training_step")
        if not isinstance(current, _TrainingStep):
            return
        if self.fn in current.transforms:
            current.transforms.remove(self.fn)
        if not current.transforms:
            if current.own is not None:
                self.module.__dict__["training_step"] = current.own
            else:
                del self.module.__dict__["training_step"]
