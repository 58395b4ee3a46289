"""Wall time of the flagship demo (README's first command) against its 2-minute budget.

    python benchmarks/flagship_demo.py [--out DIR]
    python benchmarks/flagship_demo.py --quick      # the demo's stages at toy size, seconds

Prints the demo's wall time, the time of one bare 1000-epoch Trainer run of the same net
(the unit of work the demo repeats, measured in the same process) and both ratios.
``--quick`` runs a 20-epoch bare run and the demo's three stages (early/late runs, onset
sweep, phase trajectories, and their figures) on a 16-wide net for 40 epochs; its times
mean nothing, it only proves the script still runs against the package's API.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pytorch_lightning as pl
import torch

import lightning_critical as lc
from lightning_critical.cli import _quiet_lightning
from lightning_critical.experiments.pathways import (
    deficit_onset_sweep,
    early_middle_late,
    phase_trajectories,
    reproduce,
)
from lightning_critical.plots import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits

BUDGET_S = 120.0


def bare_run(max_epochs: int = 1000) -> float:
    dm = lc.data.HierarchicalDataModule()
    model = lc.models.MultiPathwayLinearNet(task_basis=dm.task_basis())
    start = time.perf_counter()
    pl.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, accelerator="cpu").fit(model, dm)
    return time.perf_counter() - start


def toy_demo(out: str) -> dict[str, str]:
    """What :func:`reproduce` does, through the same functions, at toy size."""
    runs = early_middle_late({"early": 0, "late": 20}, length=10, save_dir=out, every_n_steps=10, width=16,
                             max_epochs=40)  # out is the sweep's directory, as in reproduce: logs in out/tensorboard
    sweep = deficit_onset_sweep(depths=(2,), onsets=(0, 20), length=10, sgd_onsets=(0,), width=16, max_epochs=40)
    phases = phase_trajectories(depths=(2,), windows={"early": (0, 10)}, max_epochs=40)
    paths = {}
    for name, fig in (("trajectories", plot_deficit_trajectories(runs, marker_every=10)),
                      ("onset_sweep", plot_deprived_share(sweep)),
                      ("phase", plot_phase_portraits(phases, measured=runs, grid=5))):
        paths[name] = os.path.join(out, f"{name}.png")
        fig.savefig(paths[name], dpi=40)
    return paths


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; returns the measured seconds."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="toy sizes, seconds; the times mean nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _quiet_lightning()
    unit = bare_run(20 if args.quick else 1000)
    out = args.out or tempfile.mkdtemp(prefix="lc-demo-")
    start = time.perf_counter()
    if args.quick:
        toy_demo(out)
    else:
        reproduce(out)
    demo = time.perf_counter() - start
    print(f"bare {20 if args.quick else 1000}-epoch run: {unit:.2f} s")
    print(f"flagship demo{' (toy size)' if args.quick else ''}: {demo:.2f} s  ({demo / unit:.1f} bare runs; "
          f"budget {BUDGET_S:.0f} s, ratio to budget {demo / BUDGET_S:.2f})")
    print(f"outputs: {out}")
    return {"bare_run_s": unit, "demo_s": demo}


if __name__ == "__main__":
    main()
