"""Critical period for multisensory integration (Kleinman, Achille & Soatto, CVPR 2023), in miniature on the digits.

A two-view network (``lc.models.TwoViewNet``: one ``Linear + ReLU`` encoder per view, a fused
layer, a linear head) learns the digits from their left half (view ``a``) and right half
(view ``b``; ``lc.data.TwoViewDigits``), with SGD at a learning rate decayed x0.75 per epoch.
The deficit replaces view ``b`` by Gaussian noise during a window of epochs:
``lc.PathwayDeficit("b", mode="noise")``. It acts on the model's own ``b`` pathway, so the
batches, the evaluation and the reliance measures all see the intact views; noise (rather than
zeros) keeps the ``b`` encoder active and trained, as the paper's deprived modality is. Two
studies (``lc.sweep.Study``), one ``lc.sweep.run_study`` call each:

* the *removal* curve: noise on ``b`` during epochs ``[0, T)``, then ``--epochs-after`` clean
  epochs (``T = 0`` is the no-deficit run);
* the *sliding-window* curve: noise on ``b`` during ``[T, T + --length)``, then the same
  ``--epochs-after`` clean epochs for every window (``lc.sweep.sliding(..., epochs_after=)``).

Final metrics of every run (on the test split): test accuracy; the ablation reliance on each
view, ``(acc - acc without the view) / (acc - chance)`` with the view replaced by another
example's (``lc.sweep.metrics.ablation_reliance``), and with it the accuracy from each view
alone; the relative source variance of the fused layer's units
(``lc.sweep.metrics.relative_source_variance``: mean RSV, fraction of units driven by ``a``
only or ``b`` only). An early deficit leaves the network ignoring view ``b`` for good, though
``b`` is clean for most of training; a late one leaves its reliance near the baseline's.

    python examples/multisensory.py                  # 5 seeds, 70 runs: about 1 minute on 2 busy cores
    python examples/multisensory.py --seeds 2 --removal 0 2 --onsets 0 2 --length 2 --epochs-after 1 \\
        --subset 100 --backend serial                # seconds

Outputs under ``--out`` (default ``outputs/multisensory/``): ``removal.csv`` and ``sliding.csv``
(one row per run), ``summary.csv`` (mean and standard error per window of every final metric,
both curves), ``effects.csv`` (early versus late deficit, paired over seeds) and
``multisensory.png``; the sweeps' directories ``removal/`` and ``sliding/`` hold the results
stores and per-run logs (running again reuses the finished runs). What to train
(:func:`studies`), training (:func:`run_sweeps`), analysis (:func:`early_late_effects`,
:func:`summary_table`) and plotting (:func:`plot`) are separate functions that exchange tables.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import lightning_critical as lc
from lightning_critical.curve import paired_effect

ACC = "test_acc"
RELIANCE = {"a": "reliance/ablation/a", "b": "reliance/ablation/b"}
# the accuracy from one view alone is the accuracy without the other one
ALONE = {"a": "reliance/accuracy/without/b", "b": "reliance/accuracy/without/a"}
RSV = {"mean": "reliance/rsv/mean", "a": "reliance/rsv/a", "b": "reliance/rsv/b"}
EFFECT_METRICS = (RELIANCE["b"], ALONE["b"], ACC, RELIANCE["a"], RSV["mean"], RSV["a"])
LABELS = {RELIANCE["a"]: "reliance on view a", RELIANCE["b"]: "reliance on view b (deprived)",
          ALONE["a"]: "view a alone", ALONE["b"]: "view b alone (deprived)", ACC: "both views",
          RSV["mean"]: "mean RSV of the fused units", RSV["a"]: "fused units driven by a only",
          RSV["b"]: "fused units driven by b only"}


def factories(hidden: int, lr: float, lr_decay: float, subset: int | None,
              batch_size: int = 32) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model and datamodule factories (``functools.partial``, so worker processes can receive them).

    The sweep calls both with each run's ``seed``: it draws the initial weights and the
    train / validation / test split (half of the 1797 digits are test digits).
    """
    model = functools.partial(lc.models.TwoViewNet, hidden=hidden, lr=lr, lr_decay=lr_decay)
    data = functools.partial(lc.data.TwoViewDigits, batch_size=batch_size, test_fraction=0.5, subset=subset)
    return model, data


