"""Benchmark: cost of spectral monitoring, against weightwatcher, and its training overhead.

(i) Full spectral analysis of two large models built here with random weights: a
GPT-2-small-sized transformer (12 blocks, width 768, MLP 3072, vocabulary 50257, context
1024; ``nn.Linear``/``nn.Embedding``) and a ResNet-50-sized CNN (bottleneck stages 3/4/6/3,
widths 256..2048, ``nn.Conv2d``). Timed in the same run, each time the best of
``--repeats-i`` runs:

* ``ours``: what ``SpectralMonitor`` computes per record: every weight matrix (documented
  views), all singular values, and every scalar metric; with the default ``method="auto"``
  (on CPU float32 Gram spectra where accurate) and with ``method="gram"`` (float64 Gram
  throughout: float32-SVD accuracy guaranteed);
* ``ours analyze()``: :func:`lightning_critical.spectral.analyze`, one row per matrix with every
  scalar metric (weightwatcher's ``alpha``, ``alpha_weighted``, ``log_norm``,
  ``log_spectral_norm``, the MP soft rank and numerical rank among them), with conv layers
  flattened (the monitor's view) and as weightwatcher pools them (``conv="taps"``);
* ``weightwatcher analyze()``: its default analysis (ESD + power-law fits) of the same model;
  then, layer by layer, how many of the layers both analyse agree on ``alpha`` (within 0.05)
  and the other shared metrics, for the weights as built and for heavy-tailed (Student-t)
  weights whose ESD has a power-law tail like a trained network's;
* ``same matrices``: the singular values of exactly the matrices weightwatcher analysed
  (its ``Wmats``: 1 per dense layer, ``k*k`` slices per conv layer), by weightwatcher's own
  ESD routine (``apply_esd``) and by ours (:func:`lightning_critical.spectral.singular_values`),
  and the largest difference between the two spectra relative to the layer's top singular
  value (float32 accuracy is ~1e-6).

``--device cuda`` puts the models on the GPU: ours then runs there, and weightwatcher, which
switches its SVDs to ``torch.linalg.svdvals`` on CUDA whenever CUDA is available, too (so
on a CUDA machine compare CPU against CPU with ``CUDA_VISIBLE_DEVICES=`` set).

(ii) Training overhead of ``SpectralMonitor()`` at its defaults on the digits ``SmallCNN``:
fits with and without the monitor, alternated, median of ``--repeats``.

weightwatcher is not a dependency of the project; install it into a separate folder used
only here (it pulls no torch of its own with ``--no-deps``)::

    .venv/bin/python -m pip install --target outputs/bench-ww --no-deps \\
        weightwatcher powerlaw mpmath safetensors matplotlib-inline
    .venv/bin/python benchmarks/spectral.py --ww-path outputs/bench-ww --threads 1

Without ``--ww-path`` weightwatcher is imported from the running environment if it is
there; where it is not, part (i) times ours only and says so. ``--threads`` sets
torch's intra-op threads and numpy/scipy's BLAS threads alike (default: the libraries' choice).
Prints ratios (baseline time / ours); nothing is asserted.

``--quick`` runs every part on toy models (a 1-block width-64 transformer, a one-block-per-stage
width-8 ResNet, one digits epoch on 200 images, one repeat): seconds, and the times mean
nothing; it only proves the script still runs against the package's API (a test does it).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

import lightning_critical as lc
from lightning_critical.spectral import (
    CONV_VIEWS,
    SCALAR_METRICS,
    analyze,
    find_weight_matrices,
    scalar_metrics,
    singular_values,
)


# ---- reference architectures, built locally (no torchvision) ------------------------------
class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


def gpt2_small(vocab: int = 50257, context: int = 1024, d: int = 768, layers: int = 12) -> nn.Module:
    """GPT-2-small-sized parameter layout (124M parameters), random init."""
    model = nn.Module()
    model.wte, model.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
    model.h = nn.ModuleList(Block(d) for _ in range(layers))
    model.ln_f = nn.LayerNorm(d)
    model.lm_head = nn.Linear(d, vocab, bias=False)
    model.lm_head.weight = model.wte.weight  # tied, as in GPT-2
    return model


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )


def resnet50(
    num_classes: int = 1000,
    blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3),
    widths: tuple[int, ...] = (64, 128, 256, 512),
) -> nn.Module:
    """ResNet-50-sized parameter layout (25.6M parameters at the defaults), random init."""
    model = nn.Module()
    cin = widths[0]
    model.conv1, model.bn1 = nn.Conv2d(3, cin, 7, 2, 3, bias=False), nn.BatchNorm2d(cin)
    for i, (blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
        stage = []
        for j in range(blocks):
            stage.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
            cin = 4 * width
        setattr(model, f"layer{i + 1}", nn.Sequential(*stage))
    model.fc = nn.Linear(cin, num_classes)
    return model


# ---- part (i) ------------------------------------------------------------------------------
REPEATS = 3  # every time in part (i) is the best of this many runs (--repeats-i)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time of ``REPEATS`` calls (CUDA work included), and the last result."""
    best, out = float("inf"), None
    for _ in range(REPEATS):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def ours_full(model: nn.Module, method: str = "auto") -> dict[str, dict[str, float]]:
    """What one SpectralMonitor record computes: every matrix, all singular values, all scalar metrics."""
    mats = find_weight_matrices(model)
    spectra = singular_values(mats, method=method)
    return {n: scalar_metrics(s, SCALAR_METRICS, tuple(mats[n].shape)) for n, (s, _) in spectra.items()}


