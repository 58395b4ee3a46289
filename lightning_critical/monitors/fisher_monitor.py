"""FisherMonitor: trace of the Fisher information per layer, over training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_critical._batch import InputsFn, describe
from lightning_critical._batch_spec import BatchSpec, forward_arguments
from lightning_critical._checks import check_choice, check_int, check_names, check_seed
from lightning_critical._namespace import pl
from lightning_critical.fisher import LABELS, fisher_layers, fisher_trace
from lightning_critical.history import Record
from lightning_critical.monitors.base import Monitor
from lightning_critical.probing import probing

TOTAL = "total"


class FisherMonitor(Monitor):
    """Record the trace of the Fisher information of each layer every ``every_n_epochs`` epochs.

    Estimator (see :mod:`lightning_critical.fisher`): by default labels sampled from the
    model's own predictive distribution, ``tr F = mean_n ||grad log p(y_n | x_n)||^2``, split
    by layer (the module owning the parameters), plus their sum as target ``"total"``.

    At an epoch due for a record, the model inputs of its first ``num_batches`` training
    batches (as the dataloader yields them, before any :class:`~lightning_critical.InputDeficit`)
    are kept and the trace is computed on all of them at the weights before the update of
    batch ``num_batches - 1`` (at the epoch's end if it is shorter). ``step`` is the number of
    optimizer steps done then. The estimate runs inside
    :func:`~lightning_critical.probing.probing` (deficit hooks inert, every RNG stream
    restored), in eval mode, with a private generator seeded by ``(seed, step)``, without
    writing ``.grad``: training is bitwise unchanged.

    Label noise: with ``labels="sample"`` (the published estimator, one label per example)
    the estimate of a confident model is carried by the few examples that draw a label other
    than the predicted one; when none does, that record drops 10-50x below its neighbours
    (the trace itself does not). ``labels="expected"`` averages over every class exactly, at
    ``classes`` times the cost, and removes these drops. See :mod:`lightning_critical.fisher`.

    When the weights (or the logits) become NaN or infinite the Fisher is undefined: the
    record holds NaN for every layer, a warning is given once, and training goes on.

    Outputs: :meth:`to_frame` (metric ``fisher_trace``, ``index`` -1); logger scalars
    ``fisher_trace/<layer>`` on every rank with identical keys (each rank estimates on its
    own batches); ``<log dir>/<history_file>`` on rank zero, only with a logger (without one,
    nothing is written; the records stay in memory). History semantics (one fit, one
    history; resume continues it): :mod:`lightning_critical.history`.

    Args:
        every_n_epochs: record cadence (epoch 0 is always recorded).
        num_batches: training batches per estimate (>= 1).
        targets: layer names or globs to include (default: every layer with parameters).
        input_key: which batch element is the model's input (index or key; default: the batch
            itself if it is a tensor, element 0 of tuples/lists, the first of
            :data:`~lightning_critical._batch.INPUT_KEYS` of mappings).
        inputs: instead of ``input_key``, a callable ``batch -> tuple of model arguments``
            for models with several inputs: the estimate calls ``model(*inputs(batch))``.
            Every argument must be a tensor whose dimension 0 is the batch. Without either,
            the model gets what its ``forward`` requires (see
            :class:`~lightning_critical.BatchSpec`): by name from mapping batches that hold its
            argument names, else the first ``k`` elements of a tuple batch other than the target
            (the last), so ``forward(x1, x2)`` with ``(x1, x2, y)`` batches works as is.
        seed: seed of the label sampling (integer >= 0).
        labels: ``"sample"`` (one label per example drawn from the model's predictive
            distribution) or ``"expected"`` (every class, weighted by its probability).
        chunk_size: examples per vectorised gradient chunk (memory vs speed).
        history_file: CSV file under the run's log directory (``None``: none).

    Raises:
        ValueError: bad cadence / counts / seed / keys / targets; before training,
            ``targets`` matching no layer (the message lists the layers); at the first
            training batch of the fit (recorded or not, e.g. after a resume into an epoch
            that is not due), an input that cannot be found (the message lists what the
            batch holds).

    Example::

        >>> import lightning_critical as lc
        >>> monitor = lc.FisherMonitor(every_n_epochs=2, num_batches=1)
        >>> monitor.to_frame().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
        >>> two_inputs = lc.FisherMonitor(inputs=lambda batch: (batch[0], batch[1]))
    """

    metric = "fisher_trace"

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_batches: int = 2,
        targets: str | Sequence[str] | None = None,
        input_key: int | str | None = None,
        seed: int = 0,
        chunk_size: int = 32,
        history_file: str | None = "fisher_history.csv",
        inputs: InputsFn | None = None,
        labels: str = "sample",
    ) -> None:
        super().__init__(every_n_steps=None, history_file=history_file)  # the cadence is in epochs: is_due()
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.num_batches = check_int("num_batches", num_batches)
        self.chunk_size = check_int("chunk_size", chunk_size)
        self.targets = check_names("targets", targets, allow_none=True)
        self.batch_spec = BatchSpec(input_key=input_key, inputs=inputs, owner="FisherMonitor")
        self.input_key = self.batch_spec.input_key
        self.seed = check_seed("seed", seed)
        self.labels = check_choice("labels", labels, LABELS)
        self._forward: tuple[str, ...] | None = None
        self.reset()

    def __repr__(self) -> str:
        settings = [f"every_n_epochs={self.every_n_epochs}", f"num_batches={self.num_batches}",
                    f"labels={self.labels!r}"]
        if self.targets is not None:
            settings.append(f"targets={self.targets!r}")
        if self.input_key is not None:
            settings.append(f"input_key={self.input_key!r}")
        if self.batch_spec.inputs is not None:
            settings.append(f"inputs={getattr(self.batch_spec.inputs, '__name__', 'callable')}")
        if self.seed:
            settings.append(f"seed={self.seed}")
        settings.append(f"history_file={self.history_file!r}")
        return f"FisherMonitor({', '.join(settings)})"

    @override
    def reset(self) -> None:
        self._pending: list[tuple[Tensor, ...]] = []
        self._checked = False

    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forward = forward_arguments(pl_module)
        if not fisher_layers(pl_module, self.targets):
            raise ValueError(
                f"FisherMonitor(targets={self.targets!r}) matches no layer with trainable parameters; "
                f"layers: {sorted(fisher_layers(pl_module))[:40]}."
            )

    @override
    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch records (its first ``num_batches`` batches are kept for the estimate)."""
        return trainer.current_epoch % self.every_n_epochs == 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._pending = []
        due = self.is_due(trainer) and batch_idx < self.num_batches
        if not due and self._checked:
            return
        # The first batch of the fit is read even when not due, so a wrong key fails now, not epochs later.
        args = self._model_inputs(batch)
        self._checked = True
        if not due:
            return
        self._pending.append(tuple(a.detach() for a in args))
        if batch_idx == self.num_batches - 1:
            self.record(trainer, pl_module)

    def _model_inputs(self, batch: Any) -> tuple[Tensor, ...]:
        args = self.batch_spec.model_inputs(batch, self._forward)
        if not all(isinstance(a, Tensor) and a.dim() >= 1 for a in args):
            raise ValueError(f"FisherMonitor: every model argument must be a tensor with a batch dimension; got "
                             f"{describe(tuple(args))} (pass inputs=<callable batch -> tuple of tensors>).")
        return args

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:  # the epoch had fewer than num_batches batches
            self.record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = []
        super().on_train_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._pending = []
        super().on_exception(trainer, pl_module, exception)

    @override
    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Estimate on the kept batches now and record (normally called by the hooks)."""
        step, epoch = trainer.global_step, trainer.current_epoch
        pending, self._pending = self._pending, []
        if len({len(args) for args in pending}) != 1:
            raise ValueError(
                "FisherMonitor: inputs(batch) returned different numbers of model arguments for different batches."
            )
        args = tuple(torch.cat(parts) for parts in zip(*pending, strict=True))
        device = args[0].device
        with probing(devices=[device]):
            gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + step)
            try:
                sums = fisher_trace(
                    pl_module, args, self.targets, generator=gen, chunk_size=self.chunk_size, labels=self.labels
                )
            except TypeError as err:  # most often: the model takes other arguments than those given
                raise TypeError(
                    f"FisherMonitor: calling the model with {describe(args)} failed ({err}). Say how a batch becomes "
                    "the model's positional arguments with inputs=<callable batch -> tuple of tensors> (or input_key=)."
                ) from err
        values = {layer: total / count for layer, (total, count) in sums.items()}
        values[TOTAL] = sum(values.values())
        if not math.isfinite(values[TOTAL]):
            self.report_once("nonfinite", f"the model's weights or logits are NaN or infinite at step {step}; the "
                             "Fisher trace is recorded as NaN while that lasts (training continues).", warn=True)
        rows: list[Record] = [(step, epoch, layer, "fisher_trace", -1, v) for layer, v in values.items()]
        self.publish(trainer, rows, {f"fisher_trace/{layer}": v for layer, v in values.items()}, step)
