"""RelianceMonitor: how much the network uses each input source or pathway, over training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from typing_extensions import override

from lightning_critical._checks import check_int
from lightning_critical._namespace import pl
from lightning_critical.monitors.base import Monitor
from lightning_critical.reliance.ablation import MetricFn
from lightning_critical.reliance.fisher_share import pathway_layers
from lightning_critical.reliance.sources import PathwaySources, SourcesLike, as_sources
from lightning_critical.reliance.summary import Reliance


class RelianceMonitor(Monitor):
    """Record the reliance measures of :mod:`lightning_critical.reliance` every ``every_n_epochs`` epochs.

    Before the first update of every due epoch (epoch 0 and every ``every_n_epochs``-th), and
    once more at the end of training, the measures run on the first ``max_examples`` examples
    of the datamodule's ``dataloader`` (read once per fit) and are sent to every logger of the
    trainer as ``reliance/<measure>/<source>`` scalars at the current optimizer step (the keys of
    :func:`~lightning_critical.reliance.reliance_metrics`, e.g. ``reliance/ablation/b``,
    ``reliance/rsv/mean``, ``reliance/fisher_share/a``). The measurement runs in eval mode,
    without gradients, inside :func:`~lightning_critical.probing.probing` (deficit hooks inert,
    every RNG stream restored): training is bitwise unchanged. A deficit in its window is
    therefore not seen: the monitor measures the intact network on clean examples.

    Outputs: :meth:`to_frame` (long format: ``target`` is ``<measure>/<what>``, ``metric``
    ``"reliance"``, ``index`` -1); ``<log dir>/<history_file>`` on rank zero with a logger
    (history semantics and the rest: :class:`~lightning_critical.monitors.Monitor`).

    Args:
        measures: any of ``"ablation"``, ``"rsv"``, ``"fisher_share"`` (default the first two;
            the Fisher share needs pathways).
        sources: pathway names, ``{name: forward argument index}``, a
            :class:`~lightning_critical.reliance.Sources`, or ``None`` (the model's pathways,
            else its forward arguments).
        every_n_epochs: record cadence.
        dataloader: ``"val"`` (default), ``"train"`` or ``"test"`` loader of the datamodule.
        max_examples: examples measured on.
        layer: the submodule whose units the RSV reads (``None``: the model's output).
        pair, replace, metric, likelihood, fixed, seed: see :class:`~lightning_critical.reliance.Reliance`.
        history_file: CSV file under the run's log directory (``None``: none).

    Raises:
        ValueError: bad settings; before training, sources or a layer the model lacks, or a
            datamodule without the chosen dataloader.

    Example::

        >>> import lightning_critical as lc
        >>> monitor = lc.RelianceMonitor(measures=("ablation",), every_n_epochs=5)
        >>> monitor.to_frame().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
    """

    metric = "reliance"

    def __init__(self, measures: Sequence[str] = ("ablation", "rsv"), sources: SourcesLike = None,
                 every_n_epochs: int = 1, dataloader: str = "val", max_examples: int = 256, layer: str | None = None,
                 pair: Sequence[str] | None = None, replace: str = "shuffle", metric: str | MetricFn = "accuracy",
                 likelihood: str = "categorical", fixed: int = 32, seed: int = 0,
                 history_file: str | None = "reliance_history.csv") -> None:
        super().__init__(every_n_steps=None, history_file=history_file)  # the cadence is in epochs: is_due()
        self.reliance = Reliance(measures=measures, sources=sources, dataloader=dataloader, max_examples=max_examples,
                                 layer=layer, pair=pair, replace=replace, metric=metric, likelihood=likelihood,
                                 fixed=fixed, seed=seed)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self._examples: tuple[tuple[Tensor, ...], Tensor] | None = None
        self._measured_at: int | None = None

    def __repr__(self) -> str:
        r = self.reliance
        return (f"RelianceMonitor(measures={r.measures!r}, every_n_epochs={self.every_n_epochs}, "
                f"dataloader={r.dataloader!r}, history_file={self.history_file!r})")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(measures=self.reliance.measures, history_file=self.history_file)

    @override
    def reset(self) -> None:
        self._examples = None
        self._measured_at = None

    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        r = self.reliance
        sources = as_sources(r.sources, pl_module)
        if len(sources.names) < 2 and "rsv" in r.measures:
            raise ValueError(f"RelianceMonitor: the RSV compares two sources; the model has {list(sources.names)}.")
        if r.pair is not None:
            sources.check(list(r.pair), "pair")
        if "fisher_share" in r.measures:
            pathway_layers(pl_module, list(sources.names) if isinstance(sources, PathwaySources) else None)
        if r.layer is not None:
            try:
                pl_module.get_submodule(r.layer)
            except AttributeError as err:
                raise ValueError(f"RelianceMonitor: layer={r.layer!r} is not a submodule of "
                                 f"{type(pl_module).__name__}.") from err
        datamodule = getattr(trainer, "datamodule", None)
        if not callable(getattr(datamodule, f"{r.dataloader}_dataloader", None)):
            raise ValueError(f"RelianceMonitor(dataloader={r.dataloader!r}) needs a datamodule with "
                             f"{r.dataloader}_dataloader(); got {type(datamodule).__name__}.")

    @override
    def is_due(self, trainer: pl.Trainer) -> bool:
        """Due at epoch 0 and every ``every_n_epochs``-th epoch (before its first update: see the batch hook)."""
        return trainer.current_epoch % self.every_n_epochs == 0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        if self._examples is None:
            self._examples = self.reliance.examples(trainer, pl_module)
        values = self.reliance.measure(pl_module, *self._examples)
        self._measured_at = trainer.global_step
        return {key.removeprefix("reliance/"): value for key, value in values.items()}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._measured_at != trainer.global_step:  # the trained network, unless just measured
            self.record(trainer, pl_module)
        super().on_train_end(trainer, pl_module)
