"""Critical period for blur on a small CNN (Achille, Rovere & Soatto, ICLR 2019), on digits or CIFAR-10.

Protocol: train with blurred images (``lc.InputDeficit("blur")``) for the first ``T``
epochs, then ``--post-epochs`` more epochs on clean images (SGD with momentum, learning rate
annealed by ``--lr-decay`` per epoch as in the classic protocol); plot the final test accuracy
against the removal epoch ``T``, next to the no-deficit learning curve and the per-layer
trace of the Fisher information (``lc.FisherMonitor``) over training.

    python examples/digits_blur.py                       # scikit-learn digits (offline)
    python examples/digits_blur.py --cifar-root ~/data/cifar-10-batches-py
    python examples/digits_blur.py --removal 0 10 --post-epochs 5 --seeds 1   # quick

Outputs under ``--out`` (default ``outputs/digits_blur/``): ``results.csv`` (one row per
run), ``curves.csv`` (validation accuracy per epoch), ``fisher.csv`` (Fisher trace per
layer and epoch) and ``digits_blur.png``. Training, tables and plotting are separate
functions: :func:`run_experiment` returns the tables, :func:`plot` only reads them.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

import lightning_critical as lc  # noqa: E402


class EpochAccuracy(pl.Callback):
    """Keeps the validation accuracy after every epoch (a learning curve)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.rows.append((trainer.current_epoch, float(trainer.callback_metrics["val_acc"])))


def make_datamodule(cifar_root: Optional[str], batch_size: int, seed: int, subset: Optional[int]) -> lc.data.ImageClassificationDataModule:
    if cifar_root:
        return lc.data.CIFAR10DataModule(cifar_root, batch_size=batch_size, seed=seed, subset=subset)
    return lc.data.DigitsDataModule(batch_size=batch_size, seed=seed, subset=subset)