# (ours, weightwatcher's) columns compared, and the tolerance for "agrees"
COMPARED: tuple[tuple[str, str, float], ...] = (
    ("alpha", "alpha", 0.05), ("alpha_weighted", "alpha_weighted", 0.05), ("log_norm", "log_norm", 1e-4),
    ("log_spectral_norm", "log_spectral_norm", 1e-4), ("numerical_rank", "matrix_rank", 0.5),
)


def heavy_tailed_(model: nn.Module, seed: int = 0) -> None:
    """Give every weight matrix Student-t (3 degrees of freedom) entries at its own scale: an ESD
    with a power-law tail, like a trained network's, rather than a random init's bulk."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                t = torch.from_numpy(rng.standard_t(3.0, tuple(p.shape))).to(p)
                p.copy_(t * (p.std() / t.std()))


def compare_analyze(theirs: Any, ours: Any, label: str) -> float:
    """Print how ``analyze()`` and weightwatcher's ``analyze()`` agree, layer by layer; return
    the fraction of shared layers whose ``alpha`` agrees within 0.05.

    weightwatcher multiplies conv eigenvalues by a constant (``conv2d_norm``); the log norms
    are compared after undoing it (the factor is read from its ``lambda_max``)."""
    theirs = theirs.assign(target=theirs.longname + ".weight").drop_duplicates("target").set_index("target")
    both = ours.set_index("target").join(theirs, how="inner", lsuffix="", rsuffix="_ww")
    if both.empty:
        print(f"    {label}: no layer analysed by both")
        return float("nan")
    offset = np.log10(both.lambda_max.astype(float)) - 2 * np.log10(both.spectral_norm.astype(float))
    corrected = {
        "log_norm": both.log_norm_ww - offset,
        "log_spectral_norm": both.log_spectral_norm_ww - offset,
        "alpha_weighted": both.alpha_ww * (both.log_spectral_norm_ww - offset),
    }
    parts = []
    fraction = float("nan")
    for mine, their_name, tol in COMPARED:
        their_col = f"{their_name}_ww" if their_name in ours.columns else their_name
        ref = corrected.get(mine, both[their_col]).astype(float)
        agree = (both[mine].astype(float) - ref).abs() <= tol
        if mine == "alpha":
            fraction = float(agree.mean())
        parts.append(f"{mine} {int(agree.sum())}/{len(both)}")
    unmatched = len(theirs) - len(both)
    factors = sorted({round(10 ** float(o), 4) for o in offset if abs(o) > 1e-4})
    print(f"    {label}: {len(both)} layers analysed by both"
          + (f" ({unmatched} of weightwatcher's are tied or not ours)" if unmatched else "")
          + f"; alpha within 0.05 on {100 * fraction:.0f}% of them; agreeing layers per metric: " + ", ".join(parts)
          + (f" (log norms after weightwatcher's conv factors {factors})" if factors else ""))
    return fraction


def worst_difference(layers: list[Any], spectra: dict[str, tuple[torch.Tensor, Any]]) -> tuple[float, set[float]]:
    """Largest ``|s_ours - s_ww| / s_max`` over weightwatcher's layers (its conv scale undone)."""
    worst, scale_note = 0.0, set[float]()
    for layer in layers:
        ours = np.sort(np.concatenate([spectra[f"{layer.layer_id}/{i}"][0].double().cpu().numpy() ** 2
                                       for i in range(len(layer.Wmats))]))
        theirs = np.sort(np.asarray(layer.evals, dtype=np.float64))
        ours = ours[-len(theirs):]
        # weightwatcher rescales conv slices (conv2d_norm); undo its constant factor before comparing
        factor = theirs[-1] / ours[-1]
        if abs(factor - 1) > 1e-5:
            scale_note.add(round(float(factor), 4))
        rel = np.max(np.abs(np.sqrt(np.clip(ours * factor, 0, None)) - np.sqrt(np.clip(theirs, 0, None))))
        rel /= np.sqrt(theirs[-1])
        worst = max(worst, float(rel))
    return worst, scale_note


