"""SpectralMonitor: when to record the spectra of a model's matrices, and where the records go.

The callback schedules records, keeps the state between them and hands the rows to the
history and the loggers; what a record holds is computed by the pure
:func:`lightning_critical.spectral.records.spectral_record`, and how it reads in TensorBoard
(histograms, charts) by :mod:`lightning_critical.views` and its TensorBoard implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_critical import views
from lightning_critical._checks import check_choice, check_float_dtype, check_int, check_names
from lightning_critical._namespace import pl
from lightning_critical.cadence import Cadence, EveryNSteps, as_cadence
from lightning_critical.monitors._spectral_targets import check_task_basis, probe_maps
from lightning_critical.monitors.base import Monitor, probe_devices
from lightning_critical.probing import probing
from lightning_critical.protocols import TaskBasis, find_task_basis
from lightning_critical.spectral.formulas import check_basis_fits
from lightning_critical.spectral.matrices import find_weight_matrices, name_matches
from lightning_critical.spectral.metrics import (
    check_metrics,
    metric_names,
    needs_full_spectrum,
    user_metrics,
)
from lightning_critical.spectral.records import RecordSettings, Theory, spectral_record, theory_at
from lightning_critical.spectral.svd import SVD_METHODS

DEFAULT_METRICS: tuple[str, ...] = (
    "singular_values",
    "mode_strength",
    "effective_rank",
    "stable_rank",
    "spectral_norm",
    "frobenius_norm",
)
TARGET_GROUPS: tuple[str, ...] = ("auto", "maps", "weights")


class SpectralMonitor(Monitor):
    """Record the spectra of a model's matrices: densely early in training, then sparser.

    A record is taken before the first update (``step`` 0), then whenever the number of
    optimizer steps completed is due by ``every_n_steps`` (see
    :mod:`lightning_critical.cadence`), and once more when training ends. The default,
    ``"log"`` (:class:`~lightning_critical.cadence.LogSpaced` ``(per_octave=2)``), records at
    steps ``0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...``: every early change is seen, and a
    fit of ``N`` steps costs about ``2 * log2(N)`` records, a few percent of training time or
    less even for small models (``benchmarks/monitor_overhead.py``). An integer ``n`` records
    every ``n`` steps, for evenly spaced curves. Each record holds, for every target matrix,
    the requested metrics (formulas in :mod:`lightning_critical.spectral.metrics`), computed under
    ``torch.no_grad()`` in float32 (float64 for float64 weights, or ``dtype``) on the weights'
    device, batching matrices of equal shape.

    Targets: ``"auto"`` = every map of the module's ``end_to_end_maps()`` plus every weight
    matrix; ``"maps"`` or ``"weights"`` for one group; or names / globs of either, with
    ``exclude`` globs removed. ``mode_strength`` ``K[map, a] = u_a^T W v_a`` is recorded for
    the maps when a task basis is known (``task_basis`` argument, else ``task_basis()`` of the
    module, else of the datamodule); among the default metrics it is simply left out when there
    is none, and a ``mode_strength`` asked for in ``metrics`` that cannot be recorded is reported
    once. Other skipped targets are reported once too.

    Convolutions: a conv weight is one matrix ``(out, in/groups * prod(kernel))``
    (:mod:`lightning_critical.spectral.matrices`), here and in ``analyze(conv="flatten")``;
    :func:`~lightning_critical.spectral.analyze` defaults to weightwatcher's view instead
    (``conv="taps"``: one matrix per kernel position, eigenvalues pooled), so compare this
    monitor's conv values with ``analyze(conv="flatten")``.

    Measuring never changes training: every record (including the module's
    ``end_to_end_maps()``, which may run layers) happens inside
    :func:`lightning_critical.probing.probing` with every submodule in evaluation mode, so
    deficit hooks stay inert, dropout draws nothing, BatchNorm statistics do not move and every
    random-number stream is restored; a run with the monitor ends bitwise equal to one without.

    Histories (see :mod:`lightning_critical.history`): one fit, one history.
    A fit from step 0 starts empty (a monitor reused for a second ``fit`` forgets the first,
    and a file left in the same log directory by an earlier run is replaced, with a warning);
    a fit resumed from a checkpoint keeps the records taken before the checkpoint's step and
    re-takes the later ones, so the file equals that of an uninterrupted run. ``state_dict``
    holds what that needs (the last record's top singular vectors for ``subspace_drift``, and
    which targets go straight to the float64 route), as tensors and plain lists
    (``weights_only`` loading works). ``history_file`` must be a relative path inside the log
    directory and not Lightning's own files; an existing file is only overwritten if it is a
    monitor history.

    Several monitors may share a Trainer (e.g. a cheap one every step on a few maps, a full one
    every 100 steps): :attr:`state_key` is built from ``targets``, ``exclude``,
    ``every_n_steps``, ``metrics``, ``top_k`` and ``history_file``, and two monitors writing
    the same ``history_file`` are refused before training.

    Outputs:

    * :meth:`to_frame`: tidy ``DataFrame`` (step, epoch, target, metric, index, value), with
      ``index`` the singular-value / mode index or -1 for scalars.
    * the same rows appended to ``<log dir>/<history_file>`` as they are recorded (rank zero;
      only with a logger, whose directory it is).
    * logger scalars ``<metric>/<target>``, ``mode_strength/<map>/<a>``,
      ``singular_values/<target>/<i>`` (``i < log_top_k``) and, with ``theory``,
      ``theory/<metric>/<target>/<i>``; on rank zero with TensorBoard, singular-value
      histograms and custom-scalars charts: one per mode overlaying every map's ``K`` (and
      its theory), one per map overlaying its top singular values (and theory), one for deficits.

    Args:
        targets: ``"auto"``, ``"maps"``, ``"weights"`` or names/globs.
        every_n_steps: when to record: ``"log"`` (default, log-spaced), an integer ``n``
            (every ``n`` optimizer steps) or a :class:`~lightning_critical.cadence.Cadence`
            such as ``LogSpaced(per_octave=4, max_every=500)``. Cadences depend on the step
            alone, so a resumed fit records at the same steps as an uninterrupted one.
        metrics: registered metric names (:data:`lightning_critical.spectral.metrics.METRICS` and any
            added by :func:`lightning_critical.spectral.metrics.register_metric`; default
            :data:`DEFAULT_METRICS`; with ``top_k``, those that need the whole spectrum are left
            out, and asking for them is an error).
        exclude: names/globs of targets to leave out.
        top_k: keep only the ``top_k`` largest singular values (enables the randomized path
            for matrices whose both sides are at least ``randomized_min_dim``).
        subspace_k: number of top left singular vectors compared by ``subspace_drift``.
        log_top_k: how many leading singular values are also logged as scalars.
        histograms: write singular-value histograms to TensorBoard.
        theory: ``{metric: {target: array (n_steps + 1, k)}}``; row ``t`` is the prediction
            after ``t`` optimizer steps; logged beside the measurement and overlaid in charts.
        task_basis: ``(U, S, V)`` to use instead of the module's / datamodule's.
        dtype: computation dtype (default float32, float64 for float64 weights).
        history_file: CSV file name under the run's log directory (``None``: no file).
        randomized_min_dim: see ``top_k``.
        method: how full spectra are computed: ``"auto"``, ``"gram"``, ``"gram32"`` or
            ``"svd"``, all float32-SVD accurate except ``"svd"`` on GPUs; see
            :func:`lightning_critical.spectral.svd.singular_values`. With ``"auto"``/``"gram32"`` a
            CPU target found too ill-conditioned for the float32 Gram route at one record goes
            straight to the float64 one at the next.

    Raises:
        ValueError: at construction, for any malformed argument (the message names it and
            lists the valid choices); before training, for targets that match nothing, a task
            basis that does not fit the maps, an existing file that is not a monitor history,
            or two monitors writing one ``history_file``.

    Example::

        >>> import lightning_critical as lc
        >>> monitor = lc.SpectralMonitor(every_n_steps=10, metrics=("singular_values", "stable_rank"))
        >>> monitor.to_frame().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
        >>> monitor.state_key  # doctest: +NORMALIZE_WHITESPACE
        "SpectralMonitor{'targets': 'auto', 'exclude': None, 'every_n_steps': 10,
        'metrics': ('singular_values', 'stable_rank'), 'top_k': None, 'history_file': 'spectral_history.csv'}"
    """

    def __init__(
        self,
        targets: str | Sequence[str] = "auto",
        every_n_steps: int | str | Cadence = "log",
        metrics: Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        top_k: int | None = None,
        subspace_k: int = 5,
        log_top_k: int = 4,
        histograms: bool = True,
        theory: Theory | None = None,
        task_basis: TaskBasis | None = None,
        dtype: torch.dtype | None = None,
        history_file: str | None = "spectral_history.csv",
        randomized_min_dim: int = 2048,
        method: str = "auto",
    ) -> None:
        super().__init__(every_n_steps, history_file)
        cadence = as_cadence(every_n_steps, "every_n_steps")  # as the base made it, typed as never None
        # An integer stays an integer (and keeps its old state_key); a cadence is itself.
        self.every_n_steps: int | Cadence = (
            cadence.n if isinstance(cadence, EveryNSteps) and not isinstance(every_n_steps, Cadence) else cadence
        )
        self.subspace_k = check_int("subspace_k", subspace_k)
        self.log_top_k = check_int("log_top_k", log_top_k, low=0)
        self.top_k = check_int("top_k", top_k, allow_none=True)
        self.randomized_min_dim = check_int("randomized_min_dim", randomized_min_dim)
        # mode_strength among the defaults is recorded when a basis exists, silently skipped otherwise.
        self._asked_for_modes = metrics is not None
        if metrics is None:  # the defaults, less those that a truncated spectrum cannot give
            metrics = tuple(m for m in DEFAULT_METRICS if top_k is None or not needs_full_spectrum(m))
        self.metrics = check_metrics(metrics, "metrics")
        self._user_metrics = user_metrics(self.metrics)  # kept: a sweep worker's registry may lack them
        needs_all = sorted(m for m in self.metrics if needs_full_spectrum(m)) if top_k is not None else []
        if needs_all:
            with_top_k = tuple(m for m in metric_names() if not needs_full_spectrum(m))
            raise ValueError(
                f"top_k={top_k} keeps only the leading singular values, but metrics {needs_all} need all of "
                f"them; drop those metrics or top_k (with top_k: {with_top_k})."
            )
        self.method = check_choice("method", method, SVD_METHODS)
        self.dtype = check_float_dtype("dtype", dtype, allow_none=True)
        if isinstance(targets, str) and targets in TARGET_GROUPS:
            self.group, self.patterns = targets, None
        else:
            try:
                patterns = check_names("targets", targets)
            except ValueError as err:
                raise ValueError(f"{err} Groups: {TARGET_GROUPS}.") from None
            self.group, self.patterns = "patterns", patterns
        self.exclude = check_names("exclude", exclude, allow_none=True)
        if theory is not None and not isinstance(theory, Mapping):
            raise ValueError(f"theory={theory!r} is not valid: give {{metric: {{target: array}}}}.")
        self.theory = {m: dict(t) for m, t in (theory or {}).items()}
        if self.theory:
            check_metrics(list(self.theory), "theory")
        self.task_basis = check_task_basis(task_basis)
        self.histograms = histograms
        self.reset()

    @override
    def reset(self) -> None:
        """Forget everything a previous fit left (called when a fit is set up, before a checkpoint is restored)."""
        self._prev_vectors: dict[str, Tensor] = {}
        self._vectors_step: int | None = None
        self._float64_hint: set[str] = set()
        self._charts: tuple[list[str], list[str], int] = ([], [], 0)  # maps, targets, modes: what check() found

    # -- public ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        settings = [f"targets={self.patterns or self.group!r}", f"every_n_steps={self.every_n_steps}",
                    f"metrics={self.metrics!r}"]
        for key in ("exclude", "top_k"):
            if getattr(self, key) is not None:
                settings.append(f"{key}={getattr(self, key)!r}")
        if self.task_basis is not None:
            settings.append(f"task_basis=given (rank {self.task_basis[0].shape[1]})")
        if self.theory:
            settings.append(f"theory={sorted(self.theory)}")
        settings.append(f"history_file={self.history_file!r}")
        return f"SpectralMonitor({', '.join(settings)})"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            targets=self.patterns or self.group, exclude=self.exclude, every_n_steps=self.every_n_steps,
            metrics=self.metrics, top_k=self.top_k, history_file=self.history_file,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        # What a resumed run needs to continue exactly: the vectors subspace_drift compares
        # with, and the float64-route hints (they decide the bits of the next spectra).
        return {
            "vectors_step": self._vectors_step,
            "vectors": {name: u.detach().cpu().clone() for name, u in self._prev_vectors.items()},
            "float64_hint": sorted(self._float64_hint),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._vectors_step = state_dict.get("vectors_step")
        self._prev_vectors = dict(state_dict.get("vectors", {}))
        self._float64_hint = set(state_dict.get("float64_hint", ()))

    # -- target discovery -----------------------------------------------------------------
    def collect(self, pl_module: torch.nn.Module) -> tuple[dict[str, Tensor], set[str]]:
        """The matrices to analyse now, and which of them are end-to-end maps.

        The maps are computed inside :func:`~lightning_critical.probing.probing`, with every
        submodule in evaluation mode, so that running the model leaves no trace on training.
        """
        maps: dict[str, Tensor] = {}
        if self.group in ("auto", "maps", "patterns"):
            maps = probe_maps(pl_module)
        if self.patterns is not None:
            maps = {k: v for k, v in maps.items() if name_matches(k, self.patterns)}
        if self.exclude is not None:
            maps = {k: v for k, v in maps.items() if not name_matches(k, self.exclude)}
        weights: dict[str, Tensor] = {}
        if self.group in ("auto", "weights") or (self.patterns is not None):
            weights = find_weight_matrices(pl_module, include=self.patterns, exclude=self.exclude)
        out = {**weights, **maps}
        return out, set(maps)

    def _basis(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> TaskBasis | None:
        if self.task_basis is not None:
            return self.task_basis
        return find_task_basis(pl_module, getattr(trainer, "datamodule", None))

    # -- hooks ----------------------------------------------------------------------------
    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse targets that match nothing and a task basis that does not fit the maps; report what is skipped."""
        with probing(probe_devices(pl_module)):
            self._check(trainer, pl_module)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mats, map_names = self.collect(pl_module)
        if not mats:
            raise ValueError(
                f"SpectralMonitor(targets={self.patterns or self.group!r}) found no matrix in "
                f"{type(pl_module).__name__}; available: maps {sorted(probe_maps(pl_module))}, "
                f"weights {sorted(find_weight_matrices(pl_module))[:40]}."
            )
        basis = self._basis(trainer, pl_module)
        if "mode_strength" in self.metrics:
            if basis is None:
                if self._asked_for_modes:
                    self.report_once(
                        "no-basis", "mode_strength skipped: no task basis (task_basis() on the module or datamodule)."
                    )
            elif not map_names:
                if self._asked_for_modes:
                    why = ("the module has no end_to_end_maps()" if not probe_maps(pl_module)
                           else f"targets={self.patterns or self.group!r} selects no end-to-end map")
                    self.report_once("no-maps", f"mode_strength skipped: {why}.")
            else:
                for name in sorted(map_names):
                    check_basis_fits(tuple(mats[name].shape), basis[0], basis[2], what=f"end-to-end map {name!r}")
        modes = basis[0].shape[1] if basis is not None and "mode_strength" in self.metrics else 0
        self._charts = (sorted(map_names), list(mats), modes)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)  # check(), then the history
        if self._vectors_step is not None and self._vectors_step >= trainer.global_step:
            self._prev_vectors, self._vectors_step = {}, None
        self._write_charts(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            # The closing record leaves the state as the last regular record left it, so that a
            # checkpoint saved after fit resumes exactly like the uninterrupted longer run.
            self.record(trainer, pl_module, _keep_state=False)
        super().on_train_end(trainer, pl_module)  # the history, then the view (which closes the series runs)

    # -- what the run shows (the views' call sites) ----------------------------------------
    def _write_charts(self, trainer: pl.Trainer) -> None:
        maps, targets, modes = self._charts
        views.of(trainer).chart_spectra(
            maps, targets, modes=modes,
            singular_values=self.log_top_k if "singular_values" in self.metrics else 0,
            theory={m: list(by_target) for m, by_target in self.theory.items()},
        )

    def _show(self, trainer: pl.Trainer, spectra: Mapping[str, Tensor], step: int) -> None:
        # The scalars went out with publish() (Monitor._log); only the histograms are left.
        if self.histograms and "singular_values" in self.metrics:
            views.of(trainer).histograms({f"singular_values/{name}": s for name, s in spectra.items()}, step)

    # -- recording ------------------------------------------------------------------------
    @override
    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, _keep_state: bool = True) -> None:
        """Take one record of every target now (normally called by the hooks).

        Runs inside :func:`~lightning_critical.probing.probing`: deficit hooks are inert and
        every random-number stream is restored afterwards.
        """
        with probing(probe_devices(pl_module)):
            self._record(trainer, pl_module, _keep_state)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, keep_state: bool) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        self._last_step = step
        mats, map_names = self.collect(pl_module)
        settings = RecordSettings(
            metrics=self.metrics, top_k=self.top_k, subspace_k=self.subspace_k, log_top_k=self.log_top_k,
            registered=self._user_metrics, dtype=self.dtype, method=self.method,
            randomized_min_dim=self.randomized_min_dim,
        )
        basis = self._basis(trainer, pl_module) if "mode_strength" in self.metrics else None
        record = spectral_record(mats, step, epoch, settings, maps=map_names, basis=basis,
                                 previous_vectors=self._prev_vectors, float64_hint=self._float64_hint)
        for name in record.nonfinite:
            self.report_once(f"nonfinite:{name}", f"{name!r} has NaN or Inf entries at step {step}; its metrics "
                             "are recorded as NaN while that lasts (training continues).", warn=True)
        if keep_state:
            self._prev_vectors, self._float64_hint = record.vectors, record.float64_hint
            if "subspace_drift" in self.metrics:
                self._vectors_step = step
        scalars = {**record.scalars, **theory_at(self.theory, step)}
        self.publish(trainer, record.rows, scalars, step)
        self._show(trainer, record.spectra, step)
