"""Critical period for blur on a small CNN (Achille, Rovere & Soatto, ICLR 2019), on digits or CIFAR-10.

Two studies (``lc.sweep.Study``), one ``lc.sweep.run_study`` call each, on the bundled
``SmallCNN`` (SGD with momentum and weight decay, learning rate x0.85 per epoch) and 2x blur (``lc.InputDeficit``):

* the *removal* curve: blur during epochs ``[0, k)``, then ``--epochs-after`` clean epochs;
  final test accuracy against ``k`` (``k = 0`` is the no-deficit run);
* the *sliding-window* curve: blur during ``[k, k + --length)`` inside a run of ``--epochs``
  epochs; the drop in final test accuracy (versus the no-deficit run) against the onset ``k``.

Plus the trace of the Fisher information per layer (``lc.FisherMonitor``, exact expectation
over labels) of one no-deficit run, as in the paper's figure. Each sweep trains shared
prefixes once and runs on one worker process per core (``--backend``); running the script
again reuses the finished runs in ``--out``.

    python examples/digits_blur.py                   # digits, 5 seeds: about 2-3 minutes on 2 cores
    python examples/digits_blur.py --cifar-root ~/data/cifar-10-batches-py
    python examples/digits_blur.py --seeds 2 --removal 0 2 --epochs-after 2 --onsets 0 2 --length 2 \\
        --epochs 4 --subset 200 --backend serial    # seconds

Outputs under ``--out`` (default ``outputs/digits_blur/``): ``removal.csv`` and ``sliding.csv``
(one row per run), ``summary.csv`` (mean, standard error and drop per window, both curves),
``effects.csv`` (early versus late deficit, paired over seeds), ``fisher.csv`` (Fisher trace
per layer and epoch) and ``digits_blur.png``; the sweeps' own directories ``removal/`` and
``sliding/`` hold the results store and per-run TensorBoard logs. What to train
(:func:`studies`), training (:func:`run_sweeps`, :func:`fisher_run`), analysis
(:func:`early_late_effects`) and plotting (:func:`plot`) are separate functions that exchange
tables.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

import lightning_critical as lc
from lightning_critical.curve import paired_effect

METRIC = "test_acc"


def factories(cifar_root: str | None, channels: Sequence[int], lr_decay: float, subset: int | None,
              batch_size: int = 64) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model and datamodule factories (``functools.partial``, so worker processes can receive them).

    The sweep calls both with each run's ``seed``: the seed draws the initial weights and the
    train / validation / test split.
    """
    if cifar_root:
        data: Callable[..., Any] = functools.partial(lc.data.CIFAR10DataModule, cifar_root, batch_size=batch_size,
                                                     val_fraction=0.1, subset=subset)
        in_channels = 3
    else:
        # half of the 1797 digits for testing: the final accuracy is averaged over 899 images
        data = functools.partial(lc.data.DigitsDataModule, batch_size=batch_size, test_fraction=0.5, val_fraction=0.1,
                                 subset=subset)
        in_channels = 1
    model = functools.partial(lc.models.SmallCNN, in_channels, 10, channels=(channels[0], channels[1]), lr=0.1,
                              momentum=0.9, weight_decay=5e-4, lr_decay=lr_decay)
    return model, data


def studies(model: Callable[..., Any], data: Callable[..., Any], *, factor: int, removal_ends: Sequence[int],
            epochs_after: int, onsets: Sequence[int], length: int, epochs: int,
            seeds: Sequence[int]) -> dict[str, lc.sweep.Study]:
    """What to train: the removal and the sliding-window studies (one ``lc.sweep.Study`` each)."""
    common: dict[str, Any] = dict(
        model=model, datamodule=data, metrics=METRIC, test=True, seeds=list(seeds),
        deficit=lc.InputDeficit("blur", window=(0, 1), factor=factor),  # a template: each run gets its own window
    )
    return {
        "removal": lc.sweep.Study(windows=lc.sweep.removal(removal_ends, epochs_after=epochs_after),
                                  trainer={"max_epochs": max(removal_ends) + epochs_after, "accelerator": "cpu"},
                                  **common),
        "sliding": lc.sweep.Study(windows=lc.sweep.sliding(onsets, length),
                                  trainer={"max_epochs": epochs, "accelerator": "cpu"}, **common),
    }