def ww_layers(watcher: Any) -> tuple[list[Any], dict[str, Any]]:
    """weightwatcher's own layer iterator: the layers (and matrices) its analysis uses, and its parameters."""
    from weightwatcher.constants import DEFAULT_PARAMS
    from weightwatcher.weightwatcher import WWLayerIterator

    params = DEFAULT_PARAMS.copy()
    return [layer for layer in WWLayerIterator(model=watcher.model, framework=watcher.framework, params=params)
            if not layer.skipped and layer.has_weights], params


def compare_same_matrices(watcher: Any, model: nn.Module, device: torch.device) -> None:
    layers, params = ww_layers(watcher)
    if not layers:
        print("  same matrices: weightwatcher analysed no layer of this model (all under its size thresholds)")
        return
    t_ww, _ = timed(lambda: [watcher.apply_esd(layer, params) for layer in layers])
    mats = {f"{layer.layer_id}/{i}": torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            for layer in layers for i, w in enumerate(layer.Wmats)}
    print(f"  same matrices: {len(layers)} layers / {len(mats)} matrices analysed by weightwatcher; "
          f"weightwatcher ESD {t_ww:.2f} s")
    for method in ("auto", "gram"):
        # host -> device copies timed as well: weightwatcher's own are inside its time
        t_ours, spectra = timed(functools.partial(
            lambda method: singular_values({k: v.to(device) for k, v in mats.items()}, method=method), method))
        worst, scale_note = worst_difference(layers, spectra)
        print(f"    ours method={method!r}: {t_ours:.2f} s -> {t_ww / t_ours:.1f}x; "
              f"max |s_ours - s_ww| / s_max = {worst:.2e}"
              + (f" (after weightwatcher's conv scale factors {sorted(scale_note)})" if scale_note else ""))
    skipped = sorted(set(find_weight_matrices(model)) - {f"{layer.longname}.weight" for layer in layers})
    if skipped:
        print(f"  weightwatcher did not analyse {len(skipped)} of our targets, e.g. {skipped[:3]}")