def final_metrics() -> list[Any]:
    """Test accuracy, the ablation reliance on each view (and accuracy from each alone), the fused layer's RSV."""
    return [ACC, lc.sweep.metrics.ablation_reliance(dataloader="test", max_examples=1024),
            lc.sweep.metrics.relative_source_variance(layer="fusion", dataloader="test", max_examples=512)]


def studies(model: Callable[..., Any], data: Callable[..., Any], *, noise_std: float, removal_ends: Sequence[int],
            onsets: Sequence[int], length: int, epochs_after: int, seeds: Sequence[int]) -> dict[str, lc.sweep.Study]:
    """What to train: the removal and the sliding-window studies (one ``lc.sweep.Study`` each).

    Both give every deficit ``epochs_after`` clean epochs; ``max_epochs`` is the longest run's.
    """
    common: dict[str, Any] = dict(
        model=model, datamodule=data, metrics=final_metrics(), test=True, seeds=list(seeds),
        # a template: each run gets its own window
        deficit=lc.PathwayDeficit("b", window=(0, 1), mode="noise", noise_std=noise_std),
    )
    trainer = {"accelerator": "cpu", "limit_val_batches": 0, "num_sanity_val_steps": 0}
    return {
        "removal": lc.sweep.Study(windows=lc.sweep.removal(removal_ends, epochs_after=epochs_after),
                                  trainer={**trainer, "max_epochs": max(removal_ends) + epochs_after}, **common),
        "sliding": lc.sweep.Study(windows=lc.sweep.sliding(onsets, length, epochs_after=epochs_after),
                                  trainer={**trainer, "max_epochs": max(onsets) + length + epochs_after}, **common),
    }


