"""Time the full matrix-completion figure against a sequential plain-PyTorch baseline.

The baseline does per step what the paper's own script (``matrixcompletion/main.py``) does:
one fresh run per switch epoch; per step the end-to-end map, the full-batch losses of both
tasks (the active one is trained), the parameter norm, backward, a ``torch.optim.SGD`` step,
the test loss against the active ground truth, and every 10 steps an SVD of ``W`` whose top 10
singular values are kept; no printing. Its per-step cost does not depend on the switch epoch, so by default a slice of
``--slice-steps`` steps per depth (half before, half after a switch) is timed and extrapolated
to the full grid; ``--full-baseline`` runs all of it instead. The fast path is
``lightning_critical.experiments.matrix_completion_table``, timed in the same
process. ``--check`` also runs complete baseline runs for a few (depth, switch epoch) pairs and
compares their final test loss with the figure's.

    python benchmarks/matrix_completion.py                 # the paper's figure, ~4-6 min on one core
    python benchmarks/matrix_completion.py --quick         # reduced grid, seconds
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from torch import nn

from lightning_critical.data.matrix_completion import MatrixCompletionDataModule
from lightning_critical.experiments.matrix_completion import PAPER_SWITCH_EPOCHS, matrix_completion_table
from lightning_critical.models.matrix_factorization import init_factors


def baseline_run(
    depth: int,
    switch_epoch: int,
    continue_epochs: int,
    size: int,
    n_observed: int,
    pretrain_rank: int,
    target_rank: int,
    init_scale: float,
    lr: float,
    seed: int,
    max_steps: int | None = None,
) -> tuple[float, int, float]:
    """One plain-PyTorch run, as the paper's script does it. Returns (final test loss, steps, seconds)."""
    dm = MatrixCompletionDataModule(size=size, n_observed=n_observed, seed=seed,
                                    tasks={"pretrain": pretrain_rank, "target": target_rank})
    tasks = {name: (*dm.observations(name), dm.ground_truth(name)) for name in dm.tasks}
    gen = torch.Generator().manual_seed(seed)
    factors = [nn.Parameter(w) for w in init_factors(depth, size, size, "gaussian", init_scale, gen)]
    opt = torch.optim.SGD(factors, lr=lr)
    total = switch_epoch + continue_epochs
    n_steps = total if max_steps is None else min(total, max_steps)

    def end_to_end() -> torch.Tensor:
        w: torch.Tensor = factors[0]
        for factor in factors[1:]:
            w = factor @ w
        return w

    start = time.perf_counter()
    history = []
    for step in range(n_steps):
        active = "target" if step >= switch_epoch else "pretrain"
        w = end_to_end()
        losses = {name: 0.5 * (w[r, c] - v).pow(2).mean() for name, (r, c, v, _) in tasks.items()}
        loss = losses[active]
        params_norm = sum(p.pow(2).sum() for p in factors)  # noqa: F841 (the script logs it)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            test_loss = (w - tasks[active][3]).pow(2).mean()  # noqa: F841 (the script logs it)
        opt.step()
        if step % 10 == 0:
            history.append(torch.linalg.svd(w.detach(), full_matrices=False)[1][:10].numpy())
    seconds = time.perf_counter() - start
    # the script reports the loss *before* its last update; compare after it, against the task
    # active at the last step (pre-training when no step ran)
    last_active = "target" if n_steps > switch_epoch else "pretrain"
    with torch.no_grad():
        final = float((end_to_end() - tasks[last_active][3]).pow(2).mean())
    return final, n_steps, seconds


PAPER_SETTING = dict(size=100, n_observed=2000, pretrain_rank=10, target_rank=5, init_scale=1e-3, lr=0.2, seed=0)
# --quick: every code path of the full run on a toy problem, in seconds (the numbers mean nothing)
QUICK_SETTING = dict(size=16, n_observed=100, pretrain_rank=3, target_rank=1, init_scale=1e-3, lr=0.5, seed=0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the speed-ups and the ``--check`` pairs' final losses."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
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
    parser.add_argument("--quick", action="store_true",
                        help="a 16 x 16 toy problem, two depths, two switch epochs, one process: seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common: dict[str, Any] = dict(PAPER_SETTING)
    if args.quick:
        args.depths, args.switch_epochs, args.continue_epochs, args.slice_steps = [1, 2], [0, 60], 60, 40
        args.check, args.processes = ["1:0", "2:60"], 1
        common = dict(QUICK_SETTING)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    # --- fast path: the whole figure ------------------------------------------------------
    t0 = time.perf_counter()
    figure = matrix_completion_table(args.depths, args.switch_epochs, args.continue_epochs,
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
    checks = {}
    for pair in args.check or []:
        depth, switch = (int(x) for x in pair.split(":"))
        if depth not in args.depths or switch not in args.switch_epochs:
            continue
        loss, _, seconds = baseline_run(depth, switch, args.continue_epochs, **common)
        ours = float(figure[(figure.depth == depth) & (figure.switch_epoch == switch)]["test_loss"].iloc[0])
        checks[(depth, switch)] = (loss, ours)
        print(f"check depth {depth} switch {switch}: baseline {loss:.5f} vs figure {ours:.5f} "
              f"(|diff| {abs(loss - ours):.1e}; baseline run {seconds:.0f} s)", flush=True)

    print(figure.pivot(index="switch_epoch", columns="depth", values="test_loss").round(4).to_string())
    workers = args.processes or min(len(args.depths), os.cpu_count() or 1)
    print(f"figure wall time: {fast:.1f} s with {workers} worker process(es) "
          f"(depth sweeps one after another: {serial:.1f} s); sequential baseline: {baseline:.1f} s")
    print(f"speed-up: {baseline / fast:.1f}x  (one process: {baseline / serial:.1f}x)")
    return {"speedup": baseline / fast, "speedup_one_process": baseline / serial, "checks": checks}


if __name__ == "__main__":
    main()