def load_weightwatcher(ww_path: str | None) -> ModuleType | None:
    """weightwatcher from ``ww_path`` (a ``pip install --target`` folder) or the environment; None if absent."""
    if ww_path:
        sys.path.insert(0, os.path.abspath(ww_path))
    try:
        import weightwatcher
    except ImportError as err:
        where = f"in {ww_path}" if ww_path else "in this environment (see --ww-path)"
        print(f"weightwatcher is not installed {where} ({err}): comparison skipped, ours timed alone")
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return weightwatcher


def part_one(ww: ModuleType | None, device: torch.device, quick: bool = False) -> None:
    builds: tuple[tuple[str, Callable[[], nn.Module]], ...] = (
        ("GPT-2-small-sized transformer", gpt2_small), ("ResNet-50-sized CNN", resnet50)
    )
    if quick:
        builds = (("toy transformer", functools.partial(gpt2_small, vocab=300, context=64, d=64, layers=1)),
                  ("toy ResNet", functools.partial(resnet50, 10, (1, 1, 1, 1), (8, 16, 32, 64))))
    for name, build in builds:
        torch.manual_seed(0)
        model = build().eval().to(device)
        n_params = sum(p.numel() for p in model.parameters())
        n_mats = len(find_weight_matrices(model))
        print(f"{name}: {n_params / 1e6:.1f}M parameters, {n_mats} weight matrices, on {device}")
        t_ours = {}
        for method in ("auto", "gram"):
            t_ours[method], _ = timed(functools.partial(ours_full, model, method))
            print(f"  ours method={method!r} (all singular values + {len(SCALAR_METRICS)} metrics, every matrix): "
                  f"{t_ours[method]:.2f} s")
        t_analyze = {}
        for conv in CONV_VIEWS:
            t_analyze[conv], _ = timed(functools.partial(analyze, model, conv=conv))
            print(f"  ours analyze(conv={conv!r}) (one row per matrix, {len(SCALAR_METRICS)} metrics + fit): "
                  f"{t_analyze[conv]:.2f} s")
        if ww is None:
            continue
        watcher = ww.WeightWatcher(model=model)
        t_ww, details = timed(watcher.analyze)
        print(f"  weightwatcher analyze() defaults: {t_ww:.2f} s on {len(details)} layers -> ratio "
              + ", ".join(f"{t_ww / t:.1f}x ({m!r})" for m, t in t_ours.items()))
        print("  analyze() against weightwatcher analyze(), same run: "
              + ", ".join(f"conv={c!r} {t_ww / t:.1f}x faster" for c, t in t_analyze.items()))
        shared = sorted(set(details.longname + ".weight") & set(find_weight_matrices(model)))
        if len(shared) < n_mats:
            # weightwatcher skips matrices silently (e.g. over 50000 rows: GPT-2's embedding)
            t_shared = {c: timed(functools.partial(analyze, model, include=shared, conv=c))[0] for c in CONV_VIEWS}
            print(f"  on the {len(shared)} of our {n_mats} matrices that weightwatcher analyses: "
                  + ", ".join(f"analyze(conv={c!r}) {t:.2f} s -> {t_ww / t:.1f}x faster" for c, t in t_shared.items()))
        for conv in CONV_VIEWS:
            compare_analyze(details, analyze(model, conv=conv), f"conv={conv!r}, weights as built")
        heavy_tailed_(model)
        compare_analyze(ww.WeightWatcher(model=model).analyze(), analyze(model, conv="taps"),
                        "conv='taps', heavy-tailed weights")
        compare_same_matrices(watcher, model, device)


