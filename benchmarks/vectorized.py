"""The same removal sweep trained by the default runner (serial and processes) and by the vectorized runner.

    python benchmarks/vectorized.py                      # MLP 64-64-10, 5 windows x 5 seeds = 25 runs
    python benchmarks/vectorized.py --model both         # and SmallCNN(32, 64) on the 8x8 digits
    python benchmarks/vectorized.py --device cuda        # per-step ratios on a GPU, M in {1, 25, 100, 400}
    python benchmarks/vectorized.py --quick              # toy size: proves the script runs

**Whole sweeps** (the default): each model's sweep (the digits blur protocol:
``InputDeficit("blur")`` during ``[0, k)``, then a fixed number of clean epochs) runs with
``runner=None`` on ``backend="serial"`` and ``"process"`` (2 workers) and with
``runner="vectorized"`` (one job: the runs leave the stack as they end), one thread per run, on
the CPU. It asserts that the tables agree (the MLP's bitwise; SmallCNN's within
:data:`TOLERANCE`: the grouped convolution of ``vmap`` rounds differently; serial and processes
bitwise), and prints the wall times, the ratios, and the fraction of this machine's float32
limit each column reached: the useful FLOPs (every run's training steps, forward and backward,
counted once with ``torch.utils.flop_counter.FlopCounterMode``; optimizer and validation left
out) over the wall time, against a large float32 matmul on all threads timed in the same run.

**Per step** (``--device cpu|cuda``): for M in ``--members`` (default 1, 25, 100, 400), the
time of one vectorized training step of M members against M times the time of one step of the
default runner's Lightning fit, both on that device. A step's time is the difference of two
sweeps' wall times (``--epochs`` apart; baseline runs, no validation) over the steps between
them, so building, checks, store and the last epoch's log replays cancel. On an H100 the whole
mode takes about 2-4 minutes (most of it building 400 members twice per model).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_critical as lc
from lightning_critical._namespace import pl

METRICS = ["val_acc", "val_loss", "train_loss"]
TOLERANCE = {"MLP 64-64-10": 0.0, "SmallCNN(32, 64)": 5e-3}
"""The largest |difference| between the two runners' tables asserted, per model (docs/vectorized.md)."""
GOALS = {"MLP 64-64-10": 8.0, "SmallCNN(32, 64)": 1.5}
"""Issue 21's goals on 2 CPU cores: the vectorized runner's wall ratio over the default serial runner."""


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


MODELS: dict[str, Any] = {
    "mlp": ("MLP 64-64-10", MLP),
    "cnn": ("SmallCNN(32, 64)", functools.partial(lc.models.SmallCNN, 1, 10, channels=(32, 64), lr=0.1,
                                                  lr_decay=0.85)),
}


def sweep(model: Any, runner: Any, backend: str, ends: list[int], seeds: int, after: int, *,
          data: Any = None, trainer: dict[str, Any] | None = None, metrics: list[str] = METRICS) -> tuple[Any, float]:
    """One ``lc.sweep.run`` of the removal grid ``ends`` (+ baseline) x ``seeds``: its table and wall seconds."""
    start = time.perf_counter()
    table = lc.sweep.run(
        model, data or functools.partial(lc.data.DigitsDataModule, batch_size=64),
        deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal(ends, epochs_after=after),
        seeds=list(range(seeds)), metrics=metrics, trainer=trainer or {}, runner=runner, backend=backend,
        workers=2 if backend == "process" else None, out=tempfile.mkdtemp(), tensorboard=False, plot=False,
        progress=False, verify=False)  # no audit: a branched run retrained from scratch is not the runner's work
    return table, time.perf_counter() - start


