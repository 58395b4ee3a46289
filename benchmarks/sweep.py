"""What ``lc.sweep.run`` costs: shared prefixes, local processes and Ray, as ratios measured in one run.

(a) **Shared prefixes.** An 8-window removal sweep (blur during ``[0, k)``, k = 3..10) and an
    8-window sliding sweep (blur during ``[k, k + 2)``, k = 3..10), each with its no-deficit
    baseline, 12 epochs per run, on the bundled SmallCNN and the full digits data, serial: once
    with shared prefixes and once with every run trained from scratch (``share_prefixes=False``).
    The tables must be identical (bitwise metrics). The *epoch ratio* (independent / shared
    epochs) is fixed by the grid (1.64 and 1.93); the *wall ratio* is measured. Goal: wall
    ratio >= 0.9 x epoch ratio, i.e. branching (checkpoints, restoring, copying log prefixes)
    costs almost nothing.
(b) **Local processes.** The removal sweep over ``--seeds`` seeds (8: 72 runs), shared
    prefixes, on ``--workers`` worker processes against serial (worker start-up included).
    Goal >= 1.7x on 2 cores. Identical tables. Only meaningful on an otherwise idle machine:
    with Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), CPU is
    shared between sessions, so on a busy machine two workers get what one process got. The
    CPU seconds and the cores obtained on average (CPU seconds / wall) are printed too: equal
    CPU seconds mean the workers waste nothing, and the cores obtained show what the machine gave.
(c) **Ray's overhead per run** against local processes, on tiny runs (a few steps each):
    per-run overhead = (wall x workers - the runs' own seconds) / runs, for a fresh backend
    (start-up included: Ray's ``ray.init`` and the workers' imports; a new process pool) and
    for a warm one (a second sweep on the same running Ray / the same ``ProcessPoolExecutor``).
    Skipped when Ray is not installed.
(d) **The exactness audit** (``verify=``): the removal sweep of (a) with the default audit
    (``verify="first"``: the deepest branched run is retrained from scratch and its final weights
    and metrics compared) against ``verify=False``. Identical tables; the audit must pass.

Times are wall-clock seconds on this machine; every comparison is made within one run, so the
ratios, not the seconds, are what carries over to another machine. A busy machine lowers them.

    python benchmarks/sweep.py            # the full benchmark, ~3 min on 2 quiet cores
    python benchmarks/sweep.py --quick    # tiny grids, seconds: checks that it runs, no timing claims
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import logging
import multiprocessing
import resource
import tempfile
import time
from typing import Any

import pandas as pd

import lightning_critical as lc
from lightning_critical.sweep.backends import ray_available

COMPARED = ("run_id", "status", "epochs", "val_loss", "val_acc")


def sweep(out: str, windows: Any, epochs: int, seeds: list[int], backend: Any = "serial", tiny: bool = False,
          **kw: Any) -> tuple[pd.DataFrame, float]:
    """One blur sweep on the digits SmallCNN; returns the table and its wall seconds."""
    channels, subset = ((4, 8), 64) if tiny else ((16, 32), None)
    model = functools.partial(lc.models.SmallCNN, 1, 10, channels=channels, lr=0.05, lr_decay=0.97)
    data = functools.partial(lc.data.DigitsDataModule, batch_size=32, subset=subset, seed=0)
    start = time.perf_counter()
    table = lc.sweep.run(
        model, data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4), windows=windows,
        metrics=["val_loss", "val_acc"], trainer={"max_epochs": epochs, "accelerator": "cpu", "devices": 1},
        seeds=seeds, out=out, backend=backend, plot=False, progress=False, **kw,
    )
    seconds = time.perf_counter() - start
    failed = table[table["status"] != "ok"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} runs failed: {failed['error'].tolist()[:2]}")
    return table, seconds


def same(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    """The two sweeps trained the same runs to the same results, bit for bit."""
    left, right = a[list(COMPARED)].reset_index(drop=True), b[list(COMPARED)].reset_index(drop=True)
    if not left.equals(right):
        raise AssertionError(f"{what}: the tables differ:\n{left.compare(right)}")


def part_a(root: str, quick: bool) -> dict[str, dict[str, float]]:
    epochs = 3 if quick else 12
    grids = {
        "removal": lc.sweep.removal([1, 2] if quick else list(range(3, 11))),
        "sliding": lc.sweep.sliding([1] if quick else list(range(3, 11)), length=1 if quick else 2),
    }
    results = {}
    for name, grid in grids.items():
        shared, t_shared = sweep(f"{root}/a-{name}-shared", grid, epochs, [0], tiny=quick, verify=False)  # (d): audit
        independent, t_indep = sweep(f"{root}/a-{name}-independent", grid, epochs, [0], tiny=quick,
                                     share_prefixes=False)
        same(shared, independent, f"(a) {name}")
        epoch_ratio = independent.attrs["epochs_trained"] / shared.attrs["epochs_trained"]
        wall_ratio = t_indep / t_shared
        results[name] = {"runs": len(shared), "epochs_shared": shared.attrs["epochs_trained"],
                         "epochs_independent": independent.attrs["epochs_trained"], "epoch_ratio": epoch_ratio,
                         "seconds_shared": t_shared, "seconds_independent": t_indep, "wall_ratio": wall_ratio}
        print(f"(a) {name:7s} {len(shared)} runs x {epochs} epochs: epochs trained {shared.attrs['epochs_trained']} "
              f"shared / {independent.attrs['epochs_trained']} independent -> epoch ratio {epoch_ratio:.2f}; "
              f"wall {t_shared:.1f} s / {t_indep:.1f} s -> wall ratio {wall_ratio:.2f} "
              f"= {wall_ratio / epoch_ratio:.2f} x epoch ratio (goal >= 0.9); tables identical")
    return results


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished, waited-for children."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def part_b(root: str, quick: bool, workers: int, seeds: int) -> dict[str, float]:
    epochs = 3 if quick else 12
    grid = lc.sweep.removal([1, 2] if quick else list(range(3, 11)))
    seed_list = list(range(seeds))
    cpu = cpu_seconds()
    serial, t_serial = sweep(f"{root}/b-serial", grid, epochs, seed_list, tiny=quick)
    cpu_serial, cpu = cpu_seconds() - cpu, cpu_seconds()
    process, t_process = sweep(f"{root}/b-process", grid, epochs, seed_list, backend="process", workers=workers,
                               tiny=quick)
    cpu_process = cpu_seconds() - cpu  # the workers are counted once the pool has joined them
    same(serial, process, "(b) process vs serial")
    speedup = t_serial / t_process
    print(f"(b) removal x {seeds} seeds ({len(serial)} runs, {serial.attrs['epochs_trained']} epochs, shared "
          f"prefixes): serial {t_serial:.1f} s, {workers} worker processes {t_process:.1f} s -> {speedup:.2f}x "
          f"(goal >= 1.7x on 2 cores); tables identical. CPU seconds: serial {cpu_serial:.1f}, processes "
          f"{cpu_process:.1f} (start-up included); cores obtained on average: serial {cpu_serial / t_serial:.2f}, "
          f"processes {cpu_process / t_process:.2f}")
    return {"runs": len(serial), "seconds_serial": t_serial, "seconds_process": t_process, "speedup": speedup,
            "cpu_serial": cpu_serial, "cpu_process": cpu_process}


def overhead(table: pd.DataFrame, seconds: float, workers: int) -> float:
    """Seconds per run that the backend adds: wall time on ``workers`` slots not spent inside the runs."""
    return (seconds * workers - float(table["seconds"].sum())) / len(table)


def part_c(root: str, quick: bool, workers: int) -> dict[str, float]:
    import ray

    grid = lc.sweep.sliding([0], length=1)  # 2 runs per seed: blur in epoch 0, and the baseline
    seeds = list(range(2 if quick else 16))
    tiny = {"share_prefixes": False, "tiny": True, "tensorboard": False}
    out: dict[str, float] = {}
    ray_cold, t_ray_cold = sweep(f"{root}/c-ray-cold", grid, 1, seeds, backend="ray", workers=workers, **tiny)
    out["ray_cold"] = overhead(ray_cold, t_ray_cold, workers)
    if quick:  # one Ray start, checked against serial; the comparison needs the full mode
        serial, _ = sweep(f"{root}/c-serial", grid, 1, seeds, **tiny)
        same(serial, ray_cold, "(c) Ray vs serial")
        print(f"(c) {len(serial)} tiny runs on a fresh Ray with {workers} CPUs: overhead per run "
              f"{out['ray_cold'] * 1000:.0f} ms; table identical to serial")
        return out
    process, t_process = sweep(f"{root}/c-process", grid, 1, seeds, backend="process", workers=workers, **tiny)
    out["process_cold"] = overhead(process, t_process, workers)
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        sweep(f"{root}/c-pool-warmup", grid, 1, seeds, backend=pool, **tiny)
        pool_table, t_pool = sweep(f"{root}/c-pool", grid, 1, seeds, backend=pool, **tiny)
    out["process_warm"] = overhead(pool_table, t_pool, workers)
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    out["ray_init_seconds"] = time.perf_counter() - start
    try:
        sweep(f"{root}/c-ray-warmup", grid, 1, seeds, backend="ray", **tiny)
        ray_warm, t_ray_warm = sweep(f"{root}/c-ray-warm", grid, 1, seeds, backend="ray", **tiny)
    finally:
        ray.shutdown()
    out["ray_warm"] = overhead(ray_warm, t_ray_warm, workers)
    for table in (pool_table, ray_cold, ray_warm):
        same(process, table, "(c) Ray vs processes")
    print(f"(c) {len(process)} tiny runs (~{process['seconds'].mean() * 1000:.0f} ms each) on {workers} workers, "
          f"overhead per run: fresh processes {out['process_cold'] * 1000:.0f} ms, fresh Ray "
          f"{out['ray_cold'] * 1000:.0f} ms (ray.init alone {out['ray_init_seconds']:.1f} s); warm process pool "
          f"{out['process_warm'] * 1000:.0f} ms, warm Ray {out['ray_warm'] * 1000:.0f} ms -> once running, Ray minus "
          f"processes = {(out['ray_warm'] - out['process_warm']) * 1000:.0f} ms per run; tables identical")
    return out


def part_d(root: str, quick: bool) -> dict[str, float]:
    epochs = 3 if quick else 12
    grid = lc.sweep.removal([1, 2] if quick else list(range(3, 11)))
    off, t_off = sweep(f"{root}/d-off", grid, epochs, [0], tiny=quick, verify=False)
    on, t_on = sweep(f"{root}/d-on", grid, epochs, [0], tiny=quick)
    same(on, off, "(d) audit on vs off")
    audit = on.attrs["audit"]
    if (audit["audited"], audit["passed"]) != (1, 1):
        raise AssertionError(f"(d) the audit did not pass: {audit}")
    extra = t_on / t_off - 1
    print(f"(d) removal, {len(on)} runs x {epochs} epochs ({on.attrs['epochs_trained']} epochs trained): "
          f"verify='first' {t_on:.1f} s, verify=False {t_off:.1f} s -> the audit adds {extra * 100:.0f}% "
          f"({audit['seconds']:.1f} s retraining one run from scratch); audit passed, tables identical")
    return {"seconds_audit": t_on, "seconds_no_audit": t_off, "extra": extra, "audit_seconds": audit["seconds"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny grids (seconds): checks that it runs")
    parser.add_argument("--workers", type=int, default=2, help="worker processes / Ray CPUs in (b) and (c)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of (b) (default 8; 2 with --quick)")
    parser.add_argument("--no-ray", action="store_true", help="skip (c)")
    args = parser.parse_args(argv)
    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    seeds = args.seeds or (2 if args.quick else 8)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        # warm-up: first-use costs in this process (lazy imports, the data set's first read) go to no part
        sweep(f"{root}/warmup", lc.sweep.removal([1]), 2, [0], tiny=True)
        result["a"] = part_a(root, args.quick)
        result["b"] = part_b(root, args.quick, args.workers, seeds)
        result["d"] = part_d(root, args.quick)
        if args.no_ray:
            print("(c) skipped (--no-ray)")
        elif not ray_available():
            print('(c) skipped: Ray is not installed (pip install "lightning-critical[ray]")')
        else:
            result["c"] = part_c(root, args.quick, args.workers)
    if args.quick:
        print("(quick mode: tiny grids, the ratios above are not measurements)")
    return result


if __name__ == "__main__":
    main()