def run_sweeps(model: Callable[..., Any], data: Callable[..., Any], *, out: str, backend: str = "process",
               workers: int | None = None, runner: str | None = None,
               **grid: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both studies (``grid``: the keywords of :func:`studies`), one ``lc.sweep.run_study`` each; one row per run.

    ``runner="vectorized"`` trains each study's runs as one vectorized job (``lc.sweep.VectorizedRunner``).
    """
    execution = lc.sweep.Execution(backend=backend, workers=workers, runner=runner)
    tables = {name: lc.sweep.run_study(study, execution, lc.sweep.Output(out=os.path.join(out, name)))
              for name, study in studies(model, data, **grid).items()}
    return tables["removal"], tables["sliding"]


def positions(table: pd.DataFrame, curve: str) -> pd.Series:
    """Each run's x: the removal epoch ``T`` (0 for the baseline) or the sliding window's onset (NaN: baseline)."""
    return table["window_start"] if curve == "sliding" else table["window_end"].fillna(0.0)


def early_late_effects(removal: pd.DataFrame, sliding: pd.DataFrame,
                       metrics: Sequence[str] = EFFECT_METRICS) -> pd.DataFrame:
    """The critical-period effect of each curve on each metric, paired over seeds: one row per (curve, metric).

    ``difference`` is the metric after the harmless deficit minus after the harmful one, so a
    critical period makes it positive for the reliance on ``b``: removal, ``b`` clean from
    the start (``T = early``, the baseline) minus deprived until ``T = late``; sliding, the
    latest window (``late``) minus the earliest (``early``). ``sem`` is the standard error of
    the per-seed differences, ``z = difference / sem``.
    """
    rows = []
    for curve, table in (("removal", removal), ("sliding", sliding)):
        ok = table[table["status"] == "ok"].assign(position=positions(table, curve))
        ok = ok[ok["position"].notna()]
        early, late = float(ok["position"].min()), float(ok["position"].max())
        better, worse = (early, late) if curve == "removal" else (late, early)
        for metric in metrics:
            wide = ok.pivot_table(index="seed", columns="position", values=metric, aggfunc="first")
            rows.append({"curve": curve, "metric": metric, "early": early, "late": late,
                         **paired_effect(wide, better, worse)})
    return pd.DataFrame(rows)


def summary_table(removal: pd.DataFrame, sliding: pd.DataFrame,
                  metrics: Sequence[str] = (ACC, *ALONE.values(), *RELIANCE.values(), *RSV.values())) -> pd.DataFrame:
    """``lc.sweep.summarize`` of every metric on both curves, one table with ``curve`` and ``metric`` columns."""
    parts = [lc.sweep.summarize(table, metric).assign(curve=curve, metric=metric)
             for curve, table in (("removal", removal), ("sliding", sliding)) for metric in metrics]
    out = pd.concat(parts, ignore_index=True)
    return out[["curve", "metric"] + [c for c in out.columns if c not in ("curve", "metric")]]


def _curve(table: pd.DataFrame, curve: str, metric: str) -> pd.DataFrame:
    """Mean and standard error over seeds of ``metric`` per position (-1: the sliding curve's baseline)."""
    ok = table[table["status"] == "ok"].assign(position=positions(table, curve).fillna(-1.0))
    grouped = ok.groupby("position")[metric]
    return pd.DataFrame({"mean": grouped.mean(), "sem": grouped.sem().fillna(0.0)}).reset_index()


def _panel(ax: Any, table: pd.DataFrame, curve_name: str, metrics: Sequence[str], scale: float,
           colors: Sequence[str]) -> None:
    """One curve per metric with its s.e. band; the sliding curve's baseline as a dashed line in its band."""
    for metric, color in zip(metrics, colors, strict=True):
        curve = _curve(table, curve_name, metric)
        runs, base = curve[curve["position"] >= 0], curve[curve["position"] < 0]
        xs = runs["position"].to_numpy(float)
        mean, sem = scale * runs["mean"].to_numpy(float), scale * runs["sem"].to_numpy(float)
        ax.plot(xs, mean, marker="o", markersize=4, color=color, label=LABELS[metric])
        ax.fill_between(xs, mean - sem, mean + sem, color=color, alpha=0.2, lw=0)
        if len(base):
            m, s = scale * float(base["mean"].iloc[0]), scale * float(base["sem"].iloc[0])
            ax.axhline(m, color=color, ls="--", lw=1)
            ax.axhspan(m - s, m + s, color=color, alpha=0.08, lw=0)
        ax.set_xticks(xs.astype(int).tolist())
    ax.spines[["top", "right"]].set_visible(False)


def _pair(curve: str, early: float, late: float) -> str:
    """The two runs an effect compares, harmless first."""
    return f"T = {early:g} vs {late:g}" if curve == "removal" else f"onset {late:g} vs {early:g}"


# where each panel's effect text sits (axes fraction): the empty part of the bundled curves
TEXT_Y = {"removal": (0.45, 0.5), "sliding": (0.15, 0.62)}


def _effect_text(ax: Any, row: Any, what: str, scale: float, unit: str, y: float) -> None:
    ax.text(0.98, y, f"{what}: {scale * row['difference']:.2f} ± {scale * row['sem']:.2f}{unit}\n"
            f"= {row['z']:.1f} paired s.e. ({int(row['n_seeds'])} seeds)", transform=ax.transAxes, ha="right",
            va="center", fontsize=8)


def plot(removal: pd.DataFrame, sliding: pd.DataFrame) -> Figure:
    """Four panels: reliance on each view (top), accuracy from both views and each alone (bottom); removal, sliding."""
    fig = Figure(figsize=(11.5, 7.6))
    axes = fig.subplots(2, 2, sharex="col")
    effects = early_late_effects(removal, sliding).set_index(["curve", "metric"])
    after = int(removal.loc[removal["baseline"], "epochs"].iloc[0])
    base_epochs = int(sliding.loc[sliding["baseline"], "epochs"].iloc[0])
    length = int((sliding["window_end"] - sliding["window_start"]).dropna().iloc[0])
    for col, (curve, table) in enumerate((("removal", removal), ("sliding", sliding))):
        top, bottom = axes[0, col], axes[1, col]
        _panel(top, table, curve, (RELIANCE["a"], RELIANCE["b"]), 1.0, ("C0", "C3"))
        _panel(bottom, table, curve, (ACC, ALONE["a"], ALONE["b"]), 100.0, ("0.2", "C0", "C3"))
        top.set(ylabel="ablation reliance (0: unused, 1: needed)", ylim=(-0.05, 1.05))
        bottom.set(ylabel="final test accuracy (%)")
        row = effects.loc[(curve, RELIANCE["b"])]
        pair = _pair(curve, row["early"], row["late"])
        _effect_text(top, row, f"reliance on b, {pair}", 1.0, "", TEXT_Y[curve][0])
        _effect_text(bottom, effects.loc[(curve, ALONE["b"])], f"b alone, {pair}", 100.0, " points",
                     TEXT_Y[curve][1])
    axes[0, 0].set_title(f"A. Removal: noise on view b in [0, T), then {after} clean epochs", fontsize=10)
    axes[0, 1].set_title(f"B. Sliding window: noise on b in [T, T + {length}), then {after} clean epochs",
                         fontsize=10)
    axes[1, 0].set(xlabel="noise on b removed at epoch T (T = 0: no deficit)", title="C. Removal: accuracy")
    axes[1, 1].set(xlabel=f"noise onset T (epoch); dashed: no deficit ({base_epochs} epochs)",
                   title="D. Sliding window: accuracy")
    for ax in axes.flat:
        ax.title.set_fontsize(10)
    axes[0, 0].legend(frameon=False, fontsize=8, loc="center right", bbox_to_anchor=(1.0, 0.72))
    axes[1, 0].legend(frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.08))
    axes[0, 1].plot([], [], color="0.4", ls="--", lw=1, label=f"no deficit ({base_epochs} epochs): mean ± s.e.")
    axes[0, 1].legend(handles=axes[0, 1].lines[-1:], frameon=False, fontsize=8, loc="upper right")
    n = int(removal["seed"].nunique())
    fig.suptitle("Critical period for multisensory integration on a two-view MLP (digits: left half a, right half b): "
                 f"mean ± s.e. over {n} seed{'s' * (n != 1)}", fontsize=11)
    fig.tight_layout()
    return fig


def report(summary: pd.DataFrame, effects: pd.DataFrame, tables: Sequence[pd.DataFrame], seconds: float) -> str:
    """The printed summary: both curves (reliance on b, accuracy), the early-vs-late effects, runs and wall time."""
    lines = []
    for (curve, metric), part in summary.groupby(["curve", "metric"], sort=False):
        if metric in (RELIANCE["b"], ACC):
            shown = part[["window", "mean", "sem", "n_seeds"]]
            lines += [f"{curve}: {LABELS[metric]} (mean and s.e. over seeds):",
                      shown.to_string(index=False, float_format="%.3f"), ""]
    for row in effects.itertuples():
        pair = _pair(row.curve, row.early, row.late)
        lines.append(f"{row.curve}, {LABELS[row.metric]} ({pair}): {row.difference:+.3f} ± {row.sem:.3f} "
                     f"(paired over {row.n_seeds} seeds) = {row.z:.1f} s.e.")
    lines.append(f"{sum(len(t) for t in tables)} runs: {sum(t.attrs.get('epochs_trained', 0) for t in tables)} epochs "
                 f"trained; wall time {seconds:.0f} s.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default=os.path.join("outputs", "multisensory"))
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    parser.add_argument("--removal", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10, 12],
                        help="removal curve: noise on b during [0, T) for each T")
    parser.add_argument("--onsets", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10],
                        help="sliding curve: noise on b during [T, T + length) for each T")
    parser.add_argument("--length", type=int, default=6, help="sliding curve: deficit length in epochs")
    parser.add_argument("--epochs-after", type=int, default=8, help="clean epochs after every deficit")
    parser.add_argument("--noise-std", type=float, default=0.3, help="standard deviation of the noise replacing b")
    parser.add_argument("--hidden", type=int, default=32, help="width of each view encoder and of the fused layer")
    parser.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate")
    parser.add_argument("--lr-decay", type=float, default=0.75, help="learning rate factor per epoch")
    parser.add_argument("--subset", type=int, default=400, help="training digits")
    parser.add_argument("--backend", choices=("process", "serial", "ray"), default=None,
                        help="where runs train (default: process; serial with --runner vectorized: one job)")
    parser.add_argument("--runner", choices=("vectorized", "auto"), default=None,
                        help="vectorized: all runs of a study trained as one torch.func job (default: one fit per run)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    args = parser.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    model, data = factories(args.hidden, args.lr, args.lr_decay, args.subset)
    removal, sliding = run_sweeps(
        model, data, out=args.out, backend=args.backend or ("serial" if args.runner == "vectorized" else "process"),
        workers=args.workers, runner=args.runner, noise_std=args.noise_std,
        removal_ends=args.removal, onsets=args.onsets, length=args.length, epochs_after=args.epochs_after,
        seeds=range(args.seeds),
    )
    summary, effects = summary_table(removal, sliding), early_late_effects(removal, sliding)
    tables = {"removal": removal, "sliding": sliding, "summary": summary, "effects": effects}
    for name, table in tables.items():
        table.to_csv(os.path.join(args.out, f"{name}.csv"), index=False)
    plot(removal, sliding).savefig(os.path.join(args.out, "multisensory.png"), dpi=120)
    print(report(summary, effects, (removal, sliding), time.perf_counter() - start))
    print(f"figure: {os.path.join(args.out, 'multisensory.png')}")
    return tables


if __name__ == "__main__":
    main()
