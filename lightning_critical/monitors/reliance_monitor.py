"""RelianceMonitor: how much the network uses each input source or pathway, over training."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import Tensor
from typing_extensions import override

from lightning_critical._checks import check_int
from lightning_critical._lightning import history_path
from lightning_critical._namespace import pl
from lightning_critical.history import History, Record, check_history_file
from lightning_critical.reliance.ablation import MetricFn
from lightning_critical.reliance.fisher_share import pathway_layers
from lightning_critical.reliance.sources import PathwaySources, SourcesLike, as_sources
from lightning_critical.reliance.summary import Reliance


class RelianceMonitor(pl.Callback):
    """Record the reliance measures of :mod:`lightning_critical.reliance` every ``every_n_epochs`` epochs.

    At the end of every due training epoch (epoch 0, every ``every_n_epochs``-th, and the
    last) the measures run on the first ``max_examples`` examples of the datamodule's
    ``dataloader`` (read once per fit) and are sent to every logger of the trainer as
    ``reliance/<measure>/<source>`` scalars at the current optimizer step (the keys of
    :func:`~lightning_critical.reliance.reliance_metrics`, e.g. ``reliance/ablation/b``,
    ``reliance/rsv/mean``, ``reliance/fisher_share/a``). The measurement runs in eval mode,
    without gradients, inside :func:`~lightning_critical.probing.probing` (deficit hooks inert,
    every RNG stream restored): training is bitwise unchanged. A deficit in its window is
    therefore not seen: the monitor measures the intact network on clean examples.

    Outputs: :meth:`to_frame` (long format: ``target`` is ``<measure>/<what>``, ``metric``
    ``"reliance"``, ``index`` -1); ``<log dir>/<history_file>`` on rank zero with a logger
    (history semantics: :mod:`lightning_critical.history`).

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

    def __init__(self, measures: Sequence[str] = ("ablation", "rsv"), sources: SourcesLike = None,
                 every_n_epochs: int = 1, dataloader: str = "val", max_examples: int = 256, layer: str | None = None,
                 pair: Sequence[str] | None = None, replace: str = "shuffle", metric: str | MetricFn = "accuracy",
                 likelihood: str = "categorical", fixed: int = 32, seed: int = 0,
                 history_file: str | None = "reliance_history.csv") -> None:
        self.reliance = Reliance(measures=measures, sources=sources, dataloader=dataloader, max_examples=max_examples,
                                 layer=layer, pair=pair, replace=replace, metric=metric, likelihood=likelihood,
                                 fixed=fixed, seed=seed)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.history_file = check_history_file(history_file)
        self.history = History()
        self._examples: tuple[tuple[Tensor, ...], Tensor] | None = None

    def __repr__(self) -> str:
        r = self.reliance
        return (f"RelianceMonitor(measures={r.measures!r}, every_n_epochs={self.every_n_epochs}, "
                f"dataloader={r.dataloader!r}, history_file={self.history_file!r})")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(measures=self.reliance.measures, history_file=self.history_file)

    def to_frame(self) -> pd.DataFrame:
        """Everything recorded in this fit (and, after a resume, the run's earlier records) as a tidy ``DataFrame``."""
        return self.history.to_frame()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._examples = None
        self._check(trainer, pl_module)
        self.history.start(history_path(trainer, self.history_file), from_step=trainer.global_step)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return epoch % self.every_n_epochs == 0 or last

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due(trainer):
            self.record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.history.close()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.history.close()

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now, keep the records and send them to the loggers (normally called by the hooks)."""
        if self._examples is None:
            self._examples = self.reliance.examples(trainer, pl_module)
        values = self.reliance.measure(pl_module, *self._examples)
        step, epoch = trainer.global_step, trainer.current_epoch
        rows: list[Record] = [(step, epoch, key.removeprefix("reliance/"), "reliance", -1, v)
                              for key, v in values.items()]
        self.history.extend(rows, write=trainer.is_global_zero)
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=step)
        return values
