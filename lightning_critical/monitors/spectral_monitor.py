"""SpectralMonitor: singular values and spectral metrics of a model's matrices over training."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_critical._checks import check_int
from lightning_critical._lightning import history_path, log_scalars, tensorboard_writers
from lightning_critical.monitors.history import History, Record, check_history_file
from lightning_critical.protocols import TaskBasis, end_to_end_maps, find_task_basis
from lightning_critical.spectral import (
    GRAM_MIN_DIM,
    SCALAR_METRICS,
    SVD_METHODS,
    check_basis_fits,
    check_metrics,
    find_weight_matrices,
    float32_gram_accepts,
    mode_strengths,
    name_matches,
    scalar_metrics,
    singular_values,
    subspace_drift,
)

DEFAULT_METRICS: tuple[str, ...] = (
    "singular_values",
    "mode_strength",
    "effective_rank",
    "stable_rank",
    "spectral_norm",
    "frobenius_norm",
)
TARGET_GROUPS: tuple[str, ...] = ("auto", "maps", "weights")
# Metrics that need every singular value, and those still exact from the leading ones.
FULL_SPECTRUM_METRICS: tuple[str, ...] = ("nuclear_norm", "effective_rank", "participation_ratio", "condition_number")
TOP_K_METRICS: tuple[str, ...] = ("singular_values", "mode_strength", "spectral_norm", "frobenius_norm", "stable_rank",
                                  "subspace_drift")

Theory = Mapping[str, Mapping[str, Any]]


class SpectralMonitor(Callback):
    """Record the spectra of a model's matrices every ``every_n_steps`` optimizer steps.

    A record is taken before the first update (``step`` 0), then whenever the number of
    optimizer steps completed is a multiple of ``every_n_steps``, and once more when training
    ends. Each record holds, for every target matrix, the requested metrics (formulas in
    :mod:`lightning_critical.spectral`), computed under ``torch.no_grad()`` in float32 (float64
    for float64 weights, or ``dtype``) on the weights' device, batching matrices of equal shape.

    Targets: ``"auto"`` = every map of the module's ``end_to_end_maps()`` plus every weight
    matrix; ``"maps"`` or ``"weights"`` for one group; or names / globs of either, with
    ``exclude`` globs removed. ``mode_strength`` ``K[map, a] = u_a^T W v_a`` is recorded for
    the maps when a task basis is known (``task_basis`` argument, else ``task_basis()`` of the
    module, else of the datamodule). A target skipped for any reason is reported once.

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
        every_n_steps: record cadence in optimizer steps.
        metrics: names from :data:`lightning_critical.spectral.METRICS` (default
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
            :func:`lightning_critical.spectral.singular_values`. With ``"auto"``/``"gram32"`` a
            CPU target found too ill-conditioned for the float32 Gram route at one record goes
            straight to the float64 one at the next.

    Example::

        >>> import lightning_critical as lc
        >>> monitor = lc.SpectralMonitor(every_n_steps=10, metrics=("singular_values", "stable_rank"))
        >>> monitor.to_frame().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
    """

    def __init__(
        self,
        targets: Union[str, Sequence[str]] = "auto",
        every_n_steps: int = 25,
        metrics: Optional[Sequence[str]] = None,
        exclude: Optional[Union[str, Sequence[str]]] = None,
        top_k: Optional[int] = None,
        subspace_k: int = 5,
        log_top_k: int = 4,
        histograms: bool = True,
        theory: Optional[Theory] = None,
        task_basis: Optional[TaskBasis] = None,
        dtype: Optional[torch.dtype] = None,
        history_file: Optional[str] = "spectral_history.csv",
        randomized_min_dim: int = 2048,
        method: str = "auto",
    ) -> None:
        for name, value, low in (("every_n_steps", every_n_steps, 1), ("subspace_k", subspace_k, 1), ("log_top_k", log_top_k, 0)):
            check_int(name, value, low)
        check_int("top_k", top_k, allow_none=True)
        check_int("randomized_min_dim", randomized_min_dim)
        if metrics is None:  # the defaults, less those that a truncated spectrum cannot give
            metrics = tuple(m for m in DEFAULT_METRICS if top_k is None or m not in FULL_SPECTRUM_METRICS)
        needs_all = sorted(set(metrics) & set(FULL_SPECTRUM_METRICS)) if top_k is not None else []
        if needs_all:
            raise ValueError(
                f"top_k={top_k} keeps only the leading singular values, but metrics {needs_all} need all of "
                f"them; drop those metrics or top_k (with top_k: {TOP_K_METRICS})."
            )
        if method not in SVD_METHODS:
            raise ValueError(f"method={method!r} is not valid; choose one of {SVD_METHODS}.")
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype!r} must be torch.float32 or torch.float64.")
        if isinstance(targets, str) and targets in TARGET_GROUPS:
            self.group, self.patterns = targets, None
        else:
            patterns = [targets] if isinstance(targets, str) else list(targets)
            if not patterns:
                raise ValueError(f"targets is empty; give one of {TARGET_GROUPS} or names/globs.")
            self.group, self.patterns = "patterns", patterns
        self.metrics = check_metrics(metrics)
        self.every_n_steps = every_n_steps
        self.exclude = exclude
        self.top_k = top_k
        self.subspace_k = subspace_k
        self.log_top_k = log_top_k
        self.histograms = histograms
        self.theory = {m: dict(t) for m, t in (theory or {}).items()}
        check_metrics(self.theory)
        self.task_basis = task_basis
        self.dtype = dtype
        self.history_file = check_history_file(history_file)
        self.randomized_min_dim = randomized_min_dim
        self.method = method
        self.history = History()
        self._last_step: Optional[int] = None
        self._prev_vectors: dict[str, Tensor] = {}
        self._reported: set[str] = set()
        self._float64_hint: set[str] = set()

    # -- public ---------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Everything recorded in this process as a tidy ``DataFrame``."""
        return self.history.to_frame()

    @property
    def history_path(self) -> Optional[str]:
        """The CSV file the records are appended to (rank zero, while fitting)."""
        return self.history.path

    def state_dict(self) -> dict[str, Any]:
        return {"last_recorded_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_recorded_step")

    # -- spectra ---------------------------------------------------------------------------
    def _spectra(self, mats: dict[str, Tensor], want_vectors: bool) -> dict[str, tuple[Tensor, Optional[Tensor]]]:
        """``singular_values`` of every target. A CPU matrix whose last spectrum was too
        ill-conditioned for the float32 Gram route goes straight to the float64 one: the
        conditioning of a layer changes slowly, so this saves the wasted float32 pass."""
        kw = dict(dtype=self.dtype, top_k=self.top_k, with_vectors=want_vectors, randomized_min_dim=self.randomized_min_dim)
        if self.method not in ("auto", "gram32") or want_vectors or self.top_k is not None:
            return singular_values(mats, method=self.method, **kw)
        hinted = {n: m for n, m in mats.items() if n in self._float64_hint}
        rest = {n: m for n, m in mats.items() if n not in self._float64_hint}
        spectra = {**singular_values(rest, method=self.method, **kw), **singular_values(hinted, method="gram", **kw)}
        for name, (s, _) in spectra.items():
            m = mats[name]
            if m.device.type == "cpu" and min(m.shape) >= GRAM_MIN_DIM and s.numel() and not bool(float32_gram_accepts(s[None])):
                self._float64_hint.add(name)
            else:
                self._float64_hint.discard(name)
        return {n: spectra[n] for n in mats}

    # -- target discovery -----------------------------------------------------------------
    def collect(self, pl_module: torch.nn.Module) -> tuple[dict[str, Tensor], set[str]]:
        """The matrices to analyse now, and which of them are end-to-end maps."""
        maps: dict[str, Tensor] = {}
        if self.group in ("auto", "maps", "patterns"):
            with torch.no_grad():
                maps = end_to_end_maps(pl_module)
        if self.patterns is not None:
            maps = {k: v for k, v in maps.items() if name_matches(k, self.patterns)}
        if self.exclude is not None:
            maps = {k: v for k, v in maps.items() if not name_matches(k, self.exclude)}
        weights: dict[str, Tensor] = {}
        if self.group in ("auto", "weights") or (self.patterns is not None):
            weights = find_weight_matrices(pl_module, include=self.patterns, exclude=self.exclude)
        out = {**weights, **maps}
        return out, set(maps)

    def _basis(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Optional[TaskBasis]:
        if self.task_basis is not None:
            return self.task_basis
        return find_task_basis(pl_module, getattr(trainer, "datamodule", None))

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            rank_zero_info(f"SpectralMonitor: {message}")

    # -- hooks ----------------------------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        mats, map_names = self.collect(pl_module)
        if not mats:
            raise ValueError(
                f"SpectralMonitor(targets={self.patterns or self.group!r}) found no matrix in "
                f"{type(pl_module).__name__}; available: maps {sorted(end_to_end_maps(pl_module))}, "
                f"weights {sorted(find_weight_matrices(pl_module))[:40]}."
            )
        basis = self._basis(trainer, pl_module)
        if "mode_strength" in self.metrics:
            if basis is None:
                self._report_once("no-basis", "mode_strength skipped: no task basis (task_basis() on the module or datamodule).")
            elif not map_names:
                why = ("the module has no end_to_end_maps()" if not end_to_end_maps(pl_module)
                       else f"targets={self.patterns or self.group!r} selects no end-to-end map")
                self._report_once("no-maps", f"mode_strength skipped: {why}.")
            else:
                for name in sorted(map_names):
                    check_basis_fits(tuple(mats[name].shape), basis[0], basis[2], what=f"end-to-end map {name!r}")
        if self.history_file and not trainer.loggers:
            self._report_once("no-logger", "no logger: the history is kept in memory only (to_frame()).")
        path = history_path(trainer, self.history_file)
        dropped = self.history.start(path, from_step=trainer.global_step)
        if dropped and trainer.global_step == 0:
            rank_zero_warn(f"SpectralMonitor: a new fit replaces the {dropped} records of an earlier run"
                           + (f" in {path!r}." if path else " (to_frame() shows this fit only)."))
        self._add_layout(trainer, sorted(map_names), basis)

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.record(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.global_step != self._last_step:
            self.record(trainer, pl_module)
        self.history.close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self.history.close()

    # -- recording ------------------------------------------------------------------------
    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Take one record of every target now (normally called by the hooks)."""
        step, epoch = trainer.global_step, trainer.current_epoch
        self._last_step = step
        mats, map_names = self.collect(pl_module)
        finite, broken = {}, []
        for name, ok in zip(mats, _all_finite(list(mats.values()))):
            if ok:
                finite[name] = mats[name]
            else:
                broken.append(name)
        rows: list[Record] = []
        for name in broken:
            # Reported once per target; its scalar metrics read NaN while it stays non-finite.
            if f"nonfinite:{name}" not in self._reported:
                self._reported.add(f"nonfinite:{name}")
                rank_zero_warn(f"SpectralMonitor: {name!r} has NaN or Inf entries at step {step}; "
                               "its metrics are recorded as NaN while that lasts (training continues).")
            rows.extend((step, epoch, name, m, -1, float("nan")) for m in self.metrics if m in SCALAR_METRICS)
            self._prev_vectors.pop(name, None)
        want_vectors = "subspace_drift" in self.metrics
        spectra = self._spectra(finite, want_vectors)
        scalars_wanted = [m for m in self.metrics if m in SCALAR_METRICS]
        basis = self._basis(trainer, pl_module) if "mode_strength" in self.metrics else None
        logged: dict[str, float] = {}
        for name, (s, u) in spectra.items():
            s_list = s.tolist()
            if "singular_values" in self.metrics:
                rows.extend((step, epoch, name, "singular_values", i, v) for i, v in enumerate(s_list))
                logged.update({f"singular_values/{name}/{i}": v for i, v in enumerate(s_list[: self.log_top_k])})
            if scalars_wanted:
                values = scalar_metrics(s, scalars_wanted, tuple(finite[name].shape))
                if self.top_k is not None:
                    values = self._exact_norms(values, s, finite[name])
                for metric, value in values.items():
                    rows.append((step, epoch, name, metric, -1, value))
                    logged[f"{metric}/{name}"] = value
            if want_vectors and u is not None:
                k = min(self.subspace_k, u.shape[1])
                prev = self._prev_vectors.get(name)
                if prev is not None and prev.shape[0] == u.shape[0]:
                    drift = subspace_drift(prev, u[:, :k])
                    rows.append((step, epoch, name, "subspace_drift", -1, drift))
                    logged[f"subspace_drift/{name}"] = drift
                self._prev_vectors[name] = u[:, :k].clone()
            if basis is not None and name in map_names:
                strengths = mode_strengths(finite[name], basis[0], basis[2], dtype=self.dtype).tolist()
                rows.extend((step, epoch, name, "mode_strength", a, v) for a, v in enumerate(strengths))
                logged.update({f"mode_strength/{name}/{a}": v for a, v in enumerate(strengths)})
        logged.update(self._theory_at(step))
        self.history.extend(rows, write=trainer.is_global_zero)
        log_scalars(trainer, logged, step)
        if self.histograms and "singular_values" in self.metrics:
            for writer in tensorboard_writers(trainer):
                for name, (s, _) in spectra.items():
                    writer.add_histogram(f"singular_values/{name}", s.float().cpu(), step)

    def _exact_norms(self, values: dict[str, float], s: Tensor, mat: Tensor) -> dict[str, float]:
        # With top_k only the leading singular values are known; the Frobenius norm (and
        # the stable rank built on it) is exact from the entries themselves.
        fro = float(torch.linalg.matrix_norm(mat.detach().to(s.dtype)))
        if "frobenius_norm" in values:
            values["frobenius_norm"] = fro
        if "stable_rank" in values:
            s1 = float(s[0]) if s.numel() else 0.0
            values["stable_rank"] = fro**2 / s1**2 if s1 > 0 else 0.0
        return values

    def _theory_at(self, step: int) -> dict[str, float]:
        out = {}
        for metric, by_target in self.theory.items():
            for target, values in by_target.items():
                arr = np.asarray(values)
                if step < arr.shape[0]:
                    row = np.atleast_1d(arr[step])
                    out.update({f"theory/{metric}/{target}/{i}": float(v) for i, v in enumerate(row)})
        return out

    def _add_layout(self, trainer: "pl.Trainer", maps: list[str], basis: Optional[TaskBasis]) -> None:
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        layout: dict[str, dict[str, list]] = {}
        theory_k = self.theory.get("mode_strength", {})
        if basis is not None and maps and "mode_strength" in self.metrics:
            layout["mode strength"] = {
                f"mode {a}": ["Multiline", [f"mode_strength/{m}/{a}" for m in maps]
                              + [f"theory/mode_strength/{m}/{a}" for m in maps if m in theory_k]]
                for a in range(basis[0].shape[1])
            }
        theory_s = self.theory.get("singular_values", {})
        if "singular_values" in self.metrics and self.log_top_k:
            layout["singular values"] = {
                m: ["Multiline", [rf"singular_values/{m}/\d+", rf"theory/singular_values/{m}/\d+"] if m in theory_s
                    else [rf"singular_values/{m}/\d+"]]
                for m in maps
            }
        layout["deficits"] = {"active (1) / inactive (0)": ["Multiline", [r"deficit/.*"]]}
        for writer in writers:
            writer.add_custom_scalars(layout)


def _all_finite(mats: list[Tensor]) -> list[bool]:
    """``isfinite(m).all()`` for every matrix, with one host sync per device instead of one per matrix."""
    by_device: dict[torch.device, list[int]] = {}
    for i, m in enumerate(mats):
        by_device.setdefault(m.device, []).append(i)
    flags = [True] * len(mats)
    with torch.no_grad():
        for indices in by_device.values():
            values = torch.stack([torch.isfinite(mats[i]).all() for i in indices]).tolist()
            for i, ok in zip(indices, values):
                flags[i] = bool(ok)
    return flags