# ---- part (ii) -----------------------------------------------------------------------------
class TimedSpectralMonitor(lc.SpectralMonitor):
    """SpectralMonitor that adds up the wall time spent inside its own hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def _timed(self, hook: Callable, *args: object) -> None:
        start = time.perf_counter()
        hook(*args)
        self.seconds += time.perf_counter() - start

    def on_train_start(self, *args: object) -> None:
        self._timed(super().on_train_start, *args)

    def on_train_batch_start(self, *args: object) -> None:
        self._timed(super().on_train_batch_start, *args)

    def on_train_end(self, *args: object) -> None:
        self._timed(super().on_train_end, *args)


def fit_digits(
    with_monitor: bool | None,
    epochs: int,
    root: str,
    timed_monitor: TimedSpectralMonitor | None = None,
    subset: int | None = None,
) -> float:
    """One timed fit; ``with_monitor=None`` attaches an empty ``Callback`` (Lightning's own per-callback cost)."""
    pl.seed_everything(0, verbose=False)
    dm = lc.data.DigitsDataModule(batch_size=32, subset=subset)
    model = lc.models.SmallCNN(seed=0)
    callbacks: list[pl.Callback] = (
        [lc.SpectralMonitor()] if with_monitor else ([pl.Callback()] if with_monitor is None else [])
    )
    if timed_monitor is not None:
        callbacks = [timed_monitor]
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, default_root_dir=root, num_sanity_val_steps=0,
                         limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


def part_two(epochs: int, repeats: int, subset: int | None = None) -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as root:
        fit_digits(False, 1, root, subset=subset)  # warm-up (imports, allocator)
        plain: list[float] = []
        empty: list[float] = []
        monitored: list[float] = []
        for _ in range(repeats):
            plain.append(fit_digits(False, epochs, root, subset=subset))
            empty.append(fit_digits(None, epochs, root, subset=subset))
            monitored.append(fit_digits(True, epochs, root, subset=subset))
    for what, stat in (("median", statistics.median), ("min", min)):
        p, e, m = stat(plain), stat(empty), stat(monitored)
        print(f"digits SmallCNN, {epochs} epochs ({what} of {repeats} alternated fits): without monitor {p:.3f} s, "
              f"with SpectralMonitor() {m:.3f} s -> overhead {100 * (m - p) / p:+.1f}% "
              f"(an empty Callback alone: {100 * (e - p) / p:+.1f}%)")
    # Run-to-run noise on a shared machine is a few percent; the time spent inside the
    # monitor's own hooks is a noise-free measure of what it adds.
    with tempfile.TemporaryDirectory() as root:
        timed_monitor = TimedSpectralMonitor()
        total = fit_digits(True, epochs, root, timed_monitor, subset=subset)
    records = timed_monitor.to_frame().step.nunique()
    print(f"time inside SpectralMonitor() hooks: {timed_monitor.seconds:.3f} s of a {total:.3f} s fit "
          f"({records} records) -> {100 * timed_monitor.seconds / (total - timed_monitor.seconds):.1f}% overhead")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ww-path", default=None, help="folder where weightwatcher was pip-installed (--target)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=10, help="digits training epochs for part (ii)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeats-i", type=int, default=3, help="part (i): best of this many runs")
    parser.add_argument("--device", default="cpu", help="part (i): where the models live (e.g. cuda)")
    parser.add_argument("--skip", choices=["i", "ii"], default=None)
    parser.add_argument("--quick", action="store_true", help="toy models, one repeat: seconds; times mean nothing")
    args = parser.parse_args(argv)
    global REPEATS
    REPEATS = 1 if args.quick else args.repeats_i
    if args.quick and args.threads is None:
        # toy matrices: waking BLAS/OpenMP threads costs more than the work (on busy cores, 100x more)
        args.threads = 1
    limits = None
    if args.threads:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        torch.set_num_threads(args.threads)
        limits = threadpool_limits(args.threads)  # numpy/scipy BLAS too: weightwatcher gets the same threads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.skip != "i":
        part_one(load_weightwatcher(args.ww_path), torch.device(args.device), quick=args.quick)
    del limits
    if args.skip != "ii":
        if args.quick:
            part_two(epochs=1, repeats=1, subset=200)
        else:
            part_two(args.epochs, args.repeats)


if __name__ == "__main__":
    main()
