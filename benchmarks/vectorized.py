"""The same removal sweep trained by the default runner and by the vectorized runner, in one process.

    python benchmarks/vectorized.py                      # MLP 64-64-10, 5 windows x 5 seeds = 25 runs
    python benchmarks/vectorized.py --model cnn          # SmallCNN(32, 64) on the 8x8 digits
    python benchmarks/vectorized.py --model both --process   # both models; the default runner on processes too
    python benchmarks/vectorized.py --quick              # toy size: proves the script runs

Each model's sweep (the digits blur protocol: ``InputDeficit("blur")`` during ``[0, k)``, then a
fixed number of clean epochs) runs with ``runner=None`` on ``backend="serial"`` (and
``"process"`` with ``--process``) and with ``runner="vectorized"`` (one job: the runs leave the
stack as they end), one thread per run, in this one process so the ratio is fair. It prints
the wall times, the ratios and the largest difference between the two tables (0 for the MLP:
bitwise; the SmallCNN's members differ by float32 rounding of the grouped convolution).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl

METRICS = ["val_acc", "val_loss", "train_loss"]


class MLP(pl.LightningModule):
    """64-``hidden``-10 MLP on the flattened 8x8 digits; SGD with momentum and weight decay."""

    def __init__(self, hidden: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def sweep(model: Any, runner: Any, backend: str, ends: list[int], seeds: int, after: int) -> tuple[Any, float]:
    start = time.perf_counter()
    table = lc.sweep.run(
        model, functools.partial(lc.data.DigitsDataModule, batch_size=64),
        deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal(ends, epochs_after=after),
        seeds=list(range(seeds)), metrics=METRICS, trainer={}, runner=runner, backend=backend,
        workers=2 if backend == "process" else None, out=tempfile.mkdtemp(), tensorboard=False, plot=False,
        progress=False)
    return table, time.perf_counter() - start


def compare(name: str, model: Any, args: argparse.Namespace) -> None:
    ends = list(range(args.step, args.step * args.windows + 1, args.step))
    n = (len(ends) + 1) * args.seeds
    print(f"\n{name}: removal sweep, ends {ends} + baseline, {args.seeds} seeds = {n} runs, "
          f"{args.after} clean epochs after each window")
    vec, t_vec = sweep(model, "vectorized", "serial", ends, args.seeds, args.after)
    base, t_base = sweep(model, None, "serial", ends, args.seeds, args.after)
    rows = [("default runner, serial", t_base)]
    if args.process:
        _, t_proc = sweep(model, None, "process", ends, args.seeds, args.after)
        rows.append(("default runner, process (2 workers)", t_proc))
    assert (base["label"].values == vec["label"].values).all() and (vec["status"] == "ok").all()
    diff = abs(base[METRICS].values.astype(float) - vec[METRICS].values.astype(float)).max()
    differ = int((base["val_acc"].values != vec["val_acc"].values).sum())
    for label, seconds in rows:
        print(f"  {label:38s} {seconds:8.2f} s   vectorized is {seconds / t_vec:6.1f}x faster")
    print(f"  {'vectorized runner (one job)':38s} {t_vec:8.2f} s")
    train_base, train_vec = base["seconds"].sum(), vec["seconds"].max()  # one job: every row holds its time
    print(f"  training alone (the runs' own seconds): default serial {train_base:.2f} s, vectorized {train_vec:.2f} s: "
          f"{train_base / train_vec:.1f}x")
    print(f"  tables: largest |difference| {diff:.3g} over {METRICS}; runs whose val_acc differ: {differ} of {n}"
          f"{' (bitwise equal)' if diff == 0 else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default="mlp")
    parser.add_argument("--windows", type=int, default=4, help="removal ends (besides the baseline)")
    parser.add_argument("--step", type=int, default=2, help="epochs between removal ends")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--after", type=int, default=6, help="clean epochs after each window")
    parser.add_argument("--process", action="store_true", help="also time the default runner on processes")
    parser.add_argument("--quick", action="store_true", help="toy size (2 windows, 2 seeds, 1 epoch after)")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.step, args.seeds, args.after = 2, 1, 2, 1
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, CPU; times include building each run's "
          "objects and the sweep's own work (store, table)")
    if args.model in ("mlp", "both"):
        compare("MLP 64-64-10", MLP, args)
    if args.model in ("cnn", "both"):
        compare("SmallCNN(32, 64)", functools.partial(lc.models.SmallCNN, 1, 10, channels=(32, 64), lr=0.1,
                                                      lr_decay=0.85), args)


if __name__ == "__main__":
    main()