def train_once(
    removal_epoch: int,
    post_epochs: int,
    seed: int,
    factor: int,
    cifar_root: Optional[str] = None,
    subset: Optional[int] = None,
    batch_size: int = 32,
    channels: tuple[int, int] = (16, 32),
    lr: float = 0.1,
    lr_decay: float = 0.97,
    fisher: bool = False,
    fisher_every: int = 1,
    fisher_batches: int = 16,
    fisher_labels: str = "expected",
    root_dir: Optional[str] = None,
) -> tuple[dict, list[tuple[int, float]], Optional[pd.DataFrame]]:
    """One run: blur for epochs ``[0, removal_epoch)``, then ``post_epochs`` clean epochs."""
    pl.seed_everything(seed, verbose=False)
    dm = make_datamodule(cifar_root, batch_size, seed, subset)
    model = lc.models.SmallCNN(dm.image_shape[0], dm.num_classes, channels=channels, lr=lr, lr_decay=lr_decay, seed=seed)
    curve = EpochAccuracy()
    callbacks: list[pl.Callback] = [curve]
    if removal_epoch > 0:
        callbacks.append(lc.InputDeficit("blur", window=(0, removal_epoch), factor=factor))
    # labels="expected": the one-sampled-label estimate of a confident model drops 10-50x at the
    # epochs where no example happens to draw a non-predicted label (see lightning_critical.fisher).
    monitor = (lc.FisherMonitor(every_n_epochs=fisher_every, num_batches=fisher_batches, labels=fisher_labels,
                                history_file=None) if fisher else None)
    if monitor is not None:
        callbacks.append(monitor)
    trainer = pl.Trainer(
        max_epochs=removal_epoch + post_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=root_dir, num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    test_acc = trainer.test(model, dm, verbose=False)[0]["test_acc"]
    row = {"removal_epoch": removal_epoch, "seed": seed, "epochs": removal_epoch + post_epochs, "test_acc": test_acc}
    return row, curve.rows, (monitor.to_frame() if monitor is not None else None)


def run_experiment(
    removal_epochs: Sequence[int],
    post_epochs: int,
    seeds: Sequence[int],
    factor: int,
    fisher_removal: Optional[int] = None,
    **kw: object,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The sweep: ``(results, curves, fisher)`` tidy tables.

    ``curves`` holds the no-deficit run's validation accuracy per epoch (train for
    ``max(removal_epochs) + post_epochs`` epochs, the longest run); ``fisher`` the per-layer
    Fisher trace of that run (``removal_epoch`` 0) and of a run with the deficit removed at
    ``fisher_removal`` (when it is not 0), one row per (removal_epoch, step, target).
    """
    results, curves, fishers = [], [], []
    longest = max(removal_epochs) + post_epochs
    for seed in seeds:
        for t in removal_epochs:
            # Removal at 0 is the no-deficit run cut short: its trace is the first epochs of the
            # full-length run's (bitwise), which is traced below under the same label.
            want_fisher = seed == seeds[0] and t == fisher_removal and t > 0
            row, _, fdf = train_once(t, post_epochs, seed, factor, fisher=want_fisher, **kw)  # type: ignore[arg-type]
            results.append(row)
            if fdf is not None:
                fishers.append(fdf.assign(removal_epoch=t))
            print(f"seed {seed} removal epoch {t:3d}: test accuracy {row['test_acc']:.4f}", flush=True)
        # the no-deficit learning curve, as long as the longest deficit run
        row, curve, fdf = train_once(0, longest, seed, factor, fisher=seed == seeds[0], **kw)  # type: ignore[arg-type]
        curves.extend({"seed": seed, "epoch": e, "val_acc": a} for e, a in curve)
        results.append({**row, "removal_epoch": -1})  # -1: no deficit, full-length run
        if fdf is not None:
            fishers.append(fdf.assign(removal_epoch=0))
    return pd.DataFrame(results), pd.DataFrame(curves), pd.concat(fishers) if fishers else pd.DataFrame()


def plot(results: pd.DataFrame, curves: pd.DataFrame, fisher: pd.DataFrame, path: str, title: str = "digits") -> None:
    """Three panels: critical-period curve, no-deficit learning curve, Fisher trace per layer."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    sweep = results[results.removal_epoch >= 0].groupby("removal_epoch").test_acc
    mean, std = sweep.mean(), sweep.std().fillna(0)
    n_seeds = results.seed.nunique()
    ax.errorbar(mean.index, 100 * mean, yerr=100 * std, marker="o", capsize=3,
                label=f"blur removed at epoch T (mean ± std, {n_seeds} seeds)")
    base = results[results.removal_epoch == -1].test_acc
    if len(base):
        ax.axhline(100 * base.mean(), color="gray", ls="--", label="no deficit (longest run)")
    ax.set(xlabel="deficit removal epoch T", ylabel="final test accuracy (%)", title=f"critical period for blur ({title})")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    for seed, c in curves.groupby("seed"):
        ax.plot(c.epoch, 100 * c.val_acc, alpha=0.8, label=f"seed {seed}")
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="no-deficit learning curve")
    ax.legend()
    ax = axes[2]
    if not fisher.empty:
        colors = {}
        for (removal, target), f in fisher[fisher.target != "total"].groupby(["removal_epoch", "target"]):
            line = ax.plot(f.epoch, f.value, ls="-" if removal == 0 else "--", color=colors.get(target),
                           label=f"{target} ({'no deficit' if removal == 0 else f'blur until {removal}'})")
            colors.setdefault(target, line[0].get_color())
            if removal:
                ax.axvline(removal, color="gray", lw=0.8, ls=":")
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="trace of Fisher information", title="Fisher trace per layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("outputs", "digits_blur"))
    parser.add_argument("--cifar-root", default=None, help="folder with CIFAR-10 python batches (else: digits)")
    parser.add_argument("--removal", type=int, nargs="+", default=[0, 5, 10, 20, 30, 40], help="deficit removal epochs")
    parser.add_argument("--post-epochs", type=int, default=30, help="clean epochs after removal")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--factor", type=int, default=4, help="blur factor (digits 8x8 -> 2x2 -> 8x8; CIFAR 32 -> 8 -> 32)")
    parser.add_argument("--fisher-removal", type=int, default=None, help="also trace the Fisher of this deficit run")
    parser.add_argument("--subset", type=int, default=None, help="use only this many training images")
    parser.add_argument("--fisher-batches", type=int, default=8, help="training batches per Fisher estimate")
    parser.add_argument("--fisher-labels", choices=("expected", "sample"), default="expected",
                        help="Fisher over every label (exact) or one sampled label per example (noisy, 10x cheaper)")
    parser.add_argument("--lr-decay", type=float, default=0.97)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    os.makedirs(args.out, exist_ok=True)
    fisher_removal = args.fisher_removal if args.fisher_removal is not None else sorted(args.removal)[len(args.removal) // 2]
    results, curves, fisher = run_experiment(
        args.removal, args.post_epochs, list(range(args.seeds)), args.factor, fisher_removal=fisher_removal,
        cifar_root=args.cifar_root, subset=args.subset, lr_decay=args.lr_decay, root_dir=args.out,
        fisher_batches=args.fisher_batches, fisher_labels=args.fisher_labels,
    )
    results.to_csv(os.path.join(args.out, "results.csv"), index=False)
    curves.to_csv(os.path.join(args.out, "curves.csv"), index=False)
    fisher.to_csv(os.path.join(args.out, "fisher.csv"), index=False)
    plot(results, curves, fisher, os.path.join(args.out, "digits_blur.png"), "CIFAR-10" if args.cifar_root else "digits")
    summary = results.groupby("removal_epoch").test_acc.agg(["mean", "std"])
    print(summary.to_string())
    return results, curves, fisher


if __name__ == "__main__":
    main()