def run_sweeps(model: Callable[..., Any], data: Callable[..., Any], *, factor: int, removal_ends: Sequence[int],
               epochs_after: int, onsets: Sequence[int], length: int, epochs: int, seeds: Sequence[int], out: str,
               backend: str = "process", workers: int | None = None,
               runner: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both studies, one ``lc.sweep.run_study`` each (in ``<out>/removal`` and ``<out>/sliding``), one row per run.

    ``runner="vectorized"`` trains each study's runs as one vectorized job (``lc.sweep.VectorizedRunner``).
    """
    execution = lc.sweep.Execution(backend=backend, workers=workers, runner=runner)
    tables = {
        name: lc.sweep.run_study(study, execution, lc.sweep.Output(out=os.path.join(out, name)))
        for name, study in studies(model, data, factor=factor, removal_ends=removal_ends, epochs_after=epochs_after,
                                   onsets=onsets, length=length, epochs=epochs, seeds=seeds).items()
    }
    return tables["removal"], tables["sliding"]


def _by_seed(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """``metric`` as a (seed x window position) matrix; the baseline sits at position 0 of a removal curve."""
    ok = table[table["status"] == "ok"].copy()
    ok["position"] = ok[x].fillna(0.0)
    return ok.pivot_table(index="seed", columns="position", values=METRIC, aggfunc="first")


def paired_drops(table: pd.DataFrame) -> pd.DataFrame:
    """Per window onset: the drop versus the same seed's no-deficit run, mean and standard error over seeds."""
    ok = table[table["status"] == "ok"]
    base = ok[ok["baseline"]].set_index("seed")[METRIC]
    runs = ok[~ok["baseline"]].copy()
    runs["drop"] = runs["seed"].map(base) - runs[METRIC]
    grouped = runs.groupby("window_start")["drop"]
    return pd.DataFrame({"mean": grouped.mean(), "sem": grouped.sem(), "n_seeds": grouped.count()}).reset_index()


def early_late_effects(removal: pd.DataFrame, sliding: pd.DataFrame) -> pd.DataFrame:
    """The critical-period effect of each curve, paired over seeds.

    Removal: accuracy with the blur removed at the first end minus at the last end. Sliding:
    drop of the earliest window minus drop of the latest (= accuracy at the latest onset
    minus accuracy at the earliest). ``z`` is the mean difference over its standard error
    (the per-seed differences' standard deviation over the square root of their number).
    """
    rows = []
    for curve, table, x in (("removal", removal, "window_end"), ("sliding", sliding, "window_start")):
        wide = _by_seed(table if curve == "removal" else table[~table["baseline"]], x)
        early, late = wide.columns.min(), wide.columns.max()
        better, worse = (early, late) if curve == "removal" else (late, early)
        rows.append({"curve": curve, "early": early, "late": late, **paired_effect(wide, better, worse)})
    return pd.DataFrame(rows)


def fisher_run(model: Callable[..., Any], data: Callable[..., Any], epochs: int, seed: int = 0,
               num_batches: int = 1, every_n_epochs: int = 1) -> pd.DataFrame:
    """One no-deficit run in this process with a ``FisherMonitor``; its tidy records.

    ``labels="expected"`` averages over every class exactly: the one-sampled-label estimate of
    a confident model drops 10-50x at epochs where no example draws a non-predicted label. It
    costs ``classes`` times more (about 0.6 s per batch of 64 digits on one core), hence one
    batch per estimate by default. The monitor leaves training bitwise unchanged: this run is
    the sliding sweep's no-deficit run of the same seed.
    """
    pl.seed_everything(seed, verbose=False)
    monitor = lc.FisherMonitor(every_n_epochs=every_n_epochs, num_batches=num_batches, labels="expected",
                               chunk_size=64, history_file=None)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[monitor])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the small CNN is fastest on one thread
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*LeafSpec.*")  # a deprecation inside Lightning itself
            trainer.fit(model(seed=seed), data(seed=seed))
    finally:
        torch.set_num_threads(threads)
    return monitor.to_frame()


def _effect_text(row: Any, what: str) -> str:
    return (f"{what}: {100 * row['difference']:.2f} ± {100 * row['sem']:.2f} points\n"
            f"= {row['z']:.1f} s.e. (paired over {int(row['n_seeds'])} seeds)")


