"""One deep factorization through a task switch, SGD singular values against gradient-flow theory.

A plain Lightning run: ``DeepMatrixFactorization`` on ``MatrixCompletionDataModule``, the task
switched by ``lc.TaskSwitch``, the spectrum recorded by ``lc.SpectralMonitor``. The theory
(Arora et al.'s singular-value dynamics, integrated by ``lc.theory.factorization``) is handed
to the monitor, so TensorBoard shows measured and predicted singular values in one chart
(custom scalars, "singular_values" chart of ``end_to_end``), and a PNG shows the same overlay.
The factors start balanced (``init="orthogonal"``), as the theory assumes.

    python examples/matrix_completion_switch.py                 # ~1-2 min on a laptop CPU
    tensorboard --logdir outputs/matrix_completion_switch
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

import lightning_critical as lc
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.theory import switch_theory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--n-observed", type=int, default=500)
    parser.add_argument("--pretrain-rank", type=int, default=5)
    parser.add_argument("--target-rank", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--init-scale", type=float, default=1e-2)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--switch", type=int, default=4000)
    parser.add_argument("--continue-epochs", type=int, default=4000)
    parser.add_argument("--every", type=int, default=50, help="monitor cadence (steps)")
    parser.add_argument("--out", "--out-dir", dest="out_dir", default="outputs/matrix_completion_switch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared machine

    dm = MatrixCompletionDataModule(size=args.size, n_observed=args.n_observed, seed=0,
                                    tasks={"pretrain": args.pretrain_rank, "target": args.target_rank})
    model = DeepMatrixFactorization(size=args.size, depth=args.depth, init="orthogonal",
                                    init_scale=args.init_scale, lr=args.lr, seed=0)
    n_steps = args.switch + args.continue_epochs
    flow = switch_theory(model, dm, [("pretrain", args.switch), ("target", args.continue_epochs)], stride=5)
    theory = flow.per_step(n_steps)

    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=args.every, metrics=("singular_values",),
                                 log_top_k=6, theory={"singular_values": {"end_to_end": theory[:, :6]}})
    logger = TensorBoardLogger(args.out_dir, name="tb")
    trainer = pl.Trainer(max_epochs=n_steps, callbacks=[lc.TaskSwitch({args.switch: "target"}), monitor],
                         logger=logger, log_every_n_steps=args.every,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)

    df = monitor.to_frame()
    sgd = df[(df.metric == "singular_values") & (df.target == "end_to_end") & (df["index"] < 6)]
    sgd = sgd.pivot(index="step", columns="index", values="value")
    os.makedirs(args.out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    colors = plt.cm.viridis(np.linspace(0, 0.85, 6))
    for i, color in enumerate(colors):
        ax.plot(sgd.index, sgd[i], color=color, lw=2.2, alpha=0.6, label="SGD" if i == 0 else None)
        ax.plot(np.arange(n_steps + 1), theory[:, i], "k--", lw=0.8, label="theory (gradient flow)" if i == 0 else None)
    ax.axvline(args.switch, color="gray", ls=":", lw=1)
    ax.text(args.switch, ax.get_ylim()[1] * 0.95, " switch", color="gray", fontsize=8, va="top")
    ax.set_xlabel("epoch (full-batch SGD step)")
    ax.set_ylabel("singular values of W")
    ax.set_title(f"depth {args.depth}: rank {args.pretrain_rank} -> rank {args.target_rank} task", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out_dir, "singular_values_sgd_vs_theory.png")
    fig.savefig(png, dpi=150)
    final = model.test_loss(dm.ground_truth("target"))
    top = theory[sgd.index.to_numpy(), :3]
    rel = np.max(np.abs(sgd.to_numpy()[:, :3] - top) / top)
    print(f"final test loss {final:.4f} (theory {flow.test_loss[-1]:.4f}); "
          f"max relative gap of the top 3 singular values {rel:.3f}")
    print(f"wrote {png}; TensorBoard logs in {logger.log_dir}")


if __name__ == "__main__":
    main()
