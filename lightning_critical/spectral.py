"""Spectra of weight matrices: which matrices a model has, their singular values, metrics.

Plain torch (and SciPy's LAPACK for CPU spectra), no Lightning. Every function works on the
device and dtype it is given, except that spectra are always computed in ``float32`` or
better (``compute_dtype``).
Matrices of equal shape are stacked and solved as one batch. All singular values come from
the Gram matrix (float64 on GPUs; on CPU float32 where that is accurate, float64 otherwise:
float32-SVD accuracy either way, see :func:`singular_values`) except for CPU matrices with a
side under 128 (``torch.linalg.svdvals``); with ``top_k`` on very large matrices, a seeded
randomized range finder.

Matrix views (what "the matrix" of a parameter is):

* ``nn.Linear`` / any 2-D weight: used as is, ``(out, in)``.
* ``nn.Conv{1,2,3}d`` weight ``(out, in/groups, *kernel)`` -> ``(out, in/groups * prod(kernel))``.
* ``nn.ConvTranspose{1,2,3}d`` weight ``(in, out/groups, *kernel)`` is first transposed to
  ``(out/groups, in, *kernel)`` and then flattened the same way, so rows are output channels.
* ``nn.Embedding`` weight ``(num_embeddings, dim)``: used as is.
* ``nn.MultiheadAttention.in_proj_weight`` ``(3 * E, E)`` is split into three ``(E, E)``
  targets named ``<name>.q``, ``<name>.k`` and ``<name>.v``.
* Recurrent layers: every input-hidden and hidden-hidden matrix, of every layer and direction
  (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``..._reverse``; ``weight_ih`` / ``weight_hh`` of
  the cells), is split into one ``(hidden, in)`` matrix per gate, in PyTorch's documented
  gate order, named by the gate: ``nn.LSTM`` / ``nn.LSTMCell`` ``(4H, in)`` ->
  ``<name>.i``, ``.f``, ``.g``, ``.o`` (input, forget, cell, output gates); ``nn.GRU`` /
  ``nn.GRUCell`` ``(3H, in)`` -> ``<name>.r``, ``.z``, ``.n`` (reset, update, new). E.g.
  ``lstm.weight_ih_l0.i``, ``gru.weight_hh_l1_reverse.z``. ``nn.RNN`` has one gate: its
  matrices are used as is; so is an LSTM's projection ``weight_hr_l{k}``.
* 0-D and 1-D parameters (biases, norm scales, a scalar temperature) have no matrix: skipped.
* any other parameter with 3 or more dimensions: its leading size-1 dimensions are dropped
  first, so a ``(1, 16, 32)`` positional embedding is the ``(16, 32)`` matrix it stands for
  (and a ``(1, 1, C)`` class token becomes a vector, skipped). What remains with 3 or more
  dimensions is read like a convolution kernel, ``(shape[0], prod(shape[1:]))``: rows are
  the first dimension. That is right for custom convolution kernels, not for stacks of
  matrices such as per-head ``(heads, d, d)`` weights; ``exclude`` those, or pass their
  slices yourself.

Metric formulas, with ``s_1 >= s_2 >= ... >= 0`` the singular values of the matrix:

=======================  ====================================================================
``singular_values``      all of them (or the ``top_k`` largest), one record per index
``spectral_norm``        ``s_1``
``frobenius_norm``       ``sqrt(sum s_i^2)``
``nuclear_norm``         ``sum s_i``
``stable_rank``          ``sum s_i^2 / s_1^2``
``effective_rank``       ``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum s_j`` (Roy & Vetterli 2007)
``participation_ratio``  ``(sum s_i^2)^2 / sum s_i^4``
``condition_number``     ``s_1 / s_r`` with ``s_r`` the smallest singular value above
                         ``max(m, n) * eps(dtype) * s_1`` (finite: numerically-zero values are
                         ignored; ``1`` for a zero matrix)
``log_norm``             ``log10(sum s_i^2)`` (weightwatcher's ``log_norm``: ``log10`` of the squared
                         Frobenius norm)
``log_spectral_norm``    ``log10(s_1^2)`` (weightwatcher's ``log_spectral_norm``; its
                         ``spectral_norm`` column is ``s_1^2``, our ``spectral_norm ** 2``)
``alpha``                exponent of the power-law tail of the ESD ``{s_i^2}``, maximum likelihood at
                         the KS-optimal ``xmin`` as weightwatcher fits it (:mod:`lightning_critical.esd`);
                         the numerically-zero values (those counted out of ``numerical_rank``) are
                         left out; NaN with fewer than two others
``alpha_weighted``       ``alpha * log10(s_1^2)``
``mp_soft_rank``         ``lambda_+ / s_1^2`` with ``lambda_+`` the Marchenko-Pastur bulk edge fitted
                         from the median of ``{s_i^2}`` (:func:`lightning_critical.esd.mp_soft_rank`):
                         about 1 for a random matrix, smaller as learned directions leave the bulk
``numerical_rank``       number of ``s_i > max(m, n) * eps(dtype) * s_1`` (``numpy.linalg.matrix_rank``'s
                         tolerance, ``eps`` of the spectrum's dtype: float32 for float32 weights)
``subspace_drift``       ``1 - ||U_prev^T U_now||_F^2 / k`` for the top-``k`` left singular
                         vectors: 0 if the subspace did not move, 1 if it became orthogonal
``mode_strength``        ``K_a = u_a^T W v_a`` for a task basis ``(U, S, V)``
=======================  ====================================================================
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lightning_critical._checks import check_choice
from lightning_critical.esd import NO_FIT, PowerLawFit, fit_power_law, mp_soft_rank

if TYPE_CHECKING:
    import pandas as pd

SCALAR_METRICS: tuple[str, ...] = (
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "stable_rank",
    "effective_rank",
    "participation_ratio",
    "condition_number",
    "log_norm",
    "log_spectral_norm",
    "alpha",
    "alpha_weighted",
    "mp_soft_rank",
    "numerical_rank",
)
VECTOR_METRICS: tuple[str, ...] = ("singular_values", "mode_strength", "subspace_drift")
METRICS: tuple[str, ...] = ("singular_values", "mode_strength") + SCALAR_METRICS + ("subspace_drift",)

SVD_METHODS: tuple[str, ...] = ("auto", "svd", "gram", "gram32")
# "gram32" keeps a float32 spectrum only when s_min >= GRAM32_MIN_RATIO * s_1 (see singular_values).
GRAM32_MIN_RATIO = 0.2
# "auto" uses the Gram route on CPU for matrices whose smaller side is at least this.
GRAM_MIN_DIM = 128

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
RNN_GATES: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
"""Gate suffixes of split recurrent matrices, in the order PyTorch stacks the gates."""
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

Patterns = str | Sequence[str]


def check_metrics(metrics: Iterable[str], name: str = "metrics") -> tuple[str, ...]:
    """Validate metric names (argument ``name``), keeping their order.

    A single string counts as one metric. The ``ValueError`` names the argument and the bad
    metric and lists the valid ones; an empty selection and repeated names are refused too.

    Example::

        >>> check_metrics(["stable_rank", "singular_values"])
        ('stable_rank', 'singular_values')
        >>> check_metrics(["rank"])  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: metrics=['rank'] is not valid: metric 'rank' is not known; choose from ('singular_values',
        'mode_strength', 'spectral_norm', 'frobenius_norm', 'nuclear_norm', 'stable_rank', 'effective_rank',
        'participation_ratio', 'condition_number', 'log_norm', 'log_spectral_norm', 'alpha', 'alpha_weighted',
        'mp_soft_rank', 'numerical_rank', 'subspace_drift').
    """
    if isinstance(metrics, str):
        out: tuple = (metrics,)
    else:
        try:
            out = tuple(metrics)
        except TypeError:
            raise ValueError(f"{name}={metrics!r} is not valid: give metric names from {METRICS}.") from None
    if not out:
        raise ValueError(f"{name}={metrics!r} is empty: give at least one metric from {METRICS}.")
    for m in out:
        if not isinstance(m, str) or m not in METRICS:
            raise ValueError(f"{name}={metrics!r} is not valid: metric {m!r} is not known; choose from {METRICS}.")
    repeated = sorted({m for m in out if out.count(m) > 1})
    if repeated:
        raise ValueError(f"{name}={metrics!r} is not valid: {repeated} listed more than once.")
    return out


def matrix_views(name: str, param: Tensor, owner: nn.Module | None = None) -> dict[str, Tensor]:
    """The matrix (or matrices) a parameter stands for; empty for 0-D and 1-D parameters.

    ``owner`` is the module holding the parameter; it decides the conv, attention and
    recurrent views (see the module docstring). The returned tensors are views of ``param``
    (no copy).

    Example::

        >>> lstm = nn.LSTM(3, 5)
        >>> {k: tuple(v.shape) for k, v in matrix_views("weight_ih_l0", lstm.weight_ih_l0, lstm).items()}
        {'weight_ih_l0.i': (5, 3), 'weight_ih_l0.f': (5, 3), 'weight_ih_l0.g': (5, 3), 'weight_ih_l0.o': (5, 3)}
        >>> {k: tuple(v.shape) for k, v in matrix_views("pos", torch.zeros(1, 16, 32)).items()}
        {'pos': (16, 32)}
    """
    if param.dim() < 2:
        return {}
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(owner, nn.MultiheadAttention) and leaf == "in_proj_weight":
        q, k, v = param.chunk(3, dim=0)
        return {f"{name}.q": q, f"{name}.k": k, f"{name}.v": v}
    gates = _gates(owner, leaf)
    if gates:
        return {f"{name}.{gate}": part for gate, part in zip(gates, param.chunk(len(gates), dim=0), strict=True)}
    if isinstance(owner, _CONV_T) and leaf == "weight":
        return {name: param.transpose(0, 1).reshape(param.shape[1], -1)}
    if isinstance(owner, _CONV) and leaf == "weight":
        return {name: param.reshape(param.shape[0], -1)}
    if param.dim() == 2:
        return {name: param}
    while param.dim() > 1 and param.shape[0] == 1:  # (1, 16, 32) -> (16, 32); (1, 1, C) -> (C,)
        param = param[0]
    if param.dim() < 2:
        return {}
    if param.dim() == 2:
        return {name: param}
    return {name: param.reshape(param.shape[0], -1)}


def _gates(owner: nn.Module | None, leaf: str) -> tuple[str, ...]:
    """The gate names of a recurrent weight matrix, in PyTorch's stacking order (``()``: not one)."""
    if isinstance(owner, (nn.LSTM, nn.GRU)):
        stacked = leaf.startswith(("weight_ih_l", "weight_hh_l"))
    elif isinstance(owner, (nn.LSTMCell, nn.GRUCell)):
        stacked = leaf in ("weight_ih", "weight_hh")
    else:
        return ()
    if not stacked:
        return ()
    return RNN_GATES["lstm"] if isinstance(owner, (nn.LSTM, nn.LSTMCell)) else RNN_GATES["gru"]


