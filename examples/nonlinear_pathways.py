"""Early vs late pathway deficits in the *nonlinear* multi-pathway net (tanh and ReLU).

The two-pathway net of Kleinman, Achille & Soatto (ICLR 2024) with a nonlinearity between
layers, trained on the hierarchical task. Pathway ``b`` is frozen for ``--length`` epochs
starting at epoch 0 ("early") or late in training, or never (the sweep's baseline): one
``lc.sweep.Study`` (:func:`study`), one ``lc.sweep.run_study``, and a function of its table
(:func:`tables`). The monitor records the mode
strength ``K[p, a] = u_a^T f_p(I)^T v_a`` of each pathway's map (for a nonlinear pathway
``f_p`` its map is the pathway applied to the one-hot items, ``f_p(I)^T``).

The linear theory predicts a winner-take-all after the early deficit (pathway ``a`` learns
every mode, ``b`` stays near zero) and no lasting effect of a late one; this script shows
how far that carries over to tanh and ReLU.

    python examples/nonlinear_pathways.py                     # paper setting, ~1-2 min on CPU
    python examples/nonlinear_pathways.py --epochs 300 --length 60 --late 200   # quick

Outputs under ``--out`` (default ``outputs/nonlinear_pathways/``): ``strengths.csv`` (tidy
mode-strength table of every run), ``shares.csv`` (final share of pathway ``b`` per run) and
``nonlinear_pathways.png``; the sweep's own files (results, per-run TensorBoard logs with the
monitor's history) are there too, and running it again reuses the finished runs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

import lightning_critical as lc

HISTORY = "spectral_history.csv"


def pathway_net(nonlinearity: str, seed: int = 0, **kwargs: Any) -> lc.models.MultiPathwayLinearNet:
    """The model factory: the two-pathway net with ``nonlinearity``, on the hierarchical task's basis."""
    return lc.models.MultiPathwayLinearNet(nonlinearity=nonlinearity, task_basis=lc.data.HierarchicalDataModule()
                                           .task_basis(), seed=seed, **kwargs)


def mode_monitor(every: int) -> list[lc.SpectralMonitor]:
    """Each run's callbacks: the mode strengths of both pathways every ``every`` steps, into its log directory."""
    return [lc.SpectralMonitor(targets="maps", every_n_steps=every, metrics=("mode_strength",), history_file=HISTORY)]


def study(nonlinearities: Sequence[str], epochs: int, length: int, late: int, depth: int = 4, width: int = 100,
          lr: float = 0.01, init: str = "aligned", init_scale: float = 0.01, every: int = 10,
          seed: int = 0) -> lc.sweep.Study:
    """What to train: pathway ``b`` frozen early, late, or never (the grid's baseline), per nonlinearity."""
    return lc.sweep.Study(
        model=functools.partial(pathway_net, depth=depth, width=width, lr=lr, init=init, init_scale=init_scale),
        datamodule=lc.data.HierarchicalDataModule,
        deficit=lc.PathwayDeficit("b", window=(0, 1), mode="freeze"),
        windows=[(0, length), (late, late + length)], params={"nonlinearity": list(nonlinearities)},
        callbacks=functools.partial(mode_monitor, every=every), metrics="train_loss",
        trainer={"max_epochs": epochs, "log_every_n_steps": every}, seeds=[seed],
    )


def tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(strengths, shares)`` from the sweep's table: every run's mode strengths, and pathway b's final share.

    ``share_b = sum_a K[b, a] / sum_a (K[a, a'] + K[b, a])`` over the modes at the last
    record: 0.5 when both pathways learned equally, 0 when pathway a took everything.
    """
    strengths, shares = [], []
    for _, row in table.iterrows():
        condition = "no deficit" if row["baseline"] else ("early deficit" if row["window_start"] == 0 else
                                                          "late deficit")
        df = pd.read_csv(os.path.join(row["log_dir"], HISTORY))
        df = df[df.metric == "mode_strength"].assign(nonlinearity=row["nonlinearity"], condition=condition)
        strengths.append(df)
        last = df[df.step == df.step.max()].groupby("target").value.sum()
        share = float(last.get("b", 0.0) / (last.get("a", 0.0) + last.get("b", 0.0)))
        shares.append({"nonlinearity": row["nonlinearity"], "condition": condition,
                       "onset": None if row["baseline"] else int(row["window_start"]), "share_b": share,
                       "K_a": float(last.get("a", 0.0)), "K_b": float(last.get("b", 0.0))})
        print(f"{row['nonlinearity']:5s} {condition:13s}: final share of pathway b = {share:.3f}", flush=True)
    return pd.concat(strengths, ignore_index=True), pd.DataFrame(shares)


def plot(strengths: pd.DataFrame, shares: pd.DataFrame, path: str, length: int, modes: int = 3) -> None:
    """Rows: nonlinearities; columns: conditions; lines: K of the top modes, a solid, b dashed."""
    nls = list(dict.fromkeys(strengths.nonlinearity))
    conds = list(dict.fromkeys(strengths.condition))
    fig, axes = plt.subplots(len(nls), len(conds), figsize=(4.6 * len(conds), 3.4 * len(nls)), squeeze=False,
                             sharey=True)
    for i, nl in enumerate(nls):
        for j, cond in enumerate(conds):
            ax = axes[i, j]
            df = strengths[(strengths.nonlinearity == nl) & (strengths.condition == cond)]
            for a in range(modes):
                for pathway, ls in (("a", "-"), ("b", "--")):
                    d = df[(df.target == pathway) & (df["index"] == a)]
                    label = f"K[{pathway}, mode {a}]" if i == j == 0 else None
                    ax.plot(d.step, d.value, ls=ls, color=f"C{a}", label=label)
            row = shares[(shares.nonlinearity == nl) & (shares.condition == cond)].iloc[0]
            if row.onset is not None and not pd.isna(row.onset):
                ax.axvspan(row.onset, row.onset + length, color="gray", alpha=0.2, lw=0)
            ax.set_title(f"{nl}, {cond}: share of b = {row.share_b:.2f}", fontsize=10)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("mode strength K")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("pathway b frozen in the grey window; a solid, b dashed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("outputs", "nonlinear_pathways"))
    parser.add_argument("--nonlinearity", nargs="+", default=["tanh", "relu"], choices=["tanh", "relu"])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--length", type=int, default=150, help="deficit length in epochs")
    parser.add_argument("--late", type=int, default=750, help="onset of the late deficit")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--init", default="aligned", choices=["aligned", "gaussian"])
    parser.add_argument("--init-scale", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    os.makedirs(args.out, exist_ok=True)
    sweep = study(args.nonlinearity, args.epochs, args.length, args.late, depth=args.depth, width=args.width,
                  lr=args.lr, init=args.init, init_scale=args.init_scale)
    table = lc.sweep.run_study(sweep, lc.sweep.Execution(backend="serial", threads_per_run=args.threads,
                                                         progress=False),
                               lc.sweep.Output(out=args.out, plot=False))
    strengths, shares = tables(table)
    strengths.to_csv(os.path.join(args.out, "strengths.csv"), index=False)
    shares.to_csv(os.path.join(args.out, "shares.csv"), index=False)
    plot(strengths, shares, os.path.join(args.out, "nonlinear_pathways.png"), args.length)
    return strengths, shares


if __name__ == "__main__":
    main()
