"""The ``lightning-critical`` command.

* ``lightning-critical demo [--out DIR]``: the flagship multi-pathway demo (TensorBoard logs,
  CSV tables, PNG figures).
* ``lightning-critical matrix-completion [--out DIR] [--depths 1 2 3] ...``: the paper's
  deep-matrix-completion figure (final test loss against task-switch epoch), PNG + CSV.
* ``lightning-critical sweep --config CONFIG.yaml [--out DIR] [--backend B] [--study.seeds [0,1] ...]``:
  a critical-period sweep (windows x seeds x swept values) from a YAML config whose sections
  ``study`` / ``execution`` / ``output`` are read into :class:`~lightning_critical.sweep.Study`,
  ``Execution`` and ``Output`` (:mod:`lightning_critical.sweep.config`), e.g.
  ``examples/configs/digits_blur_sweep.yaml``: results table, summary, curve, resumable.
* ``lightning-critical plot RUN_DIR [--out DIR] [--metrics M ...] [--steps S ...] [--window NAME=START:END]``:
  figures of a run of your own from its log directory (the monitors' histories; deficit
  windows from TensorBoard's event file): one PNG per spectral metric over steps, the Fisher
  trace over epochs, singular-value spectra at chosen steps, in ``RUN_DIR/figures``.
* ``lightning-critical fit --config CONFIG.yaml`` (and ``validate``/``test``/``predict``):
  LightningCLI with any LightningModule / LightningDataModule given by ``class_path`` (``data``
  optional: a model may bring its own dataloaders), e.g. the configs in ``examples/configs/``.

Classes by ``class_path`` may live in the current directory (``mymodels.Net``). The reference is
``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lightning_critical import _output


def _demo(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-critical demo",
        description="Early / middle / late pathway deficits in a deep linear network, with theory.",
    )
    parser.add_argument("--out", default="outputs/multipathway", help="output directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smaller onset sweep (seconds, for smoke tests)")
    args = parser.parse_args(list(argv))
    import torch

    from lightning_critical.experiments.pathways import reproduce

    # These matrices are tiny: one thread avoids oversubscription overhead.
    torch.set_num_threads(1)
    _quiet_lightning()
    paths = reproduce(args.out, quick=args.quick, progress=lambda line: print(line, flush=True))
    for key, path in paths.items():
        print(f"{key:>18}: {path}")
    print(f"\nOpen the logs with:  tensorboard --logdir {paths['tensorboard']}")
    return 0


def _quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning")


def _matrix_completion(argv: Sequence[str]) -> int:
    """``lightning-critical matrix-completion``: the paper's figure with ``reproduce_figure`` (see ``--help``).

    Depths 1, 2, 3, the published switch epochs and 30k epochs after the switch by default.
    """
    import torch

    # Imported here, not at the top: the experiments bind the package to a Lightning namespace,
    # which the fit / sweep commands must leave to the user's classes.
    from lightning_critical.experiments.matrix_completion import PAPER_DEPTHS, PAPER_SWITCH_EPOCHS, reproduce_figure

    parser = argparse.ArgumentParser(
        prog="lightning-critical matrix-completion",
        description="Final test loss against task-switch epoch for deep matrix factorizations "
        "(Kleinman, Achille & Soatto 2024, matrix-completion figure).",
    )
    parser.add_argument("--depths", type=int, nargs="+", default=list(PAPER_DEPTHS))
    parser.add_argument("--switch-epochs", type=int, nargs="+", default=list(PAPER_SWITCH_EPOCHS))
    parser.add_argument("--continue-epochs", type=int, default=30000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--n-observed", type=int, default=2000)
    parser.add_argument("--pretrain-rank", type=int, default=10)
    parser.add_argument("--target-rank", type=int, default=5)
    parser.add_argument("--pretrain-observed", type=int, default=None,
                        help="'fewer examples' deficit: pre-train on this many of the target's observations")
    parser.add_argument("--init-scale", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectories", type=int, nargs="*", default=None,
                        help="switch epochs whose singular-value trajectories (deepest depth) are also plotted")
    parser.add_argument("--processes", type=int, default=None,
                        help="depths trained at once in worker processes (default: one per CPU core)")
    parser.add_argument("--accelerator", default="auto",
                        help="where to train: auto (default: Lightning's choice), cpu, gpu, mps...")
    parser.add_argument("--out", "--out-dir", dest="out_dir", default="outputs/matrix_completion",
                        help="output directory (default: %(default)s)")
    args = parser.parse_args(list(argv))
    _quiet_lightning()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest (restored for in-process callers)
    try:
        reproduce_figure(
            args.out_dir, args.depths, args.switch_epochs, args.continue_epochs, args.trajectories,
            size=args.size, n_observed=args.n_observed, pretrain_rank=args.pretrain_rank,
            target_rank=args.target_rank, pretrain_observed=args.pretrain_observed,
            init_scale=args.init_scale, lr=args.lr, seed=args.seed, processes=args.processes,
            accelerator=args.accelerator,
        )
    except ValueError as err:
        parser.error(str(err))
    finally:
        torch.set_num_threads(threads)
    return 0


def _sweep(argv: Sequence[str]) -> int:
    """``lightning-critical sweep``: a config read into ``Study`` / ``Execution`` / ``Output``, then ``run_study``."""
    import os

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        args = ["--help"]
    _bind_to_users_lightning(args)
    from lightning_critical.sweep.config import ConfigError, read_config
    from lightning_critical.sweep.lock import SweepLock
    from lightning_critical.sweep.session import Session

    configs = _config_files(args)
    default_out = os.path.join("outputs", os.path.splitext(os.path.basename(configs[-1]))[0]) if configs else None
    try:
        study, execution, output = read_config(args, default_out)
    except ConfigError as err:
        return _bad_input(err)
    _quiet_lightning()
    # run_study's steps; the errors of those before training are bad input (one line), training's keep theirs
    bad_input = (ValueError, TypeError, ImportError)
    try:
        session = Session(study, execution, output)
        session.identify()  # the checks and first builds (a bad init_args value), before out is touched
    except bad_input as err:
        return _bad_input(err)
    with SweepLock(output.out):
        try:
            session.prepare()  # the store, the backend, the pre-flight
        except bad_input as err:
            return _bad_input(err)
        table = session.run()
    return _report(table)


def _bad_input(err: Exception) -> int:
    print(f"lightning-critical sweep: error: {err}", file=sys.stderr)
    return 2


def _report(table: Any) -> int:
    """Write ``results.csv`` / ``summary.csv`` beside the sweep and print the summary; 1 when a run failed."""
    import os

    import lightning_critical as lc

    out = table.attrs["out"]
    table.to_csv(os.path.join(out, "results.csv"), index=False)
    metric = table.attrs["metrics"][0] if table.attrs["metrics"] else None
    if metric is not None and (table["status"] == "ok").any():
        summary = lc.sweep.summarize(table, metric)
        summary.to_csv(os.path.join(out, "summary.csv"), index=False)
        print(summary.drop(columns=["window_start", "window_end"]).to_string(index=False, float_format="%.4g"))
    failed = int((table["status"] != "ok").sum())
    print(f"\n{len(table)} runs ({failed} failed), {table.attrs['epochs_trained']} epochs trained for "
          f"{table.attrs['epochs_independent']} without shared prefixes.")
    print(f"table: {os.path.join(out, 'results.csv')}\ncurve: {os.path.join(out, 'critical_period.png')}")
    print(f"Open the logs with:  tensorboard --logdir {os.path.join(out, 'tensorboard')}")
    return 1 if failed else 0


def _window(text: str) -> tuple[str, tuple[int, int]]:
    name, sep, span = text.rpartition("=")
    start, colon, end = span.partition(":")
    try:
        if not sep or not name or not colon:
            raise ValueError
        return name, (int(start), int(end))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window: give NAME=START:END in optimizer steps, e.g. freeze/b=0:400"
        ) from None


def _plot(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-critical plot",
        description=(
            "Figures of a run from its log directory (any logger): each spectral metric per layer over steps and "
            "the Fisher trace per layer over epochs (deficit windows shaded, task switches marked), "
            "singular-value spectra at chosen steps."
        ),
    )
    parser.add_argument("run_dir", help="the run's log directory, e.g. lightning_logs/version_0")
    parser.add_argument("--out", help="where the PNGs go (default: RUN_DIR/figures)")
    parser.add_argument("--metrics", nargs="+", help="spectral metrics to draw (default: every one recorded)")
    parser.add_argument("--steps", type=int, nargs="+", help="steps of the spectra (default: four, first to last)")
    parser.add_argument("--window", type=_window, action="append", metavar="NAME=START:END",
                        help="a deficit window in optimizer steps, repeatable; replaces the windows read from "
                             "the run's schedule.json (written with any logger; for older runs, the deficit/<name> "
                             "scalars of its TensorBoard event file)")
    parser.add_argument("--dpi", type=int, default=_output.DPI, help="resolution (default: %(default)s)")
    args = parser.parse_args(list(argv))
    from lightning_critical.plots.runs import plot_run

    windows: dict[str, list[tuple[int, int]]] | None = None
    if args.window:
        windows = {}
        for name, span in args.window:
            windows.setdefault(name, []).append(span)
    try:
        paths = plot_run(args.run_dir, out=args.out, metrics=args.metrics, steps=args.steps, windows=windows,
                         dpi=args.dpi)
    except ValueError as err:
        print(f"lightning-critical plot: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:>18}: {path}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "demo": _demo, "matrix-completion": _matrix_completion, "sweep": _sweep, "plot": _plot,
}


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _config_files(argv: Sequence[str]) -> list[str]:
    """The files given with ``--config`` / ``-c`` (``--config=FILE`` or ``--config FILE``)."""
    args = list(argv)
    found = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--config", "-c"):
            found.append(value if eq else (args[i + 1] if i + 1 < len(args) else ""))
    return [f for f in found if f]


def _class_paths_in(value: Any) -> list[str]:
    """Every ``class_path`` string in a loaded YAML document, depth first."""
    if isinstance(value, dict):
        own = [value["class_path"]] if isinstance(value.get("class_path"), str) else []
        return own + [p for v in value.values() for p in _class_paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _class_paths_in(v)]
    return []


def _class_paths(argv: Sequence[str]) -> list[str]:
    """The ``class_path`` of every class named on the command line or in ``--config`` files, user classes first."""
    import yaml

    args = list(argv)
    found: list[str] = []
    files = _config_files(args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
        if name.startswith("--") and _DOTTED.match(value) and not value.endswith((".yaml", ".yml", ".json")):
            found.append(value)
        elif name in ("--model", "--data") and value:
            files.append(value)
    for path in files:
        try:
            with open(path) as fh:
                found += _class_paths_in(yaml.safe_load(fh))
        except (OSError, ValueError, yaml.YAMLError):
            continue  # the parser reports unreadable configs itself
    found = [p for p in found if _DOTTED.match(p)]  # a bare name (TensorBoardLogger) is the parser's to resolve
    return sorted(found, key=lambda p: p.startswith("lightning_critical."))  # stable: user classes first


def _bind_to_users_lightning(argv: Sequence[str]) -> None:
    """Import the user's model and data classes first, so the package binds to their Lightning namespace."""
    import importlib

    _cwd_importable()
    for class_path in _class_paths(argv):
        module, _, _ = class_path.rpartition(".")
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # LightningCLI names the bad class_path itself


def _cwd_importable() -> None:
    """Put the current directory on ``sys.path`` (a console script's holds its own folder).

    So ``class_path: mymodels.Net`` finds ``./mymodels.py``, as ``python -m`` would.
    """
    import os

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _lightning_cli(argv: Sequence[str]) -> int:
    _bind_to_users_lightning(argv)
    from lightning_critical import _namespace

    pl = _namespace.pl
    _namespace.submodule("cli").LightningCLI(
        pl.LightningModule,
        None,  # no datamodule class: ``data`` is optional, for a model that brings its own dataloaders
        subclass_mode_model=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-critical`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\nCommands: {', '.join(COMMANDS)}, or LightningCLI's fit / validate / test / predict.")
        return 0
    return _lightning_cli(args)


if __name__ == "__main__":
    sys.exit(main())
