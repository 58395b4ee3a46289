"""The ``lightning-critical`` command.

* ``lightning-critical demo [--out DIR]``: the flagship multi-pathway demo (TensorBoard logs,
  CSV tables, PNG figures).
* ``lightning-critical matrix-completion [--out DIR] [--depths 1 2 3] ...``: the paper's
  deep-matrix-completion figure (final test loss against task-switch epoch), PNG + CSV.
* ``lightning-critical fit --config CONFIG.yaml`` (and ``validate``/``test``/``predict``):
  LightningCLI with any LightningModule / LightningDataModule given by ``class_path``, e.g.
  the configs in ``examples/configs/``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence


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
    paths = reproduce(args.out, quick=args.quick)
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


def _matrix_completion(argv: Sequence[str]) -> int:
    import torch

    from lightning_critical.experiments.matrix_completion import figure_main

    _quiet_lightning()
    torch.set_num_threads(1)
    return figure_main(list(argv))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"demo": _demo, "matrix-completion": _matrix_completion}


def _lightning_cli(argv: Sequence[str]) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
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
