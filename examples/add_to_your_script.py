"""Add critical-period probes to an existing Lightning script: callbacks only, no model changes.

``UserClassifier`` below stands for *your* LightningModule: it knows nothing about
lightning-critical. Everything the package does is in the ``callbacks=[...]`` list:

* ``lc.InputDeficit("blur", window=(0, 5))``: blurred training images for epochs 0-4
  (validation stays clean);
* ``lc.PathwayDeficit("features.0", window=(5, 8))``: the first conv layer frozen for
  epochs 5-7 (any submodule name or glob works);
* ``lc.SpectralMonitor()``: singular values and spectral metrics of every weight matrix;
* ``lc.FisherMonitor()``: trace of the Fisher information per layer.

    python examples/add_to_your_script.py              # ~20 s on a laptop CPU
    tensorboard --logdir outputs/add_to_your_script    # scalars deficit/*, spectra, fisher_trace/*

Outputs under ``--out`` (default ``outputs/add_to_your_script/``): TensorBoard logs, and the
monitors' tables ``spectral.csv`` and ``fisher.csv``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc


# ---- your code, unchanged -------------------------------------------------------------
class UserClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


# ---- the probes: only callbacks are added -----------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("outputs", "add_to_your_script"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--subset", type=int, default=None, help="train on this many digits only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    pl.seed_everything(0, verbose=False)

    model = UserClassifier()
    datamodule = lc.data.DigitsDataModule(batch_size=32, subset=args.subset)
    spectral = lc.SpectralMonitor(every_n_steps=25)
    fisher = lc.FisherMonitor(every_n_epochs=1)
    logger = pl.loggers.TensorBoardLogger(args.out, name="logs")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.out,
        logger=logger,
        enable_checkpointing=False,
        callbacks=[
            lc.InputDeficit("blur", window=(0, 5), factor=2),
            lc.PathwayDeficit("features.0", window=(5, 8), mode="freeze"),
            spectral,
            fisher,
        ],
    )
    trainer.fit(model, datamodule)

    spectra, traces = spectral.to_frame(), fisher.to_frame()
    spectra.to_csv(os.path.join(args.out, "spectral.csv"), index=False)
    traces.to_csv(os.path.join(args.out, "fisher.csv"), index=False)
    print("spectral targets:", sorted(spectra.target.unique()))
    effective_rank = spectra[spectra.metric == "effective_rank"]
    print(effective_rank.pivot_table(index="step", columns="target", values="value").round(2).tail(3))
    print(traces.pivot_table(index="epoch", columns="target", values="value").round(3))
    print("logs:", logger.log_dir)
    return {"spectral": spectra, "fisher": traces, "model": model, "log_dir": logger.log_dir}


if __name__ == "__main__":
    main()
