"""Spectra of weight matrices: which matrices a model has, their singular values, metrics.

Plain torch and numpy, no Lightning, nothing of the callbacks. One room per job:

* :mod:`~lightning_critical.spectral.matrices`: weight-matrix discovery, matrix views (conv,
  attention, recurrent gates) and the package's one name/glob matcher.
* :mod:`~lightning_critical.spectral.svd`: how singular values are computed (LAPACK Gram,
  float32 Gram, randomized, torch SVD; BLAS threads).
* :mod:`~lightning_critical.spectral.metrics`: the metric registry, the formulas of the
  singular values, and :func:`register_metric` to add one.
* :mod:`~lightning_critical.spectral.formulas`: the formulas that take more (task-basis mode
  strengths, subspace drift, the power-law fit).
* :mod:`~lightning_critical.spectral.esd`: the laws of the ESD (power-law tail, Marchenko-Pastur bulk).
* :mod:`~lightning_critical.spectral.records`: one monitor record as tidy rows, and the theory beside them.
* :mod:`~lightning_critical.spectral.analysis`: :func:`analyze`, every metric of every matrix as one table.

Every public name of these modules used from outside is importable from here too
(``lc.spectral.analyze``, ``lc.spectral.singular_values``, ...).

Example::

    >>> import torch
    >>> from lightning_critical import spectral
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> list(spectral.analyze(net, metrics=["numerical_rank"]).numerical_rank)
    [3, 2]
"""

from lightning_critical.spectral import esd
from lightning_critical.spectral.analysis import CONV_VIEWS, WEIGHTWATCHER_CONV, analyze
from lightning_critical.spectral.formulas import check_basis_fits, mode_strengths, power_law_fit, subspace_drift
from lightning_critical.spectral.matrices import (
    RNN_GATES,
    Patterns,
    as_patterns,
    find_weight_matrices,
    matrix_views,
    name_matches,
)
from lightning_critical.spectral.metrics import (
    METRICS,
    REGISTRY,
    SCALAR_METRICS,
    VECTOR_METRICS,
    Metric,
    Spectrum,
    check_metrics,
    metric_names,
    needs_full_spectrum,
    register_metric,
    scalar_metric_names,
    scalar_metrics,
    unregister_metric,
)
from lightning_critical.spectral.records import RecordSettings, SpectralRecord, join_theory, spectral_record, theory_at
from lightning_critical.spectral.svd import (
    GRAM32_MIN_RATIO,
    GRAM_MIN_DIM,
    SVD_METHODS,
    compute_dtype,
    float32_gram_accepts,
    gram_singular_values,
    randomized_singular_values,
    singular_values,
)

__all__ = [
    "CONV_VIEWS", "GRAM32_MIN_RATIO", "GRAM_MIN_DIM", "METRICS", "REGISTRY", "RNN_GATES", "SCALAR_METRICS",
    "SVD_METHODS", "VECTOR_METRICS", "WEIGHTWATCHER_CONV", "Metric", "Patterns", "RecordSettings", "SpectralRecord",
    "Spectrum", "analyze", "as_patterns", "check_basis_fits", "check_metrics", "compute_dtype", "esd",
    "find_weight_matrices", "float32_gram_accepts", "gram_singular_values", "join_theory", "matrix_views",
    "metric_names", "mode_strengths", "name_matches", "needs_full_spectrum", "power_law_fit",
    "randomized_singular_values", "register_metric", "scalar_metric_names", "scalar_metrics", "singular_values",
    "spectral_record", "subspace_drift", "theory_at", "unregister_metric",
]
