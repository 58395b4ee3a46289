"""InputDeficit: the callback that corrupts the training inputs (or labels) during a window, e.g. blurs them.

The transforms themselves are in :mod:`lightning_critical.deficits.transforms` (a registry a
user can extend), the batch look-ups in :mod:`lightning_critical._batch`, and the
``training_step`` wrapping in :mod:`lightning_critical.deficits._training_step`; this module
only decides when and on which element they act.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_critical._batch import Key, get, replace
from lightning_critical._batch_spec import BatchSpec
from lightning_critical._checks import check_choice, check_float, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical.deficits._training_step import BatchFn, BatchTransformHandle
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.transforms import (
    TRANSFORMS,
    Transform,
    TransformContext,
    check_spatial_dims,
    spatial_dims_of,
)
from lightning_critical.schedule import WindowLike

__all__ = ["InputDeficit"]


def _mixed_seed(*parts: int) -> int:
    # A platform-independent 63-bit seed from integers (Python's hash() of a tuple is not documented as stable).
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class InputDeficit(WindowedDeficit):
    """Corrupt the training batches inside a window; validation and test batches stay clean.

    The classic critical-period protocol (Achille, Rovere & Soatto, ICLR 2019) blurs the
    training images for the first ``T`` epochs: ``InputDeficit("blur", window=(0, T))``.

    Mechanism (:mod:`lightning_critical.deficits._training_step`): while the window is
    active, the LightningModule's ``training_step`` is wrapped (an instance attribute, the
    same forward-redirection trick Lightning's own strategies use) so the step receives the
    corrupted batch; nothing else sees it. The wrapper has the signature of the module's own
    ``training_step`` (Lightning passes ``batch_idx`` only to steps that take it). It is
    removed at the window's end, before validation, at the end of ``fit``, on an exception
    and at teardown, restoring the module exactly; a ``copy.deepcopy`` (EMA, snapshots) or
    pickle of the module taken inside the window gets the module's own, unwrapped
    ``training_step``. Several input deficits may be active at once; they apply in callback
    order.

    Transforms (``x`` = the batch's input), from the registry
    :data:`~lightning_critical.deficits.transforms.TRANSFORMS`, to which
    :func:`~lightning_critical.deficits.transforms.register_transform` adds a name:

    * ``"blur"``: :func:`~lightning_critical.deficits.transforms.blur`, area-downsample by
      ``factor`` then linearly upsample back, over ``spatial_dims``.
    * ``"downsample"``: :func:`~lightning_critical.deficits.transforms.downsample` only; the input
      shrinks, so the model must accept smaller inputs (e.g. global pooling).
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
    first present among :data:`~lightning_critical._batch.INPUT_KEYS` /
    :data:`~lightning_critical._batch.TARGET_KEYS`
    (``("y", "label", "labels", "target", "targets")``). A model with several inputs has one
    of them corrupted: ``input_key`` chooses it, e.g. ``InputDeficit("blur", window,
    input_key=1)`` blurs ``x2`` of ``(x1, x2, y)`` batches (the target stays the last element);
    to corrupt several, use one deficit per input. The batch is copied, never modified in
    place, so data held by the dataset is never corrupted. The batch's structure is checked at
    the first training batch of the fit, even when the window opens later.

    Args:
        transform: a name in :data:`~lightning_critical.deficits.transforms.TRANSFORMS` or a callable
            ``batch -> batch``.
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
        # Resolved now, so the deficit carries its transform (into sweep workers too, whose
        # registry holds only what their imports registered) and later registry edits do not
        # change an experiment already set up.
        self.transform_spec: Transform | None = TRANSFORMS[transform] if isinstance(transform, str) else None
        self.factor = check_int("factor", factor, 2)
        self.noise_std = check_float("noise_std", noise_std, low=0)
        self.batch_spec = BatchSpec(input_key, target_key, owner=f"InputDeficit({self._label()!r})")
        self.input_key, self.target_key = self.batch_spec.input_key, self.batch_spec.target_key
        self.seed = check_seed("seed", seed)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if self.spatial_dims is not None and not (self.transform_spec is not None and self.transform_spec.spatial):
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
        dims = spatial_dims_of(tensor, self.spatial_dims, self.batch_spec.owner) if spec.spatial else ()
        return key, tensor, dims

    def check_batch(self, batch: Any) -> None:
        """Raise the ``ValueError`` that :meth:`apply` would raise on ``batch``, without transforming it."""
        if self.transform_spec is not None:
            self._element(batch, self.transform_spec)

    def apply(self, batch: Any, step: int = 0, batch_idx: int = 0, rank: int = 0) -> Any:
        """The corrupted copy of ``batch`` (``batch`` is not modified).

        ``step`` (optimizer steps done), ``batch_idx`` (index of the batch in its epoch) and
        ``rank`` (global rank) select the random draw, with :attr:`seed`.
        """
        spec = self.transform_spec
        if spec is None:
            return self.transform(batch)  # type: ignore[operator]  # only a callable has no spec
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

        return [BatchTransformHandle(pl_module, transform)]
