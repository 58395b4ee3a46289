"""Which convention ``analyze()`` follows, and complex-valued parameters (issue 20, item 6).

The weightwatcher reference is computed here from first principles, as its source does it
(weightwatcher.py: ``conv2D_Wmats`` takes ``W[:, :, i, j]`` for every kernel position,
``combined_eigenvalues`` concatenates the ``sv**2`` of each, ``apply_normalize_Wmats``
multiplies Conv2D weights by ``sqrt(1/2)``), then fitted by the package's own power-law fit.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, cast

import numpy as np
import pytest
import torch
from torch import nn

import lightning_critical as lc
from lightning_critical.spectral import analyze, esd, singular_values
from lightning_critical.spectral.formulas import mode_strengths, power_law_fit, subspace_drift
from lightning_critical.spectral.metrics import Spectrum
from lightning_critical.spectral.records import RecordSettings, spectral_record
from lightning_critical.spectral.svd import (
    gram_singular_values,
    gram_singular_values_torch,
    randomized_singular_values,
)

_M = TypeVar("_M", bound=nn.Module)


def heavy_tailed_(module: _M) -> _M:
    """Student-t(3) entries: a power-law tail worth fitting."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(np.random.default_rng(p.numel()).standard_t(3, p.shape)))
    return module


def weightwatcher_alpha(weight: torch.Tensor) -> float:
    """alpha of a Conv2d weight ``(out, in, kh, kw)`` as weightwatcher computes it (pool=True)."""
    w = weight.detach().double().numpy() * math.sqrt(0.5)  # conv2d_norm: W * sqrt(conv2d_count / 2)
    evals = []
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            tap = w[:, :, i, j]
            tap = tap.T if tap.shape[0] < tap.shape[1] else tap  # N >= M
            evals.append(np.linalg.svd(tap, compute_uv=False) ** 2)
    return esd.fit_power_law(np.sort(np.concatenate(evals))).alpha


def test_default_conv_alpha_is_weightwatchers_and_the_table_says_so():
    conv = heavy_tailed_(nn.Conv2d(32, 64, 3))
    model = nn.Sequential(conv, nn.Flatten(), heavy_tailed_(nn.Linear(40, 30)))
    table = analyze(model, metrics=["alpha", "numerical_rank"])
    row = table.set_index("target").loc["0.weight"]
    reference = weightwatcher_alpha(conv.weight)
    assert row.alpha == pytest.approx(reference, rel=1e-4)
    assert (row.rows, row.cols, row.taps, row.conv) == (64, 32, 9, "taps")
    assert table.attrs == {"conv": "taps", "weightwatcher_conv": True}
    assert table.conv.isna().tolist() == [False, True]  # a Linear has no conv view
    # the monitor's flattened view is another matrix, with another alpha, and says so too
    flat = analyze(model, metrics=["alpha"], conv="flatten")
    assert flat.attrs == {"conv": "flatten", "weightwatcher_conv": False}
    assert (flat.cols[0], flat.taps[0], flat.conv[0]) == (32 * 9, 1, "flatten")
    assert abs(flat.alpha[0] - reference) > 0.1
    assert flat.alpha[1] == table.alpha[1]  # other layers do not depend on conv


def test_conv_transpose_is_flattened_and_labelled_so():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3), nn.Conv1d(3, 5, 1))
    table = analyze(model, metrics=["numerical_rank"]).set_index("target")
    assert table.conv.to_dict() == {"0.weight": "flatten", "1.weight": "taps"}
    assert table.loc["0.weight", "cols"] == 4 * 9 and table.loc["1.weight", "taps"] == 1


class ComplexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.small = nn.Parameter(torch.randn(20, 12, dtype=torch.complex64, generator=gen))
        self.wide = nn.Parameter(torch.randn(130, 300, dtype=torch.complex64, generator=gen))  # Gram-sized
        self.square = nn.Parameter(torch.randn(140, 140, dtype=torch.complex128, generator=gen))
        self.conv = nn.Conv2d(3, 5, 2, dtype=torch.complex64)


