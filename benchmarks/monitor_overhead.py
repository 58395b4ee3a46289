"""Benchmark: what ``SpectralMonitor()`` at its defaults adds to training small models on CPU.

Four small user-style models, each trained with plain SGD on in-memory random data
(classification, batch 64, one thread, a TensorBoard logger as Lightning gives by default, no
progress bar so that the loop is as lean as it gets and the overhead as large as it gets):

* ``MLP``: 784-256-256-10 with ReLU;
* ``transformer``: embedding 1000 x 64, 2 encoder layers (4 heads, feed-forward 256),
  sequences of 16 tokens, a linear head;
* ``LSTM``: embedding 1000 x 64, one LSTM layer of 128, sequences of 16 tokens, a linear head;
* ``CNN``: three 3x3 convolutions (8, 16, 32 channels, max-pooling) on 28 x 28 images, a linear head.

Each fit runs ``--steps`` optimizer steps (default 5000, about five MNIST epochs at batch 64).
With the default log-spaced cadence a fit of ``N`` steps takes about ``2 * log2(N)``
records, so the overhead falls as fits grow; with a fixed ``every_n_steps`` it does not.

Two measures, both taken in the same run as the baseline they are compared with:

* **hook time**: the wall time spent inside the monitor's own hooks during a fit, over the
  rest of that fit's time (noise-free: it does not depend on what the other cores do);
* **wall time**: ``--repeats`` fits without and with the monitor, alternated, each model
  retrained from the same seed; the overhead is median(with) / median(without) - 1.
  On a shared machine this carries a few percent of noise either way.

``--every-n-steps N`` measures ``SpectralMonitor(every_n_steps=N)`` instead of the default
cadence. ``--quick`` runs a few steps of each model once (seconds; the numbers mean nothing,
it only proves the script still runs against the package's API; a test does it).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc

BATCH = 64


class Classifier(pl.LightningModule):
    """A body and a cross-entropy loss, trained with plain SGD."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=256, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class TinyLSTM(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


# name -> (body factory, input factory for n examples)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int, torch.Generator], torch.Tensor]]] = {
    "MLP": (mlp, lambda n, g: torch.randn(n, 784, generator=g)),
    "transformer": (TinyTransformer, lambda n, g: torch.randint(0, 1000, (n, 16), generator=g)),
    "LSTM": (TinyLSTM, lambda n, g: torch.randint(0, 1000, (n, 16), generator=g)),
    "CNN": (tiny_cnn, lambda n, g: torch.randn(n, 1, 28, 28, generator=g)),
}


class TimedSpectralMonitor(lc.SpectralMonitor):
    """``SpectralMonitor`` that adds up the wall time spent inside its own training hooks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = 0.0

    def _timed(self, hook: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        hook(*args, **kwargs)
        self.seconds += time.perf_counter() - start

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._timed(super().setup, *args, **kwargs)

    def on_train_start(self, *args: Any) -> None:
        self._timed(super().on_train_start, *args)

    def on_train_batch_start(self, *args: Any) -> None:
        self._timed(super().on_train_batch_start, *args)

    def on_train_end(self, *args: Any) -> None:
        self._timed(super().on_train_end, *args)


def fit(model_name: str, steps: int, root: str, monitor: pl.Callback | None) -> float:
    """One fit of ``steps`` optimizer steps; returns its wall time in seconds."""
    make_body, make_input = MODELS[model_name]
    gen = torch.Generator().manual_seed(0)
    x = make_input(steps * BATCH, gen)
    y = torch.randint(0, 10, (steps * BATCH,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    torch.manual_seed(0)
    module = Classifier(make_body())
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=1, accelerator="cpu", devices=1, default_root_dir=root,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[monitor] if monitor is not None else [], log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def monitor_kwargs(every_n_steps: int | None) -> dict[str, Any]:
    return {} if every_n_steps is None else {"every_n_steps": every_n_steps}


def measure(
    model_name: str, steps: int, repeats: int, every_n_steps: int | None, warm_up: bool = True
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        if warm_up:  # first-call costs of torch and Lightning
            fit(model_name, 20, root, None)
        timed = TimedSpectralMonitor(**monitor_kwargs(every_n_steps))
        total = fit(model_name, steps, root, timed)
        records = int(timed.to_frame().step.nunique())
        plain: list[float] = []
        monitored: list[float] = []
        for _ in range(repeats):
            plain.append(fit(model_name, steps, root, None))
            monitored.append(fit(model_name, steps, root, lc.SpectralMonitor(**monitor_kwargs(every_n_steps))))
    p, m = (statistics.median(plain), statistics.median(monitored)) if repeats else (math.nan, math.nan)
    return {
        "records": records, "hook_s": timed.seconds, "fit_s": total,
        "hook_pct": 100 * timed.seconds / (total - timed.seconds),
        "plain_s": p, "monitored_s": m, "wall_pct": 100 * (m - p) / p,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="optimizer steps per fit")
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternated fits without / with the monitor (0: hook time only)")
    parser.add_argument("--every-n-steps", type=int, default=None, help="a fixed cadence instead of the default")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="a few steps, one repeat: seconds; times mean nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 4, 1
    torch.set_num_threads(1)  # small models: one thread is fastest and immune to busy neighbours
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message)
    cadence = "default cadence" if args.every_n_steps is None else f"every_n_steps={args.every_n_steps}"
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps per fit, batch {BATCH}, "
          f"SpectralMonitor() with the {cadence}, median of {args.repeats} alternated fits")
    print(f"{'model':<12} {'records':>7} {'hooks s':>8} {'fit s':>7} {'hook %':>7} "
          f"{'without s':>9} {'with s':>7} {'wall %':>7}")
    results = {}
    for name in args.models:
        r = measure(name, args.steps, args.repeats, args.every_n_steps, warm_up=not args.quick)
        results[name] = r
        print(f"{name:<12} {r['records']:>7d} {r['hook_s']:>8.3f} {r['fit_s']:>7.2f} {r['hook_pct']:>+6.1f}% "
              f"{r['plain_s']:>9.2f} {r['monitored_s']:>7.2f} {r['wall_pct']:>+6.1f}%")
    return results


if __name__ == "__main__":
    main()
