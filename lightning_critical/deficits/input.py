"""InputDeficit: corrupt the training inputs (or labels) during a window, e.g. blur them."""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_critical._checks import check_int
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.schedule import WindowLike

TRANSFORMS: tuple[str, ...] = ("blur", "downsample", "noise", "vflip", "label_shuffle")
INPUT_KEYS: tuple[str, ...] = ("input", "inputs", "x", "image", "images", "pixel_values")
TARGET_KEYS: tuple[str, ...] = ("target", "targets", "y", "label", "labels")
_UPSAMPLE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_MARK = "_lightning_critical_batch_transforms"

Key = Union[int, str, None]
BatchFn = Callable[[Any], Any]


def blur(x: Tensor, factor: int) -> Tensor:
    """Downsample by ``factor`` (area averaging) and upsample back (linear interpolation).

    ``x`` is ``(N, C, *spatial)`` with 1 to 3 spatial dimensions; each spatial size ``L``
    goes to ``max(1, L // factor)`` and back to ``L``, so the shape is unchanged.

    Example::

        >>> blur(torch.ones(1, 1, 8, 8), 4).shape
        torch.Size([1, 1, 8, 8])
    """
    size = tuple(x.shape[2:])
    return F.interpolate(downsample(x, factor), size=size, mode=_UPSAMPLE_MODES[len(size)], align_corners=False)


