"""How singular values are computed: the SVD routes (LAPACK Gram, float32 Gram, randomized, torch SVD) and BLAS threads.

Plain torch (and SciPy's LAPACK for CPU spectra), no Lightning. Every function works on the
device and dtype it is given, except that spectra are always computed in ``float32`` or
better (:func:`compute_dtype`). Matrices of equal shape are stacked and solved as one batch.
All singular values come from the Gram matrix (float64 on GPUs; on CPU float32 where that is
accurate, float64 otherwise: float32-SVD accuracy either way, see :func:`singular_values`)
except for CPU matrices with a side under 128 (``torch.linalg.svdvals``); with ``top_k`` on
very large matrices, a seeded randomized range finder. Complex matrices are computed in the
complex type of the same precision (never cast to a real type, which would drop the imaginary
part): every route gives the singular values of the complex matrix.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from lightning_critical._checks import check_choice, check_float_dtype

SVD_METHODS: tuple[str, ...] = ("auto", "svd", "gram", "gram32")
# "gram32" keeps a float32 spectrum only when s_min >= GRAM32_MIN_RATIO * s_1 (see singular_values).
GRAM32_MIN_RATIO = 0.2
# "auto" uses the Gram route on CPU for matrices whose smaller side is at least this.
GRAM_MIN_DIM = 128


def compute_dtype(t: Tensor, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype spectra of ``t`` are computed in: ``dtype`` (a real precision) if given, else
    float64 for float64 / complex128 input and float32 for everything else; its complex
    counterpart (complex64 / complex128) for a complex ``t``, whose imaginary part a cast to a
    real dtype would drop.

    Example::

        >>> compute_dtype(torch.zeros(2, dtype=torch.bfloat16)), compute_dtype(torch.zeros(2, dtype=torch.cfloat))
        (torch.float32, torch.complex64)
    """
    if dtype is None:
        dtype = torch.float64 if t.dtype in (torch.float64, torch.complex128) else torch.float32
    return dtype.to_complex() if t.is_complex() else dtype.to_real()


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
    the storage dtype (bf16/fp16 weights are upcast). A complex matrix keeps its imaginary
    part: its spectrum is that of the complex matrix (``torch.linalg.svdvals`` of it; Gram
    routes use ``W^H W``), real values, in the real precision of :func:`compute_dtype`. With
    ``top_k`` and both dimensions at least ``randomized_min_dim``, a randomized truncated SVD
    (:func:`randomized_singular_values`: 6 power iterations, ``top_k + 10`` columns, private
    seeded generator) replaces the full SVD.

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
    check_choice("method", method, SVD_METHODS)
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
                float32_first = on_cpu and cdtype.to_real() == torch.float32 and (
                    method == "gram32" or (method == "auto" and not squat)
                )
                s, u = _gram_route(batch, float32_first).to(cdtype.to_real()), None
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
    diagonalised in ``dtype`` (float64 or float32); for complex ``W`` the Hermitian ``W^H W``
    (or ``W W^H``) in the complex type of that precision, with real ``s`` in ``dtype``; see
    :func:`singular_values` for the accuracy. Not differentiable. On CPU a matrix with NaN/Inf
    entries gets NaN values; elsewhere ``torch.linalg.eigvalsh`` decides (it may raise).

    Example::

        >>> gram_singular_values(torch.tensor([[[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])).tolist()
        [[4.0, 3.0]]
    """
    check_float_dtype("dtype", dtype)
    work = dtype.to_complex() if batch.is_complex() else dtype
    m, n = batch.shape[-2:]
    if min(m, n) == 0:
        return torch.zeros((batch.shape[0], 0), dtype=dtype, device=batch.device)
    if batch.device.type == "cpu":
        small = min(m, n) < 768 or min(m, n) ** 2 * max(m, n) < 10**9
        with _blas_threads(1 if small else torch.get_num_threads()):
            return torch.stack([_gram_singular_values_scipy(w, work) for w in batch.detach()])
    return gram_singular_values_torch(batch.to(work))


def gram_singular_values_torch(batch: Tensor) -> Tensor:
    """:func:`gram_singular_values` through torch (the route off the CPU), in ``batch``'s dtype:
    the eigenvalues of the smaller of ``W^H W`` and ``W W^H``, real for complex ``W``.

    Example::

        >>> gram_singular_values_torch(torch.tensor([[[0.0, 2.0j], [1.0 + 0.0j, 0.0]]])).tolist()
        [[2.0, 1.0]]
    """
    gram = batch.mH @ batch if batch.shape[-2] >= batch.shape[-1] else batch @ batch.mH
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
    ``w`` gives NaNs rather than an exception. A complex ``dtype`` takes ``herk`` (``x^H x``)
    and the Hermitian ``heevd``; the values are real, in ``dtype``'s real precision."""
    from scipy.linalg import blas, eigvalsh

    # w is C-ordered (m, n), so x = w.T is the same memory as a Fortran-ordered (n, m) array:
    # no copy. dsyrk(x, trans=1) = x^T x = w w^T; trans=0 gives x x^T = w^T w. For complex w,
    # zherk(x, trans=2) = x^H x = conj(w w^H), trans=0 gives conj(w^H w): the same eigenvalues.
    x = w.to(dtype).numpy().T
    m, n = w.shape
    real = dtype.to_real()
    if dtype.is_complex:
        gram = (blas.zherk if real == torch.float64 else blas.cherk)(1.0, x, trans=2 if m <= n else 0)
    else:
        gram = (blas.dsyrk if real == torch.float64 else blas.ssyrk)(1.0, x, trans=1 if m <= n else 0)
    if not np.isfinite(gram).all():
        return torch.full((min(m, n),), float("nan"), dtype=real)
    lam = eigvalsh(gram, lower=False, driver="evd", overwrite_a=True, check_finite=False)
    return torch.from_numpy(np.sqrt(np.clip(lam[::-1], 0.0, None)))


def randomized_singular_values(
    batch: Tensor, k: int, oversample: int = 10, power_iterations: int = 6, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Top-``k`` singular values and left vectors of a batch of matrices ``(b, m, n)``.

    Randomized range finder (Halko, Martinsson & Tropp 2011, alg. 4.4): ``Q`` spans
    ``(A A^T)^q A G`` for a Gaussian ``G`` with ``k + oversample`` columns, re-orthonormalised
    after every product; then the SVD of the small ``Q^H A`` (``^H``: conjugate transpose,
    ``^T`` for real ``A``; ``G`` is complex Gaussian for complex ``A``). The error of ``s_i`` shrinks
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
    at = batch.mH
    for _ in range(power_iterations):
        q = torch.linalg.qr(at @ q).Q
        q = torch.linalg.qr(batch @ q).Q
    u_small, s, _ = torch.linalg.svd(q.mH @ batch, full_matrices=False)
    return s[:, :k], (q @ u_small)[:, :, :k]