def reference(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(t.detach().to(torch.complex128))


@pytest.mark.parametrize("method", ["svd", "gram", "gram32", "auto"])
def test_complex_spectra_are_the_complex_matrix_s_for_every_route(method):
    net = ComplexNet()
    mats = lc.spectral.find_weight_matrices(net)
    spectra = singular_values(mats, method=method)
    for name, mat in mats.items():
        s = spectra[name][0]
        assert not s.is_complex() and s.dtype == (torch.float64 if mat.dtype == torch.complex128 else torch.float32)
        ref = reference(mat)
        torch.testing.assert_close(s.double(), ref, rtol=0, atol=2e-5 * float(ref[0]))
        real = torch.linalg.svdvals(mat.detach().real.double())
        assert (s.double() - real).abs().max() > 0.1 * float(ref[0]), name  # never the real part's
        modulus = torch.linalg.svdvals(mat.detach().abs().double())
        assert (s.double() - modulus).abs().max() > 0.1 * float(ref[0]), name  # nor the modulus's


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complex_gram_and_randomized_routes(dtype):
    batch = torch.randn(2, 40, 25, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    ref = torch.linalg.svdvals(batch)
    s = gram_singular_values(batch, dtype)
    assert s.dtype == dtype
    torch.testing.assert_close(s.double(), ref, rtol=0, atol=1e-5 * float(ref.max()))
    wide = gram_singular_values(batch.mT, dtype).double()
    torch.testing.assert_close(wide, ref, rtol=0, atol=1e-5 * float(ref.max()))
    # the route GPUs take, run here on the CPU
    torch.testing.assert_close(gram_singular_values_torch(batch.to(dtype.to_complex())).double(), ref, rtol=0,
                               atol=1e-5 * float(ref.max()))
    top, u = randomized_singular_values(batch.to(dtype.to_complex()), k=5, power_iterations=20)
    torch.testing.assert_close(top.double(), ref[:, :5], rtol=1e-4, atol=0)
    # the vectors are the complex left singular vectors: |<u_i, W W^H u_i>| = s_i^2
    gram = batch.to(u.dtype) @ batch.to(u.dtype).mH
    energy = torch.einsum("bmi,bmn,bni->bi", u.conj(), gram, u).real
    torch.testing.assert_close(energy.double(), ref[:, :5] ** 2, rtol=1e-3, atol=0)
    # singular_values sends large top_k requests there too
    out = singular_values({"w": batch[0]}, top_k=3, randomized_min_dim=20)["w"][0]
    torch.testing.assert_close(out.double(), ref[0, :3], rtol=1e-4, atol=0)


def test_analyze_complex_parameters_by_their_complex_spectra():
    net = ComplexNet()
    table = analyze(net, metrics=["spectral_norm", "frobenius_norm", "alpha"]).set_index("target")
    mats = lc.spectral.find_weight_matrices(net)
    for name in ("small", "wide", "square"):
        ref = reference(mats[name])
        assert table.loc[name, "spectral_norm"] == pytest.approx(float(ref[0]), rel=1e-5)
        assert table.loc[name, "frobenius_norm"] == pytest.approx(float(ref.square().sum().sqrt()), rel=1e-5)
        assert table.loc[name, "alpha"] == pytest.approx(power_law_fit(ref, tuple(mats[name].shape)).alpha, rel=1e-3)
    w = net.conv.weight.detach()
    taps = torch.cat([reference(w[:, :, i, j]) for i in range(2) for j in range(2)])
    assert table.loc["conv.weight", "spectral_norm"] == pytest.approx(float(taps.max()), rel=1e-5)
    assert table.loc["conv.weight", "taps"] == 4


def test_monitor_record_of_complex_weights():
    net = ComplexNet()
    mats = {"wide": net.wide, "small": net.small}
    settings = RecordSettings(("spectral_norm", "frobenius_norm", "subspace_drift"), top_k=3)
    first = spectral_record(mats, step=0, epoch=0, settings=settings)
    values = {(t, m): v for _, _, t, m, _, v in first.rows}
    for name, mat in mats.items():
        ref = reference(mat)
        assert values[(name, "spectral_norm")] == pytest.approx(float(ref[0]), rel=1e-5)
        # exact from the entries under top_k, with the imaginary part
        assert values[(name, "frobenius_norm")] == pytest.approx(float(torch.linalg.norm(mat.detach())), rel=1e-5)
    # the same matrix with a phase on every singular vector has not drifted
    again = spectral_record({"wide": net.wide * 1j, "small": net.small}, step=1, epoch=0, settings=settings,
                            previous_vectors=first.vectors)
    drift = {t: v for _, _, t, m, _, v in again.rows if m == "subspace_drift"}
    assert drift == pytest.approx({"wide": 0.0, "small": 0.0}, abs=1e-5)


def test_nan_in_the_imaginary_part_is_seen():
    w = torch.zeros(4, 3, dtype=torch.complex64)
    w[1, 1] = cast(Any, complex(0.0, float("nan")))  # torch's stubs leave complex out; torch takes it
    rec = spectral_record({"w": w}, step=0, epoch=0, settings=RecordSettings(("spectral_norm",)))
    assert rec.nonfinite == ["w"]


def test_complex_values_are_refused_where_a_real_spectrum_is_expected():
    w = torch.randn(6, 4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="s has dtype torch.complex64: singular values are real"):
        power_law_fit(w[:, 0], (6, 4))
    with pytest.raises(ValueError, match="eigenvalues have dtype complex64: an ESD is real"):
        esd.fit_power_law(w[:, 0].numpy())
    with pytest.raises(ValueError, match="eigenvalues have dtype complex64"):
        esd.mp_soft_rank(w[:, 0].numpy(), (6, 4))
    with pytest.raises(ValueError, match=r"mode_strength of head\.weight: the matrix is complex"):
        mode_strengths(w, torch.eye(6)[:, :2], torch.eye(4)[:, :2], name="head.weight")


def test_subspace_drift_uses_the_conjugate_transpose():
    q = torch.linalg.qr(torch.randn(8, 3, dtype=torch.complex128)).Q
    assert subspace_drift(q, q * (1j)) == pytest.approx(0.0, abs=1e-12)
    assert subspace_drift(q, q) == pytest.approx(0.0, abs=1e-12)
    other = torch.linalg.qr(torch.cat([q, torch.randn(8, 3, dtype=torch.complex128)], 1)).Q[:, 3:]
    assert subspace_drift(q, other) == pytest.approx(1.0, abs=1e-12)


def test_spectrum_frobenius_of_complex_entries():
    w = torch.tensor([[3.0 + 4.0j, 0.0], [0.0, 0.0]])
    sp = Spectrum(torch.linalg.svdvals(w)[:1], (2, 2), entries=w)
    assert sp.frobenius_norm == pytest.approx(5.0)