def _removal_panel(ax: Any, removal: pd.DataFrame, row: Any, title: str) -> None:
    """Panel A: final test accuracy against the epoch T the blur is removed at, the T = 0 run joined to the curve."""
    percent = removal.assign(**{METRIC: 100 * removal[METRIC]})
    percent.attrs.update(removal.attrs)
    after = int((removal.loc[removal["baseline"], "epochs"]).iloc[0])
    lc.plots.plot_critical_period_curve(percent, METRIC, x="window_end", ax=ax,
                                        title=f"A. Removal: blur in [0, T), then {after} clean epochs ({title})")
    curve = lc.sweep.summarize(percent, METRIC)
    base, blurred = curve[curve["baseline"]], curve[~curve["baseline"]]
    if len(base) and len(blurred):  # T = 0 is the no-blur run: join it to the curve
        color = ax.lines[0].get_color()
        first, base_mean = blurred.iloc[0], base["mean"].iloc[0]
        ax.plot([0, first["window_end"]], [base_mean, first["mean"]], ls=":", color=color)
        ax.plot([0], [base_mean], marker="o", markersize=4, color=color)
    for line in ax.lines:
        if line.get_label() == "no deficit":
            line.set_label(f"no blur (T = 0: {after} epochs)")
        elif line.get_label().startswith("deficit"):
            line.set_label("blur in [0, T)")
    ax.set_xticks([0] + sorted(blurred["window_end"].astype(int).tolist()))
    ax.set(xlabel="blur removed at epoch T", ylabel="final test accuracy (%)")
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.text(0.97, 0.72, _effect_text(row, f"T = {row['early']:g} vs {row['late']:g}"), transform=ax.transAxes,
            ha="right", va="top", fontsize=8)


def plot(removal: pd.DataFrame, sliding: pd.DataFrame, fisher: pd.DataFrame, title: str = "digits") -> Figure:
    """Three panels: the removal curve, the sliding-window drop against onset, the Fisher trace per layer."""
    fig = Figure(figsize=(14.5, 4.4))
    axes = fig.subplots(1, 3)
    effects = early_late_effects(removal, sliding).set_index("curve")

    _removal_panel(axes[0], removal, effects.loc["removal"], title)

    ax = axes[1]
    drops = paired_drops(sliding)
    length = int((sliding["window_end"] - sliding["window_start"]).dropna().iloc[0])
    epochs = int(sliding["epochs"].max())
    xs = drops["window_start"].to_numpy(float)
    mean, sem = 100 * drops["mean"].to_numpy(float), 100 * np.nan_to_num(drops["sem"].to_numpy(float))
    ax.plot(xs, mean, marker="o", markersize=4, color="C3", label=f"blur in [T, T + {length})")
    ax.fill_between(xs, mean - sem, mean + sem, color="C3", alpha=0.25, lw=0)
    base_acc = 100 * sliding.loc[sliding["baseline"] & (sliding["status"] == "ok"), METRIC].mean()
    ax.axhline(0, color="0.3", ls="--", lw=1, label=f"no blur ({base_acc:.1f}% test accuracy)")
    ax.set_xticks(xs.astype(int).tolist())
    ax.set(xlabel="blur onset T (epoch)", ylabel="drop in final test accuracy (points)",
           title=f"B. Sliding window: blur for {length} epochs from T, {epochs} epochs in all")
    ax.title.set_fontsize(9)
    ax.legend(frameon=False, fontsize=8)
    row = effects.loc["sliding"]
    ax.text(0.97, 0.72, _effect_text(row, f"onset {row['early']:g} vs {row['late']:g}"), transform=ax.transAxes,
            ha="right", va="top", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)

    ax = axes[2]
    layers = fisher[(fisher["target"] != "total") & (fisher["metric"] == "fisher_trace")] if len(fisher) else fisher
    for target, part in layers.groupby("target", sort=False):
        ax.plot(part["epoch"], part["value"], marker=".", label=str(target))
    if len(layers):
        ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=8, title="layer", title_fontsize=8, loc="lower right")
    ax.set(xlabel="epoch", ylabel="trace of the Fisher information",
           title=f"C. Fisher information per layer, no blur (seed 0, {epochs} epochs)")
    ax.title.set_fontsize(9)
    ax.spines[["top", "right"]].set_visible(False)
    n_seeds = int(removal["seed"].nunique())
    fig.suptitle(f"Critical period for blur on a small CNN: mean ± s.e. over {n_seeds} seed{'s' * (n_seeds != 1)} "
                 "(bands; the sliding drops and the effects are paired by seed)", fontsize=10)
    fig.tight_layout()
    return fig


def summary_table(removal: pd.DataFrame, sliding: pd.DataFrame) -> pd.DataFrame:
    """``lc.sweep.summarize`` of both curves, one table with a ``curve`` column."""
    curves = (("removal", removal), ("sliding", sliding))
    parts = [lc.sweep.summarize(table, METRIC).assign(curve=name) for name, table in curves]
    out = pd.concat(parts, ignore_index=True)
    return out[["curve"] + [c for c in out.columns if c != "curve"]]


