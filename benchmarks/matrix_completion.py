"""Time the full matrix-completion figure against a sequential plain-PyTorch baseline.

The baseline does per step what the paper's own script (``matrixcompletion/main.py``) does:
one fresh run per switch epoch; per step the end-to-end map, the full-batch losses of both
tasks (the active one is trained), the parameter norm, backward, a ``torch.optim.SGD`` step,
the test loss against the active ground truth, and every 10 steps an SVD of ``W`` whose top 10
singular values are kept; no printing. Its per-step cost does not depend on the switch epoch, so by default a slice of
``--slice-steps`` steps per depth (half before, half after a switch) is timed and extrapolated
to the full grid; ``--full-baseline`` runs all of it instead. The fast path is
``lightning_critical.experiments.matrix_completion.matrix_completion_figure``, timed in the same
process. ``--check`` also runs complete baseline runs for a few (depth, switch epoch) pairs and
compares their final test loss with the figure's.

    python benchmarks/matrix_completion.py                 # the paper's figure, ~4-6 min on one core
    python benchmarks/matrix_completion.py --quick         # reduced grid, seconds
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch
from torch import nn

from lightning_critical.data.matrix_completion import MatrixCompletionDataModule
from lightning_critical.experiments.matrix_completion import PAPER_SWITCH_EPOCHS, matrix_completion_figure
from lightning_critical.models.matrix_factorization import init_factors


def baseline_run(depth, switch_epoch, continue_epochs, size, n_observed, pretrain_rank, target_rank,
                 init_scale, lr, seed, max_steps=None):
    """One plain-PyTorch run, as the paper's script does it. Returns (final test loss, steps, seconds)."""
    dm = MatrixCompletionDataModule(size=size, n_observed=n_observed, seed=seed,
                                    tasks={"pretrain": pretrain_rank, "target": target_rank})
    tasks = {name: (*dm.observations(name), dm.ground_truth(name)) for name in dm.tasks}
    gen = torch.Generator().manual_seed(seed)
    layers = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(depth)])
    for layer, w in zip(layers, init_factors(depth, size, size, "gaussian", init_scale, gen)):
        layer.weight = nn.Parameter(w)
    opt = torch.optim.SGD(layers.parameters(), lr=lr)
    total = switch_epoch + continue_epochs
    n_steps = total if max_steps is None else min(total, max_steps)
    start = time.perf_counter()
    history = []
    for step in range(n_steps):
        active = "target" if step >= switch_epoch else "pretrain"
        w = layers[0].weight
        for layer in layers[1:]:
            w = layer.weight @ w
        losses = {name: 0.5 * (w[r, c] - v).pow(2).mean() for name, (r, c, v, _) in tasks.items()}
        loss = losses[active]
        params_norm = sum(p.pow(2).sum() for p in layers.parameters())  # noqa: F841 (the script logs it)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            test_loss = (w - tasks[active][3]).pow(2).mean()
        opt.step()
        if step % 10 == 0:
            history.append(torch.linalg.svd(w.detach(), full_matrices=False)[1][:10].numpy())
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the script reports the loss *before* its last update; compare after it
        w = layers[0].weight
        for layer in layers[1:]:
            w = layer.weight @ w
        final = float((w - tasks[active][3]).pow(2).mean()) if n_steps else float(test_loss)
    return final, n_steps, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--switch-epochs", type=int, nargs="+", default=list(PAPER_SWITCH_EPOCHS))
    parser.add_argument("--continue-epochs", type=int, default=30000)
    parser.add_argument("--slice-steps", type=int, default=4000)
    parser.add_argument("--full-baseline", action="store_true")
    parser.add_argument("--check", type=str, nargs="*", default=["1:0", "3:0"],
                        help="depth:switch pairs run completely with the baseline to compare losses")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both sides (default 1: fair and robust on shared cores)")
    parser.add_argument("--processes", type=int, default=None,
                        help="depths trained at once by the fast path (default: one per CPU core)")
    parser.add_argument("--quick", action="store_true", help="reduced grid for a smoke run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.switch_epochs, args.continue_epochs, args.slice_steps = [0, 1000, 2000], 1000, 500
        args.check = ["1:0"]
    common = dict(size=100, n_observed=2000, pretrain_rank=10, target_rank=5, init_scale=1e-3, lr=0.2, seed=0)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    # --- fast path: the whole figure ------------------------------------------------------
    t0 = time.perf_counter()
    figure = matrix_completion_figure(args.depths, args.switch_epochs, args.continue_epochs,
                                      processes=args.processes, num_threads=args.threads, **common)
    fast = time.perf_counter() - t0
    for depth, seconds in figure.groupby("depth")["seconds"].first().items():
        print(f"fast  depth {depth}: {seconds:7.1f} s", flush=True)
    serial = float(figure.groupby("depth")["seconds"].first().sum())

    # --- baseline: timed slice per depth, extrapolated ------------------------------------
    grid_steps = sum(t + args.continue_epochs for t in args.switch_epochs)
    baseline = 0.0
    for depth in args.depths:
        if args.full_baseline:
            seconds = sum(baseline_run(depth, t, args.continue_epochs, **common)[2] for t in args.switch_epochs)
            print(f"base  depth {depth}: {seconds:7.1f} s (measured)", flush=True)
        else:
            half = args.slice_steps // 2
            _, steps, seconds = baseline_run(depth, half, args.continue_epochs, max_steps=args.slice_steps, **common)
            per_step = seconds / steps
            seconds = per_step * grid_steps
            print(f"base  depth {depth}: {seconds:7.1f} s ({per_step * 1e6:.0f} us/step x {grid_steps} steps, "
                  f"extrapolated from {steps} steps)", flush=True)
        baseline += seconds

    # --- same curves: complete baseline runs vs the figure --------------------------------
    for pair in args.check or []:
        depth, switch = (int(x) for x in pair.split(":"))
        if depth not in args.depths or switch not in args.switch_epochs:
            continue
        loss, _, seconds = baseline_run(depth, switch, args.continue_epochs, **common)
        ours = float(figure[(figure.depth == depth) & (figure.switch_epoch == switch)]["test_loss"].iloc[0])
        print(f"check depth {depth} switch {switch}: baseline {loss:.5f} vs figure {ours:.5f} "
              f"(|diff| {abs(loss - ours):.1e}; baseline run {seconds:.0f} s)", flush=True)

    print(figure.pivot(index="switch_epoch", columns="depth", values="test_loss").round(4).to_string())
    workers = args.processes or min(len(args.depths), os.cpu_count() or 1)
    print(f"figure wall time: {fast:.1f} s with {workers} worker process(es) "
          f"(depth sweeps one after another: {serial:.1f} s); sequential baseline: {baseline:.1f} s")
    print(f"speed-up: {baseline / fast:.1f}x  (one process: {baseline / serial:.1f}x)")
    return baseline / fast


if __name__ == "__main__":
    main()
