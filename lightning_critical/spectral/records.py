"""One record of a spectral monitor as tidy rows, computed from the matrices alone (and the theory beside them).

Plain torch, no Lightning: :func:`spectral_record` is what
:class:`~lightning_critical.SpectralMonitor` does at each recording step, minus the scheduling,
the state it keeps between records and the writing (the analogue of torchmetrics' ``_update``).
It takes the matrices, the settings and that state (the previous record's singular vectors for
``subspace_drift``, which targets go straight to the float64 route) and returns the rows
``(step, epoch, target, metric, index, value)``, the logger scalars and the next state.

A *theory* ``{metric: {target: array (n_steps + 1, k)}}`` predicts records: row ``t`` is the
prediction after ``t`` optimizer steps, column ``i`` the ``index``. :func:`theory_at` reads
it at one step (the logger scalars ``theory/<metric>/<target>/<i>``), :func:`join_theory`
beside every row of a records table; both look it up the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lightning_critical.spectral.metrics import REGISTRY, Metric, Spectrum
from lightning_critical.spectral.svd import GRAM_MIN_DIM, float32_gram_accepts, singular_values

Row = tuple[int, int, str, str, int, float]
Theory = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class RecordSettings:
    """What a record computes (registered ``metrics``) and how; see :class:`~lightning_critical.SpectralMonitor`."""

    metrics: tuple[str, ...]
    top_k: int | None = None
    registered: Mapping[str, Metric] = field(default_factory=dict)
    """User metrics resolved when the monitor was built (they travel with it to sweep workers)."""
    subspace_k: int = 5
    log_top_k: int = 4
    dtype: torch.dtype | None = None
    method: str = "auto"
    randomized_min_dim: int = 2048


@dataclass
class SpectralRecord:
    """The result of :func:`spectral_record`.

    Attributes:
        rows: the records, target by target.
        scalars: logger scalars ``{tag: value}`` (``<metric>/<target>``, ``singular_values/<target>/<i>``,
            ``mode_strength/<map>/<a>``).
        spectra: the singular values of every finite target, on its device.
        nonfinite: targets with NaN or Inf entries (their scalar metrics are NaN rows).
        vectors: the leading left singular vectors to compare the next record with.
        float64_hint: the targets whose next full spectrum goes straight to the float64 route.
    """

    rows: list[Row] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    spectra: dict[str, Tensor] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    vectors: dict[str, Tensor] = field(default_factory=dict)
    float64_hint: set[str] = field(default_factory=set)


def spectral_record(
    matrices: Mapping[str, Tensor],
    step: int,
    epoch: int,
    settings: RecordSettings,
    maps: Collection[str] = (),
    basis: tuple[Tensor, Tensor, Tensor] | None = None,
    previous_vectors: Mapping[str, Tensor] | None = None,
    float64_hint: Collection[str] = (),
) -> SpectralRecord:
    """The rows of one record of ``matrices`` at ``step``: every metric of ``settings`` for every target.

    ``maps`` are the targets that are end-to-end maps (``mode_strength`` is computed for them
    when ``basis`` ``(U, S, V)`` is given); ``previous_vectors`` are the vectors of the last
    record (``subspace_drift``); ``float64_hint`` the targets that skip the float32 Gram pass.
    Per target, the rows come in this order: vector metrics of the spectrum (``singular_values``),
    scalar metrics in the order asked, ``subspace_drift``, ``mode_strength``.

    Example::

        >>> rec = spectral_record({"w": torch.diag(torch.tensor([3.0, 1.0]))}, step=0, epoch=0,
        ...                       settings=RecordSettings(("singular_values", "spectral_norm")))
        >>> rec.rows  # doctest: +NORMALIZE_WHITESPACE
        [(0, 0, 'w', 'singular_values', 0, 3.0), (0, 0, 'w', 'singular_values', 1, 1.0),
         (0, 0, 'w', 'spectral_norm', -1, 3.0)]
    """
    metrics = [settings.registered.get(m) or REGISTRY[m] for m in settings.metrics]
    spectrum_vectors = [m for m in metrics if m.needs == "spectrum" and m.vector]
    scalars = [m for m in metrics if m.is_scalar]
    out = SpectralRecord(vectors=dict(previous_vectors or {}), float64_hint=set(float64_hint))
    finite: dict[str, Tensor] = {}
    for name, ok in zip(matrices, all_finite(list(matrices.values())), strict=True):
        if ok:
            finite[name] = matrices[name]
        else:
            # Its scalar metrics read NaN while it stays non-finite.
            out.nonfinite.append(name)
            out.rows.extend((step, epoch, name, m.name, -1, float("nan")) for m in scalars)
            out.vectors.pop(name, None)
    want_vectors = "subspace_drift" in settings.metrics
    # mode_strength alone needs no spectrum.
    needs_spectra = any(m.needs != "basis" for m in metrics)
    spectra = compute_spectra(finite, settings, want_vectors, out.float64_hint) if needs_spectra else {}
    on_host = to_host({name: s for name, (s, _) in spectra.items()})
    for name in spectra if needs_spectra else finite:
        s, u = spectra.get(name, (None, None))
        if s is not None:
            out.spectra[name] = s
            # With top_k only the leading singular values are known; the Frobenius norm (and
            # the stable rank built on it) is exact from the entries themselves.
            spectrum = Spectrum(on_host[name], tuple(finite[name].shape),
                                entries=finite[name] if settings.top_k is not None else None)
            for metric in spectrum_vectors:
                values = np.asarray(metric.formula(spectrum), dtype=np.float64).ravel().tolist()
                out.rows.extend((step, epoch, name, metric.name, i, v) for i, v in enumerate(values))
                out.scalars.update({f"{metric.name}/{name}/{i}": v for i, v in enumerate(values[: settings.log_top_k])})
            for metric in scalars:
                value = metric.formula(spectrum)
                out.rows.append((step, epoch, name, metric.name, -1, value))
                out.scalars[f"{metric.name}/{name}"] = value
        if want_vectors and u is not None:
            k = min(settings.subspace_k, u.shape[1])
            prev = out.vectors.get(name)
            if prev is not None and prev.shape[0] == u.shape[0]:
                drift = REGISTRY["subspace_drift"].formula(prev.to(u.device), u[:, :k])
                out.rows.append((step, epoch, name, "subspace_drift", -1, drift))
                out.scalars[f"subspace_drift/{name}"] = drift
            out.vectors[name] = u[:, :k].clone()
        if basis is not None and name in maps and "mode_strength" in settings.metrics:
            strengths = REGISTRY["mode_strength"].formula(
                finite[name], basis[0], basis[2], dtype=settings.dtype, name=name)
            strengths = strengths.tolist()
            out.rows.extend((step, epoch, name, "mode_strength", a, v) for a, v in enumerate(strengths))
            out.scalars.update({f"mode_strength/{name}/{a}": v for a, v in enumerate(strengths)})
    return out


def compute_spectra(
    matrices: Mapping[str, Tensor], settings: RecordSettings, with_vectors: bool, float64_hint: set[str]
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """:func:`~lightning_critical.spectral.svd.singular_values` of every target, updating ``float64_hint``.

    A CPU matrix whose last spectrum was too ill-conditioned for the float32 Gram route goes
    straight to the float64 one: the conditioning of a layer changes slowly, so this saves the
    wasted float32 pass. ``float64_hint`` is updated in place for the targets computed here.
    """
    kw: dict[str, Any] = dict(dtype=settings.dtype, top_k=settings.top_k, with_vectors=with_vectors,
                              randomized_min_dim=settings.randomized_min_dim)
    if settings.method not in ("auto", "gram32") or with_vectors or settings.top_k is not None:
        return singular_values(matrices, method=settings.method, **kw)
    hinted = {n: m for n, m in matrices.items() if n in float64_hint}
    rest = {n: m for n, m in matrices.items() if n not in float64_hint}
    spectra = {**singular_values(rest, method=settings.method, **kw), **singular_values(hinted, method="gram", **kw)}
    for name, (s, _) in spectra.items():
        m = matrices[name]
        gram_sized = m.device.type == "cpu" and min(m.shape) >= GRAM_MIN_DIM
        if gram_sized and s.numel() and not bool(float32_gram_accepts(s[None])):
            float64_hint.add(name)
        else:
            float64_hint.discard(name)
    return {n: spectra[n] for n in matrices}


def all_finite(mats: list[Tensor]) -> list[bool]:
    """``isfinite(m).all()`` for every matrix, with one host sync per device instead of one per matrix.

    A float64 sum is finite exactly when every entry is (NaN and Inf propagate, and float32 or
    narrower entries cannot overflow it), and summing is ~8x cheaper than ``isfinite().all()``;
    only a matrix whose sum is not finite is checked entry by entry (float64 weights near
    ``1e308`` could overflow the sum).
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, m in enumerate(mats):
        by_device.setdefault(m.device, []).append(i)
    flags = [True] * len(mats)
    with torch.no_grad():
        for device, indices in by_device.items():
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            # a complex matrix as its (real, imaginary) pairs: a cast to a real dtype would drop the imaginary part
            sums = torch.stack([real_view(mats[i]).sum(dtype=dtype) for i in indices]).isfinite().tolist()
            for i, ok in zip(indices, sums, strict=True):
                flags[i] = bool(ok) or bool(torch.isfinite(mats[i]).all())
    return flags