def report(summary: pd.DataFrame, effects: pd.DataFrame, tables: Sequence[pd.DataFrame],
           seconds: dict[str, float]) -> str:
    """The printed summary: both curves in percent, the early-vs-late effects, the training saved by sharing."""
    lines = []
    for curve, part in summary.groupby("curve", sort=False):
        shown = part[["window", "mean", "sem", "n_seeds", "drop"]].copy()
        for column in ("mean", "sem", "drop"):
            shown[column] = 100 * shown[column]
        lines += [f"{curve} curve (test accuracy %, mean and s.e. over seeds):",
                  shown.to_string(index=False, float_format="%.2f"), ""]
    for row in effects.itertuples():
        what = (f"blur removed at {row.early:g} vs {row.late:g}" if row.curve == "removal"
                else f"onset {row.early:g} vs {row.late:g}")
        lines.append(f"{row.curve}: early - late deficit effect ({what}) = {100 * row.difference:.2f} points, "
                     f"s.e. {100 * row.sem:.2f} (paired over {row.n_seeds} seeds) = {row.z:.1f} s.e.")
    trained = sum(t.attrs.get("epochs_trained", 0) for t in tables)
    independent = sum(t.attrs.get("epochs_independent", 0) for t in tables)
    lines.append(f"{sum(len(t) for t in tables)} runs: {trained} epochs trained with shared prefixes for {independent} "
                 f"trained independently.\nWall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default=os.path.join("outputs", "digits_blur"))
    parser.add_argument("--cifar-root", default=None, help="folder with the CIFAR-10 python batches (else: digits)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    parser.add_argument("--removal", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10, 12, 16],
                        help="removal curve: blur during [0, k) for each k")
    parser.add_argument("--epochs-after", type=int, default=12, help="removal curve: clean epochs after the blur")
    parser.add_argument("--onsets", type=int, nargs="+", default=[0, 3, 6, 9, 12, 15, 18],
                        help="sliding curve: blur during [k, k + length) for each k")
    parser.add_argument("--length", type=int, default=6, help="sliding curve: blur length in epochs")
    parser.add_argument("--epochs", type=int, default=30, help="sliding curve: epochs of every run")
    parser.add_argument("--factor", type=int, default=2, help="blur factor (down- then up-sampling; digits 8x8 -> 4x4)")
    parser.add_argument("--channels", type=int, nargs=2, default=[32, 64], help="SmallCNN widths")
    parser.add_argument("--lr-decay", type=float, default=0.85, help="learning rate factor per epoch")
    parser.add_argument("--subset", type=int, default=None, help="use only this many training images")
    parser.add_argument("--fisher-batches", type=int, default=1, help="training batches per Fisher estimate (0: none)")
    parser.add_argument("--fisher-every", type=int, default=1, help="epochs between Fisher estimates")
    parser.add_argument("--backend", choices=("process", "serial", "ray"), default=None,
                        help="where runs train (default: process; serial with --runner vectorized: one job)")
    parser.add_argument("--runner", choices=("vectorized", "auto"), default=None,
                        help="vectorized: all runs of a study trained as one torch.func job (default: one fit per run)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    model, data = factories(args.cifar_root, args.channels, args.lr_decay, args.subset)
    removal, sliding = run_sweeps(
        model, data, factor=args.factor, removal_ends=args.removal, epochs_after=args.epochs_after, onsets=args.onsets,
        length=args.length, epochs=args.epochs, seeds=range(args.seeds), out=args.out,
        backend=args.backend or ("serial" if args.runner == "vectorized" else "process"), workers=args.workers,
        runner=args.runner,
    )
    seconds["sweeps"] = time.perf_counter() - start
    fisher = pd.DataFrame(columns=["step", "epoch", "target", "metric", "index", "value"])
    if args.fisher_batches > 0:
        fisher = fisher_run(model, data, args.epochs, seed=0, num_batches=args.fisher_batches,
                            every_n_epochs=args.fisher_every)
        seconds["Fisher run"] = time.perf_counter() - start - seconds["sweeps"]
    summary = summary_table(removal, sliding)
    effects = early_late_effects(removal, sliding)
    tables = {"removal": removal, "sliding": sliding, "summary": summary, "effects": effects, "fisher": fisher}
    for name, table in tables.items():
        table.to_csv(os.path.join(args.out, f"{name}.csv"), index=False)
    fig = plot(removal, sliding, fisher, "CIFAR-10" if args.cifar_root else "digits")
    fig.savefig(os.path.join(args.out, "digits_blur.png"), dpi=120)
    seconds["total"] = time.perf_counter() - start
    print(report(summary, effects, (removal, sliding), seconds))
    print(f"figure: {os.path.join(args.out, 'digits_blur.png')}")
    return tables


if __name__ == "__main__":
    main()