def flops_per_sample(model: Any) -> float:
    """FLOPs of one training step (forward and backward) on a batch of 64 digits, per image (they scale with it)."""
    net = model()
    batch = (torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer: a warning, nothing logged
        with FlopCounterMode(display=False) as counter:
            net.training_step(batch, 0).backward()
    return counter.get_total_flops() / 64


def flop_limit(device: torch.device, quick: bool) -> float:
    """This machine's float32 FLOP/s: the fastest of 20 large matmuls on all its threads (or on the GPU).

    One matmul a trial, the fastest kept: short trials catch the moments other work leaves the cores free.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    n = 512 if quick else (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    try:
        for trial in range(21):
            sync()
            start = time.perf_counter()
            a @ b
            sync()
            if trial:  # the first is a warm-up
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n ** 3 / best


def train_images() -> int:
    """Images per training epoch of the digits (the default split)."""
    data = lc.data.DigitsDataModule(batch_size=64)
    data.prepare_data()
    data.setup("fit")
    return len(data.train_dataloader().dataset)  # type: ignore[arg-type]  # the digits: a TensorDataset


def compare(name: str, model: Any, args: argparse.Namespace, limit: float) -> dict[str, Any]:
    """The removal sweep with the three columns; asserts the tables agree; prints ratios and FLOP fractions."""
    ends = list(range(args.step, args.step * args.windows + 1, args.step))
    n = (len(ends) + 1) * args.seeds
    print(f"\n{name}: removal sweep, ends {ends} + baseline, {args.seeds} seeds = {n} runs, "
          f"{args.after} clean epochs after each window")
    cpu = {"accelerator": "cpu"}  # also where a GPU is: this comparison is the CPU's
    vec, t_vec = sweep(model, "vectorized", "serial", ends, args.seeds, args.after, trainer=cpu)
    base, t_base = sweep(model, None, "serial", ends, args.seeds, args.after, trainer=cpu)
    columns = {"serial": t_base, "vectorized": t_vec}
    if args.process:
        proc, columns["process"] = sweep(model, None, "process", ends, args.seeds, args.after, trainer=cpu)
        assert (base[METRICS].values == proc[METRICS].values).all(), "serial and process tables differ"
    assert (vec["status"] == "ok").all() and (base["label"].values == vec["label"].values).all()
    diff = float(abs(base[METRICS].values.astype(float) - vec[METRICS].values.astype(float)).max())
    assert diff <= TOLERANCE[name], f"{name}: the tables differ by {diff:.3g} > {TOLERANCE[name]}"
    differ = int((base["val_acc"].values != vec["val_acc"].values).sum())
    epochs = args.seeds * sum(k + args.after for k in [0, *ends])
    useful = epochs * train_images() * flops_per_sample(model)
    labels = {"serial": "default runner, serial", "process": "default runner, process (2 workers)",
              "vectorized": "vectorized runner (one job)"}
    for key, seconds in sorted(columns.items(), key=lambda c: list(labels).index(c[0])):
        ratio = "" if key == "vectorized" else f"   vectorized is {seconds / t_vec:5.1f}x faster"
        print(f"  {labels[key]:38s} {seconds:8.2f} s   {useful / seconds / 1e9:6.2f} GFLOP/s = "
              f"{100 * useful / seconds / limit:6.3f}% of the limit{ratio}")
    train_base, train_vec = base["seconds"].sum(), vec["seconds"].max()  # one job: every row holds its time
    print(f"  training alone (the runs' own seconds): default serial {train_base:.2f} s, vectorized {train_vec:.2f} s: "
          f"{train_base / train_vec:.1f}x")
    print(f"  useful FLOPs: {epochs} run-epochs x {useful / epochs / 1e9:.3f} GFLOP (training steps only); goal "
          f"vectorized >= {GOALS[name]}x over serial: {'met' if t_base / t_vec >= GOALS[name] else 'not met'}")
    print(f"  tables: largest |difference| {diff:.3g} over {METRICS} (asserted <= {TOLERANCE[name]}); runs whose "
          f"val_acc differ: {differ} of {n}{' (bitwise equal)' if diff == 0 else ''}"
          f"{'; serial = process: bitwise' if args.process else ''}")
    return {"seconds": columns, "diff": diff, "useful_flops": useful,
            "fraction": {k: useful / s / limit for k, s in columns.items()}}


def step_seconds(model: Any, runner: Any, members: int, args: argparse.Namespace, data: Any) -> float:
    """Seconds per training step of a sweep of ``members`` baseline runs: two sweeps ``--epochs`` apart.

    Each sweep runs ``--repeats`` times and its fastest wall counts (the least disturbed by other work).
    """
    trainer = {**_trainer(args), "check_val_every_n_epoch": 10_000}  # training steps only
    walls = [min(sweep(model, runner, "serial", [0], members, epochs, data=data, trainer=trainer,
                       metrics=["train_loss"])[1] for _ in range(args.repeats)) for epochs in (1, 1 + args.epochs)]
    batches = len(_loader(data))
    return max(walls[1] - walls[0], 1e-9) / (args.epochs * batches)


def per_step(name: str, model: Any, args: argparse.Namespace, limit: float) -> dict[int, float]:
    """``--device`` mode: M x (default runner's step) / (vectorized step of M members), for M in ``--members``."""
    data = functools.partial(lc.data.DigitsDataModule, batch_size=64, subset=args.subset)
    vectorized = lc.sweep.VectorizedRunner(device=args.device)
    for runner in (None, vectorized):  # warm-up: CUDA, cuDNN, the first fit and the first job
        sweep(model, runner, "serial", [0], 2, 1, data=data, trainer=_trainer(args), metrics=["train_loss"])
    default = step_seconds(model, None, 1, args, data)
    flops = flops_per_sample(model) * 64
    print(f"\n{name} on {args.device}: default runner (a Lightning fit) {1e3 * default:.3f} ms per step")
    ratios = {}
    for members in args.members:
        seconds = step_seconds(model, vectorized, members, args, data)
        ratios[members] = members * default / seconds
        print(f"  M = {members:4d}: vectorized step {1e3 * seconds:8.3f} ms "
              f"({1e3 * seconds / members:7.4f} ms a member)   "
              f"ratio M x default / vectorized = {ratios[members]:7.2f}x   "
              f"{100 * members * flops / seconds / limit:6.3f}% of the device's float32 limit")
    return ratios


def _trainer(args: argparse.Namespace) -> dict[str, Any]:
    """The device's ``trainer=`` for both runners (one device: the vectorized runner maps it to its own)."""
    return {"accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": 1}


def _loader(data: Any) -> Any:
    datamodule = data()
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cnn", "both"), default=None,
                        help="default: mlp for whole sweeps, both with --device")
    parser.add_argument("--windows", type=int, default=4, help="removal ends (besides the baseline)")
    parser.add_argument("--step", type=int, default=2, help="epochs between removal ends")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--after", type=int, default=6, help="clean epochs after each window")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="per-step ratios on this device")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 25, 100, 400], help="M values (--device)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs between the two timed sweeps (--device)")
    parser.add_argument("--subset", type=int, default=None, help="training images of the digits (--device)")
    parser.add_argument("--repeats", type=int, default=2, help="timed sweeps per point, fastest kept (--device)")
    parser.add_argument("--process", action=argparse.BooleanOptionalAction, default=None,
                        help="time the default runner on 2 worker processes too (default: yes, except with --quick: "
                        "spawning the workers costs more than the toy sweep)")
    parser.add_argument("--quick", action="store_true", help="toy size (2 windows, 2 seeds, 1 epoch after; M 1, 2)")
    args = parser.parse_args(argv)
    args.process = not args.quick if args.process is None else args.process
    if args.quick:
        args.windows, args.step, args.seeds, args.after = 2, 1, 2, 1
        args.members, args.epochs, args.subset, args.repeats = [1, 2], 1, args.subset or 128, 1
    models = ["mlp", "cnn"] if (args.model or ("both" if args.device else "mlp")) == "both" else [args.model or "mlp"]
    if args.device is None or args.device == "cpu":
        torch.set_num_threads(1)
    device = torch.device(args.device or "cpu")
    limit = flop_limit(device, args.quick)
    where = "the GPU" if device.type == "cuda" else f"{os.cpu_count()} threads"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per run, {device}; float32 limit measured "
          f"now: {limit / 1e9:.1f} GFLOP/s (a matmul on {where}); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    result: dict[str, Any] = {"limit": limit}
    for key in models:
        name, model = MODELS[key]
        if args.device is None:
            print("(wall times include building each run's objects and the sweep's own work: store, table)")
            result[key] = compare(name, model, args, limit)
        else:
            result[key] = per_step(name, model, args, limit)
    return result


if __name__ == "__main__":
    main()
