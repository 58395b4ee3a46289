"""Wall time of the flagship demo (README's first command) against its 2-minute budget.

    python benchmarks/flagship_demo.py [--out DIR]

Prints the demo's wall time, the time of one bare 1000-epoch Trainer run of the same net
(the unit of work the demo repeats, measured in the same process) and both ratios.
"""

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch

import lightning_critical as lc
from lightning_critical.cli import _quiet_lightning
from lightning_critical.experiments.pathways import reproduce

BUDGET_S = 120.0


def bare_run() -> float:
    dm = lc.data.HierarchicalDataModule()
    model = lc.models.MultiPathwayLinearNet(task_basis=dm.task_basis())
    start = time.perf_counter()
    pl.Trainer(max_epochs=1000, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, accelerator="cpu").fit(model, dm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _quiet_lightning()
    unit = bare_run()
    out = args.out or tempfile.mkdtemp(prefix="lc-demo-")
    start = time.perf_counter()
    reproduce(out)
    demo = time.perf_counter() - start
    print(f"bare 1000-epoch run: {unit:.2f} s")
    print(f"flagship demo:       {demo:.2f} s  ({demo / unit:.1f} bare runs; budget {BUDGET_S:.0f} s, "
          f"ratio to budget {demo / BUDGET_S:.2f})")


if __name__ == "__main__":
    main()