def real_view(t: Tensor) -> Tensor:
    """``t``, or its ``(..., 2)`` real view when complex."""
    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def to_host(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same tensors on the CPU, dtype kept, with one transfer (one host sync) per device and
    dtype instead of one per tensor."""
    groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for name, t in tensors.items():
        groups.setdefault((t.device, t.dtype), []).append(name)
    out = dict(tensors)
    for (device, _), names in groups.items():
        if device.type == "cpu":
            continue
        flat = torch.cat([tensors[n].detach().reshape(-1) for n in names]).cpu()
        for n, part in zip(names, flat.split([tensors[n].numel() for n in names]), strict=True):
            out[n] = part.view(tensors[n].shape)
    return out


# -- theory beside the records ---------------------------------------------------------------
def _theory_row(values: Any, step: int) -> np.ndarray | None:
    """Row ``step`` of one theory array as a 1-D array (``None`` past its end)."""
    arr = np.asarray(values)
    return np.atleast_1d(arr[step]) if step < arr.shape[0] else None


def theory_at(theory: Theory, step: int) -> dict[str, float]:
    """The theory's prediction at ``step`` as logger scalars ``theory/<metric>/<target>/<i>``.

    Example::

        >>> theory_at({"mode_strength": {"a": [[0.0, 1.0], [0.5, 2.0]]}}, step=1)
        {'theory/mode_strength/a/0': 0.5, 'theory/mode_strength/a/1': 2.0}
    """
    out = {}
    for metric, by_target in theory.items():
        for target, values in by_target.items():
            row = _theory_row(values, step)
            if row is not None:
                out.update({f"theory/{metric}/{target}/{i}": float(v) for i, v in enumerate(row)})
    return out


def join_theory(records: pd.DataFrame, theory: Theory, column: str = "theory") -> pd.DataFrame:
    """``records`` (the monitors' tidy table) with the theory's prediction for each row in ``column``.

    NaN where the theory has nothing: another metric or target, a step past its end, an index
    past its width (a scalar row, ``index`` -1, reads column 0).

    Example::

        >>> frame = pd.DataFrame({"step": [0, 1, 1, 2], "epoch": 0, "target": "a", "metric": "mode_strength",
        ...                       "index": [0, 0, 1, 1], "value": 0.0})
        >>> join_theory(frame, {"mode_strength": {"a": [[0.0, 1.0], [0.5, 2.0]]}}).theory.tolist()
        [0.0, 0.5, 2.0, nan]
    """
    out = records.copy()
    predicted = np.full(len(out), np.nan)
    for metric, by_target in theory.items():
        for target, values in by_target.items():
            arr = np.asarray(values, dtype=np.float64)
            arr = arr.reshape(arr.shape[0], -1)
            rows = np.flatnonzero(((out["metric"] == metric) & (out["target"] == target)).to_numpy())
            steps = out["step"].to_numpy()[rows]
            index = np.maximum(out["index"].to_numpy()[rows], 0)
            inside = (steps < arr.shape[0]) & (index < arr.shape[1])
            predicted[rows[inside]] = arr[steps[inside], index[inside]]
    out[column] = predicted
    return out