def _as_patterns(value: Patterns | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def name_matches(name: str, patterns: Patterns | None) -> bool:
    """Whether ``name`` equals or glob-matches one of ``patterns`` (a string or a sequence)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in _as_patterns(patterns))


def find_weight_matrices(
    module: nn.Module, include: Patterns | None = None, exclude: Patterns | None = None
) -> dict[str, Tensor]:
    """Every weight matrix of ``module``, keyed by qualified parameter name (plus split suffix).

    Args:
        module: any ``nn.Module``.
        include: names or globs of targets to keep (``None`` keeps all). A pattern matches
            either the target name (``attn.in_proj_weight.q``) or its parameter name.
        exclude: names or globs to drop, matched the same way.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> sorted(find_weight_matrices(net))
        ['0.weight', '2.weight']
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    owners = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    out: dict[str, Tensor] = {}
    for name, param in module.named_parameters():
        for target, mat in matrix_views(name, param, owners.get(name)).items():
            keys = (target, name)
            if inc and not any(name_matches(k, inc) for k in keys):
                continue
            if exc and any(name_matches(k, exc) for k in keys):
                continue
            out[target] = mat
    return out


def compute_dtype(t: Tensor, dtype: torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else float64 for float64 input and float32 for everything else."""
    if dtype is not None:
        return dtype
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def singular_values(
    matrices: Mapping[str, Tensor],
    dtype: torch.dtype | None = None,
    top_k: int | None = None,
    with_vectors: bool = False,
    randomized_min_dim: int = 2048,
    method: str = "auto",
    gram_min_dim: int = GRAM_MIN_DIM,
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Singular values (descending) of many matrices, batching those of equal shape.

    Runs under ``torch.no_grad()`` on each matrix's device, in ``float32`` or better whatever
    the storage dtype (bf16/fp16 weights are upcast). With ``top_k`` and both dimensions at
    least ``randomized_min_dim``, a randomized truncated SVD (:func:`randomized_singular_values`:
    6 power iterations, ``top_k + 10`` columns, private seeded generator) replaces the full SVD.

    ``method`` chooses how all singular values are computed:

    * ``"gram"``: square roots of the eigenvalues of the smaller Gram matrix (``W^T W`` or
      ``W W^T``), formed and diagonalised in float64. The eigenvalues have absolute error
      ``~ n * eps64 * s_1^2``, so every singular value is within ``~ sqrt(n * eps64) * s_1``
      (``< 1e-6 * s_1`` for ``n <= 4096``): float32-SVD accuracy for the whole spectrum,
      guaranteed.
    * ``"gram32"``: on CPU the same in float32, about twice as fast, kept where that is
      accurate: the float32 eigenvalues have error ``delta ~ c * eps32 * s_1^2``, so
      ``|s_i - s_i_true| <~ delta / (2 s_i)``, fine while every ``s_i`` stays well above 0 but
      up to ``sqrt(delta) ~ 3e-4 * s_1`` for (nearly) rank-deficient matrices. A float32
      spectrum is therefore kept only if its smallest value is at least ``GRAM32_MIN_RATIO``
      (0.2) times ``s_1``; then the error measured ``<= 5e-6 * s_1`` in the worst case
      (clustered spectra at the threshold, sides 768 to 2048; a float32 SVD's own error is
      ``1e-6``-``4e-6 * s_1``). Other matrices are redone with ``"gram"``, so an
      ill-conditioned matrix costs ~1.5x ``"gram"``. Off the CPU it is ``"gram"`` (a GPU's
      float64 eigensolver is as fast as its float32 one).
    * ``"svd"``: ``torch.linalg.svdvals`` (``svd`` with vectors) in the compute dtype.
    * ``"auto"`` (default): vectors wanted -> ``"svd"``; on a GPU -> ``"gram"`` for every size
      (H200, torch 2.11: 5x faster than cuSOLVER's float32 ``svdvals``, which was only
      ``~1e-4 * s_1`` accurate there); on CPU, when the smaller side is at least
      ``gram_min_dim``: ``"gram32"`` for matrices at least twice as long as wide, ``"gram"``
      for squarer ones (by the Marchenko-Pastur law even a random matrix of aspect ratio below
      2 has ``s_min < 0.17 s_1``, so the float32 pass would be wasted); smaller -> ``"svd"``.
      The float32 pass is only tried for a float32 compute dtype: float64 weights (or
      ``dtype=torch.float64``) stay in float64.

    On CPU the Gram routes go through SciPy's BLAS/LAPACK (``syrk`` + ``syevd``, one BLAS
    thread for small products, where more threads only add overhead), elsewhere through torch.

    Returns:
        ``{name: (s, U)}`` with ``U`` the left singular vectors (top ``top_k`` columns, or all)
        when ``with_vectors`` and ``None`` otherwise.

    Example::

        >>> s, _ = singular_values({"w": torch.diag(torch.tensor([3.0, 1.0]))})["w"]
        >>> s.tolist()
        [3.0, 1.0]
    """
    if method not in SVD_METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of {SVD_METHODS}.")
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, mat in matrices.items():
        groups[(tuple(mat.shape), mat.device, compute_dtype(mat, dtype))].append(name)
    out: dict[str, tuple[Tensor, Tensor | None]] = {}
    u: Tensor | None
    with torch.no_grad():
        for (shape, device, cdtype), names in groups.items():
            batch = torch.stack([matrices[n].detach().to(cdtype) for n in names])
            if top_k is not None and min(shape) >= randomized_min_dim:
                s, u = randomized_singular_values(batch, top_k)
                for i, n in enumerate(names):
                    out[n] = (s[i], u[i] if with_vectors else None)
                continue
            on_cpu = device.type == "cpu"
            use_gram = method in ("gram", "gram32") or (method == "auto" and (min(shape) >= gram_min_dim or not on_cpu))
            if use_gram and not with_vectors:
                # Marchenko-Pastur: below aspect ratio 2 even a random matrix has s_min < 0.17 s_1
                squat = max(shape) < 2 * min(shape)
                float32_first = (
                    on_cpu and cdtype == torch.float32 and (method == "gram32" or (method == "auto" and not squat))
                )
                s, u = _gram_route(batch, float32_first).to(cdtype), None
            elif with_vectors:
                u, s, _ = torch.linalg.svd(batch, full_matrices=False)
            else:
                s, u = torch.linalg.svdvals(batch), None
            for i, n in enumerate(names):
                si = s[i] if top_k is None else s[i, :top_k]
                ui = None if u is None else (u[i] if top_k is None else u[i, :, :top_k])
                out[n] = (si, ui)
    return out


def gram_singular_values(batch: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """All singular values (descending) of ``(b, m, n)`` matrices via their Gram matrices.

    ``s = sqrt(eig(W^T W))`` (or ``W W^T``, whichever is smaller), clipped at 0, formed and
    diagonalised in ``dtype`` (float64 or float32); see :func:`singular_values` for the accuracy.
    Not differentiable. On CPU a matrix with NaN/Inf entries gets NaN values; elsewhere
    ``torch.linalg.eigvalsh`` decides (it may raise).

    Example::

        >>> gram_singular_values(torch.tensor([[[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])).tolist()
        [[4.0, 3.0]]
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype!r} must be torch.float32 or torch.float64.")
    m, n = batch.shape[-2:]
    if min(m, n) == 0:
        return torch.zeros((batch.shape[0], 0), dtype=dtype, device=batch.device)
    if batch.device.type == "cpu":
        small = min(m, n) < 768 or min(m, n) ** 2 * max(m, n) < 10**9
        with _blas_threads(1 if small else torch.get_num_threads()):
            return torch.stack([_gram_singular_values_scipy(w, dtype) for w in batch.detach()])
    w = batch.to(dtype)
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT
    return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()


_BLAS_CONTROLLER = None


def _blas_threads(n: int) -> contextlib.AbstractContextManager:
    """Limit SciPy's BLAS to ``n`` threads (restored on exit). Small products and
    eigenproblems get one (waking threads cost more than they saved: up to 10x slower with 2
    threads for 128 x 512 matrices), large ones torch's own thread count, so that a process
    limited with ``torch.set_num_threads`` (e.g. one of several CPU DDP ranks) stays so."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg  # noqa: F401 - load SciPy's BLAS so that the controller sees it
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=n, user_api="blas")


def _gram_route(batch: Tensor, float32_first: bool) -> Tensor:
    if not float32_first:
        return gram_singular_values(batch, torch.float64)
    s = gram_singular_values(batch, torch.float32).to(torch.float64)
    if s.shape[-1] == 0:
        return s
    redo = ~float32_gram_accepts(s)
    if bool(redo.any()):
        s[redo] = gram_singular_values(batch[redo], torch.float64)
    return s


def float32_gram_accepts(s: Tensor) -> Tensor:
    """Whether float32 Gram spectra ``s`` (``(b, k)``, descending) are float32-accurate: the
    smallest value is at least ``GRAM32_MIN_RATIO`` of the largest, and the Gram matrix stayed
    in float32's normal range (it overflows to Inf/NaN above ``s_1 ~ 1e19`` and loses digits
    to subnormals below ``~1e-19``). Zero matrices are accepted; NaN spectra are not.

    Example::

        >>> float32_gram_accepts(torch.tensor([[2.0, 1.0], [2.0, 0.1], [0.0, 0.0]])).tolist()
        [True, False, True]
    """
    top = s[:, 0]
    in_range = (top == 0) | ((top >= 1e-15) & (top <= 1e15))
    return (s[:, -1] >= GRAM32_MIN_RATIO * top) & in_range


def _gram_singular_values_scipy(w: Tensor, dtype: torch.dtype) -> Tensor:
    """One CPU matrix through SciPy's BLAS/LAPACK: ``syrk`` for the Gram matrix and the
    divide-and-conquer ``syevd`` for its eigenvalues. 1.5-2x faster than torch's ``eigvalsh``
    on the AMD processors measured (torch's official wheels use MKL, slow there). NaN/Inf in
    ``w`` gives NaNs rather than an exception."""
    from scipy.linalg import blas, eigvalsh

    # w is C-ordered (m, n), so x = w.T is the same memory as a Fortran-ordered (n, m) array:
    # no copy. dsyrk(x, trans=1) = x^T x = w w^T; trans=0 gives x x^T = w^T w.
    x = w.to(dtype).numpy().T
    m, n = w.shape
    syrk = blas.dsyrk if dtype == torch.float64 else blas.ssyrk
    gram = syrk(1.0, x, trans=1 if m <= n else 0)
    if not np.isfinite(gram).all():
        return torch.full((min(m, n),), float("nan"), dtype=dtype)
    lam = eigvalsh(gram, lower=False, driver="evd", overwrite_a=True, check_finite=False)
    return torch.from_numpy(np.sqrt(np.clip(lam[::-1], 0.0, None)))


def randomized_singular_values(
    batch: Tensor, k: int, oversample: int = 10, power_iterations: int = 6, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Top-``k`` singular values and left vectors of a batch of matrices ``(b, m, n)``.

    Randomized range finder (Halko, Martinsson & Tropp 2011, alg. 4.4): ``Q`` spans
    ``(A A^T)^q A G`` for a Gaussian ``G`` with ``k + oversample`` columns, re-orthonormalised
    after every product; then the SVD of the small ``Q^T A``. The error of ``s_i`` shrinks
    like ``(s_{l+1} / s_i)^(2q+1)``. ``G`` comes from a private generator seeded by ``seed``:
    the global RNG (and therefore training) is never touched.

    Example::

        >>> w = torch.diag(torch.arange(50, 0, -1).float())
        >>> s, u = randomized_singular_values(w[None], k=3)
        >>> [round(v) for v in s[0].tolist()]
        [50, 49, 48]
    """
    b, m, n = batch.shape
    cols = min(k + oversample, m, n)
    gen = torch.Generator(device=batch.device).manual_seed(seed)
    g = torch.randn((b, n, cols), generator=gen, device=batch.device, dtype=batch.dtype)
    q = torch.linalg.qr(batch @ g).Q
    at = batch.transpose(1, 2)
    for _ in range(power_iterations):
        q = torch.linalg.qr(at @ q).Q
        q = torch.linalg.qr(batch @ q).Q
    u_small, s, _ = torch.linalg.svd(q.transpose(1, 2) @ batch, full_matrices=False)
    return s[:, :k], (q @ u_small)[:, :, :k]


def scalar_metrics(
    s: Tensor, names: Iterable[str], shape: Sequence[int], fit: PowerLawFit | None = None
) -> dict[str, float]:
    """The scalar spectral metrics of one matrix from its singular values ``s`` (descending).

    ``shape`` is the matrix shape (used for the numerical-rank tolerance of
    ``condition_number``, ``numerical_rank`` and ``alpha``, and the aspect ratio of
    ``mp_soft_rank``). ``fit`` is the spectrum's :func:`power_law_fit` when the caller already
    has it (``alpha``, ``alpha_weighted``). See the module docstring for the formulas.

    Example::

        >>> m = scalar_metrics(torch.tensor([2.0, 2.0]), ["stable_rank", "effective_rank"], (2, 2))
        >>> round(m["stable_rank"], 6), round(m["effective_rank"], 6)
        (2.0, 2.0)
        >>> scalar_metrics(torch.tensor([10.0, 1.0, 0.0]), ["log_spectral_norm", "numerical_rank"], (3, 3))
        {'log_spectral_norm': 2.0, 'numerical_rank': 2.0}
    """
    # One transfer, then float64 numpy: far less per-call overhead than torch ops on short vectors.
    v = s.detach().to("cpu", torch.float64).numpy()
    tol = _rank_tolerance(s.dtype, shape)
    out: dict[str, float] = {}
    s_max = float(v[0]) if v.size else 0.0
    sq = v * v
    sum_sq = float(sq.sum())
    for name in names:
        if name == "spectral_norm":
            out[name] = s_max
        elif name == "frobenius_norm":
            out[name] = math.sqrt(sum_sq)
        elif name == "nuclear_norm":
            out[name] = float(v.sum())
        elif name == "stable_rank":
            out[name] = sum_sq / s_max**2 if s_max > 0 else 0.0
        elif name == "effective_rank":
            total = float(v.sum())
            if total <= 0:
                out[name] = 0.0
                continue
            p = v[v > 0] / total
            out[name] = math.exp(-float((p * np.log(p)).sum()))
        elif name == "participation_ratio":
            quad = float((sq * sq).sum())
            out[name] = sum_sq**2 / quad if quad > 0 else 0.0
        elif name == "condition_number":
            if s_max <= 0:
                out[name] = 1.0
                continue
            kept = v[v > tol * s_max]
            out[name] = s_max / float(kept[-1])
        elif name == "numerical_rank":
            out[name] = float(np.count_nonzero(v > tol * s_max)) if s_max > 0 else 0.0
        elif name == "log_norm":
            out[name] = math.log10(sum_sq) if sum_sq > 0 else -math.inf
        elif name == "log_spectral_norm":
            out[name] = math.log10(s_max**2) if s_max > 0 else -math.inf
        elif name in ("alpha", "alpha_weighted"):
            if fit is None:
                fit = _fit_numpy(v, tol)
            if name == "alpha":
                out[name] = fit.alpha
            else:
                out[name] = fit.alpha * math.log10(s_max**2) if s_max > 0 else math.nan
        elif name == "mp_soft_rank":
            out[name] = mp_soft_rank(sq, tuple(shape))
        else:
            raise ValueError(f"{name!r} is not a scalar spectral metric; choose from {SCALAR_METRICS}.")
    return out


def _rank_tolerance(dtype: torch.dtype, shape: Sequence[int]) -> float:
    """Singular values at or below this times ``s_1`` count as zero (``numpy.linalg.matrix_rank``)."""
    return max(shape) * torch.finfo(dtype).eps if len(shape) else 0.0


def _fit_numpy(v: np.ndarray, tol: float) -> PowerLawFit:
    if not v.size or v[0] <= 0:
        return NO_FIT
    return fit_power_law(v[v > tol * v[0]] ** 2)


def power_law_fit(s: Tensor, shape: Sequence[int]) -> PowerLawFit:
    """Power-law fit of the tail of the ESD ``{s_i^2}`` of a matrix of ``shape`` (metric ``alpha``).

    Numerically-zero singular values (at or below ``max(m, n) * eps(dtype) * s_1``) are left
    out; the fit is :func:`lightning_critical.esd.fit_power_law`.

    Example::

        >>> fit = power_law_fit(torch.tensor([3.0, 2.0, 1.0, 0.0]), (4, 4))
        >>> fit.tail_size, round(fit.alpha, 3)
        (3, 1.558)
    """
    v = s.detach().to("cpu", torch.float64).numpy()
    return _fit_numpy(v, _rank_tolerance(s.dtype, shape))


CONV_VIEWS: tuple[str, ...] = ("flatten", "taps")


def analyze(
    module: nn.Module,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    metrics: Sequence[str] | None = None,
    conv: str = "flatten",
    method: str = "auto",
    dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Spectral metrics of every weight matrix of ``module`` in one call, one row per matrix.

    Like weightwatcher's ``analyze()``, with the targets, matrix views and metrics of
    :class:`~lightning_critical.SpectralMonitor` (which tracks the same metrics over training):
    rows in module order (that of ``named_parameters()``; a tied weight appears once), columns
    ``target``, ``rows``, ``cols`` (the matrix shape), ``taps`` (matrices pooled into the row's
    spectrum: 1 unless ``conv="taps"``), one column per metric and, when ``alpha`` is computed,
    the fit's ``xmin``, ``ks_distance`` and ``tail_size`` (eigenvalues ``>= xmin``). Formulas in
    the module docstring; spectra as :func:`singular_values` computes them (``method``,
    ``dtype``).

    Args:
        module: any ``nn.Module``.
        include, exclude: names or globs of targets, as in :func:`find_weight_matrices`.
        metrics: scalar metric names (default: all of :data:`SCALAR_METRICS`).
        conv: ``"flatten"`` (default; the monitor's view, ``(out, in/groups * prod(kernel))``)
            or ``"taps"``, weightwatcher's convention for ``nn.Conv1d/2d/3d``: the spectrum is
            the union of the spectra of the ``prod(kernel)`` matrices ``(out, in/groups)``, one
            per kernel position, and ``rows``/``cols`` give that matrix's shape (weightwatcher
            also rescales conv weights by a constant, which moves its norms, not ``alpha``).
        method: see :func:`singular_values`.
        dtype: computation dtype (default float32, float64 for float64 weights).

    Raises:
        ValueError: for an unknown or non-scalar metric, an unknown ``conv``, or ``include`` /
            ``exclude`` patterns that leave no matrix.

    Example::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        >>> table = analyze(net, metrics=["alpha", "numerical_rank"])
        >>> table[["target", "rows", "cols", "numerical_rank"]].values.tolist()
        [['0.weight', 128, 64, 64], ['2.weight', 10, 128, 10]]
        >>> bool(table.alpha.notna().all())
        True
    """
    import pandas as pd

    names = SCALAR_METRICS if metrics is None else check_metrics(metrics, "metrics")
    not_scalar = [m for m in names if m not in SCALAR_METRICS]
    if not_scalar:
        raise ValueError(f"metrics={list(names)!r} is not valid: {not_scalar} are not scalar metrics; "
                         f"analyze() computes {SCALAR_METRICS}.")
    check_choice("conv", conv, CONV_VIEWS)
    targets = find_weight_matrices(module, include, exclude)
    if not targets and (include is not None or exclude is not None):
        raise ValueError(f"include={include!r}, exclude={exclude!r} leave no weight matrix of "
                         f"{type(module).__name__}; available: {sorted(find_weight_matrices(module))[:40]}.")
    taps = _conv_taps(module) if conv == "taps" else {}
    mats: dict[str, Tensor] = {}
    pooled: dict[str, list[str]] = {}
    for target, mat in targets.items():
        if target in taps:
            keys = [f"{target}[{t}]" for t in range(taps[target].shape[0])]
            mats.update(zip(keys, taps[target], strict=True))
            pooled[target] = keys
        else:
            mats[target], pooled[target] = mat, [target]
    spectra = singular_values(mats, dtype=dtype, method=method)
    fitted = "alpha" in names or "alpha_weighted" in names
    rows = []
    for target, keys in pooled.items():
        s = spectra[keys[0]][0] if len(keys) == 1 else torch.cat([spectra[k][0] for k in keys]).sort(descending=True)[0]
        shape = tuple(mats[keys[0]].shape)
        fit = power_law_fit(s, shape) if fitted else None
        row: dict[str, object] = {"target": target, "rows": shape[0], "cols": shape[1], "taps": len(keys)}
        row.update(scalar_metrics(s, names, shape, fit=fit))
        if fit is not None:
            row.update(xmin=fit.xmin, ks_distance=fit.ks_distance, tail_size=fit.tail_size)
        rows.append(row)
    columns = ["target", "rows", "cols", "taps", *names] + (["xmin", "ks_distance", "tail_size"] if fitted else [])
    table = pd.DataFrame(rows, columns=columns)
    if "numerical_rank" in names:
        table["numerical_rank"] = table["numerical_rank"].astype(int)
    return table


def _conv_taps(module: nn.Module) -> dict[str, Tensor]:
    """``{parameter name: (prod(kernel), out, in/groups)}`` for the weight of every ``nn.Conv1d/2d/3d``
    with a kernel of more than one position: one matrix per kernel position (views, no copy)."""
    out = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _CONV) and isinstance(getattr(mod, "weight", None), Tensor) and mod.weight.dim() >= 3:
            w = mod.weight
            if math.prod(w.shape[2:]) > 1:
                name = f"{mod_name}.weight" if mod_name else "weight"
                out[name] = w.flatten(2).permute(2, 0, 1)
    return out


def subspace_drift(u_prev: Tensor, u_now: Tensor) -> float:
    """``1 - ||U_prev^T U_now||_F^2 / k`` between two orthonormal ``(m, k)`` bases.

    Example::

        >>> e = torch.eye(3)
        >>> subspace_drift(e[:, :1], e[:, :1]), subspace_drift(e[:, :1], e[:, 1:2])
        (0.0, 1.0)
    """
    k = min(u_prev.shape[1], u_now.shape[1])
    if k == 0:
        return 0.0
    overlap = u_prev[:, :k].T.to(u_now.dtype) @ u_now[:, :k]
    return float(1.0 - (overlap * overlap).sum() / k)


def mode_strengths(matrix: Tensor, u: Tensor, v: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``K_a = u_a^T W v_a`` for each column pair of the task basis ``U`` (out x r), ``V`` (in x r).

    Raises:
        ValueError: when the basis does not fit the matrix.

    Example::

        >>> mode_strengths(torch.diag(torch.tensor([3.0, 1.0])), torch.eye(2), torch.eye(2)).tolist()
        [3.0, 1.0]
    """
    check_basis_fits(tuple(matrix.shape), u, v)
    cdtype = compute_dtype(matrix, dtype)
    with torch.no_grad():
        w = matrix.detach().to(cdtype)
        uu = u.detach().to(device=w.device, dtype=cdtype)
        vv = v.detach().to(device=w.device, dtype=cdtype)
        return ((uu.T @ w) * vv.T).sum(dim=1)


def check_basis_fits(shape: tuple[int, ...], u: Tensor, v: Tensor, what: str = "map") -> None:
    """Raise a ``ValueError`` if a task basis ``U`` (out x r), ``V`` (in x r) does not fit ``shape``."""
    if u.dim() != 2 or v.dim() != 2 or u.shape[0] != shape[0] or v.shape[0] != shape[1] or u.shape[1] != v.shape[1]:
        raise ValueError(
            f"task basis with U of shape {tuple(u.shape)} and V of shape {tuple(v.shape)} does not fit "
            f"the {what} of shape {tuple(shape)}: need U (out={shape[0]} x r) and V (in={shape[1]} x r)."
        )