def downsample(x: Tensor, factor: int) -> Tensor:
    """Area-average ``(N, C, *spatial)`` down to ``max(1, L // factor)`` per spatial size ``L``.

    Example::

        >>> downsample(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    _check_spatial(x, "downsample")
    size = tuple(max(1, s // factor) for s in x.shape[2:])
    return F.interpolate(x, size=size, mode="area")


def _check_spatial(x: Tensor, what: str) -> None:
    if not 3 <= x.dim() <= 5 or not x.is_floating_point():
        raise ValueError(
            f"InputDeficit({what!r}) needs a floating input of shape (N, C, *spatial) with 1 to 3 spatial "
            f"dimensions; got dtype {x.dtype} and shape {tuple(x.shape)}."
        )


def _generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    # Seeded by (seed, step): a resumed run draws the same corruption, and the global RNG
    # (data order, dropout) is never touched.
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step * 9_973) % (2**63 - 1))


class InputDeficit(WindowedDeficit):
    """Corrupt the training batches inside a window; validation and test batches stay clean.

    The classic critical-period protocol (Achille, Rovere & Soatto, ICLR 2019) blurs the
    training images for the first ``T`` epochs: ``InputDeficit("blur", window=(0, T))``.

    Mechanism: while the window is active, the LightningModule's ``training_step`` is
    wrapped (an instance attribute, the same forward-redirection trick Lightning's own
    strategies use) so the step receives the corrupted batch; nothing else sees it. The
    wrapper is removed at the window's end, before validation, at the end of ``fit``, on an
    exception and at teardown, restoring the module exactly. Several input deficits may be
    active at once; they apply in callback order.

    Transforms (``x`` = the batch's input, ``(N, C, *spatial)`` for the image ones):

    * ``"blur"``: :func:`blur`, area-downsample by ``factor`` then linearly upsample back.
    * ``"downsample"``: :func:`downsample` only; the input shrinks, so the model must accept
      smaller inputs (e.g. global pooling).
    * ``"noise"``: ``x + noise_std * N(0, 1)``.
    * ``"vflip"``: flip the height axis (``dim -2``).
    * ``"label_shuffle"``: the targets are permuted within the batch (random labels with
      the true label frequencies); the inputs are unchanged.
    * a callable ``batch -> batch``: applied to the whole batch.

    Random draws use a private generator seeded by ``(seed, global_step)``.

    Which element is the input (or target): the batch itself if it is a tensor; for
    tuples/lists index ``input_key`` (default 0) / ``target_key`` (default 1); for dicts key
    ``input_key`` / ``target_key``, by default the first key present among
    ``("input", "inputs", "x", "image", "images", "pixel_values")`` /
    ``("target", "targets", "y", "label", "labels")``. The batch is shallow-copied, never
    modified in place, so data held by the dataset is never corrupted.

    Args:
        transform: one of ``TRANSFORMS`` or a callable ``batch -> batch``.
        window: ``lc.Window`` or ``(start, end)``; half-open, in ``unit``.
        factor: resolution divisor of ``"blur"`` / ``"downsample"`` (integer >= 2).
        noise_std: standard deviation of ``"noise"`` (>= 0).
        input_key: which element of the batch is the input (see above).
        target_key: which element holds the labels (``"label_shuffle"``).
        unit: unit of a tuple ``window``: ``"epoch"`` or ``"step"``.
        seed: seed of the random transforms.
        name: key of the ``deficit/<name>`` scalar (default ``input/<transform>``).

    Raises:
        ValueError: unknown transform, bad factor / noise_std / window; during training, a
            batch element that cannot be found or has the wrong shape (the message lists what
            the batch holds).

    Example::

        >>> import lightning_critical as lc
        >>> deficit = lc.InputDeficit("blur", window=(0, 40), factor=4)
        >>> deficit.apply((torch.ones(2, 1, 8, 8), torch.tensor([0, 1])))[0].shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        transform: Union[str, BatchFn],
        window: WindowLike,
        factor: int = 4,
        noise_std: float = 1.0,
        input_key: Key = None,
        target_key: Key = None,
        unit: str = "epoch",
        seed: int = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        if isinstance(transform, str):
            if transform not in TRANSFORMS:
                raise ValueError(f"transform={transform!r} is not valid; choose one of {TRANSFORMS} or a callable.")
        elif not callable(transform):
            raise ValueError(f"transform={transform!r} is not valid; choose one of {TRANSFORMS} or a callable.")
        check_int("factor", factor, 2)
        if not noise_std >= 0:
            raise ValueError(f"noise_std={noise_std!r} must be >= 0.")
        for what, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and (isinstance(key, bool) or not isinstance(key, (int, str))):
                raise ValueError(f"{what}={key!r} must be None, an index or a dict key.")
        self.transform = transform
        self.factor = factor
        self.noise_std = float(noise_std)
        self.input_key = input_key
        self.target_key = target_key
        self.seed = int(seed)

    def _default_name(self) -> str:
        label = self.transform if isinstance(self.transform, str) else getattr(self.transform, "__name__", "callable")
        return f"input/{label}"

    # -- the transform ---------------------------------------------------------------------
    def apply(self, batch: Any, step: int = 0) -> Any:
        """The corrupted copy of ``batch`` at optimizer step ``step`` (``batch`` is not modified)."""
        t = self.transform
        if callable(t):
            return t(batch)
        if t == "label_shuffle":
            key = self._key(batch, self.target_key, TARGET_KEYS, 1, "target_key")
            y = _get(batch, key)
            perm = torch.randperm(y.shape[0], generator=_generator(torch.device("cpu"), self.seed, step)).to(y.device)
            return _replace(batch, key, y[perm])
        key = self._key(batch, self.input_key, INPUT_KEYS, 0, "input_key")
        x = _get(batch, key)
        if t == "blur":
            _check_spatial(x, t)
            new = blur(x, self.factor)
        elif t == "downsample":
            new = downsample(x, self.factor)
        elif t == "vflip":
            _check_spatial(x, t)
            new = x.flip(-2)
        else:  # noise
            if not x.is_floating_point():
                raise ValueError(f"InputDeficit('noise') needs a floating input; got dtype {x.dtype}.")
            gen = _generator(x.device, self.seed, step)
            new = x + self.noise_std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return _replace(batch, key, new)

    @staticmethod
    def _key(batch: Any, key: Key, names: tuple[str, ...], index: int, what: str) -> Key:
        if isinstance(batch, Tensor):
            if what == "target_key":
                raise ValueError("InputDeficit('label_shuffle') needs a batch holding labels, got a single tensor.")
            return None
        if isinstance(batch, dict):
            if key is None:
                key = next((k for k in names if k in batch), None)
            if key not in batch:
                raise ValueError(f"InputDeficit: {what}={key!r} is not in the batch; its keys are {list(batch)}. Pass {what}=<key>.")
            return key
        if isinstance(batch, (tuple, list)):
            key = index if key is None else key
            if not isinstance(key, int) or not -len(batch) <= key < len(batch):
                raise ValueError(f"InputDeficit: {what}={key!r} is not an index of the batch of {len(batch)} elements.")
            return key
        raise ValueError(f"InputDeficit cannot read a batch of type {type(batch).__name__}; use tensors, tuples, lists or dicts.")

    # -- attaching ---------------------------------------------------------------------------
    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[Any]:
        return [_BatchTransformHandle(pl_module, lambda batch: self.apply(batch, trainer.global_step))]


def _get(batch: Any, key: Key) -> Tensor:
    value = batch if key is None else batch[key]
    if not isinstance(value, Tensor):
        raise ValueError(f"InputDeficit: batch element {key!r} is a {type(value).__name__}, not a tensor.")
    return value


def _replace(batch: Any, key: Key, value: Tensor) -> Any:
    if key is None:
        return value
    if isinstance(batch, tuple):
        items = list(batch)
        items[key] = value  # type: ignore[index]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    out = copy.copy(batch)
    out[key] = value
    return out


class _BatchTransformHandle:
    """Wraps ``pl_module.training_step`` so it sees transformed batches; ``remove()`` undoes it.

    One wrapper per module holds the list of active transforms, so several deficits compose
    and can be removed in any order; the last removal restores the module's ``__dict__``.
    """

    def __init__(self, pl_module: "pl.LightningModule", fn: BatchFn) -> None:
        self.module, self.fn = pl_module, fn
        current = pl_module.__dict__.get("training_step")
        if current is None or not hasattr(current, _MARK):
            original = pl_module.training_step
            had_own = "training_step" in pl_module.__dict__
            transforms: list[BatchFn] = []

            def training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
                for transform in transforms:
                    batch = transform(batch)
                return original(batch, *args, **kwargs)

            setattr(training_step, _MARK, (transforms, original, had_own))
            pl_module.__dict__["training_step"] = training_step
            current = training_step
        getattr(current, _MARK)[0].append(fn)

    def remove(self) -> None:
        current = self.module.__dict__.get("training_step")
        if current is None or not hasattr(current, _MARK):
            return
        transforms, original, had_own = getattr(current, _MARK)
        if self.fn in transforms:
            transforms.remove(self.fn)
        if not transforms:
            if had_own:
                self.module.__dict__["training_step"] = original
            else:
                del self.module.__dict__["training_step"]
