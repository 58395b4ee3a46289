"""Reproduce the paper's matrix-completion figure: final test loss against switch epoch.

Depths 1, 2, 3; pre-training on a rank-10 completion task for 0, 1k, 5k, 10k, 20k, 40k, 60k,
80k or 100k epochs, then 30k epochs on a rank-5 task observed at the same 2000 positions of a
100 x 100 matrix (init scale 1e-3, lr 0.2). Writes ``matrix_completion.csv`` and
``matrix_completion.png``, plus singular-value trajectories of the deepest net around two
switches (``singular_values.csv`` / ``.png``).

    python examples/matrix_completion_figure.py                       # the full figure (a few minutes)
    python examples/matrix_completion_figure.py --switch-epochs 0 5000 --continue-epochs 5000   # quick look

Same as ``lightning-critical matrix-completion``; every flag of that command is accepted.
"""

from __future__ import annotations

import sys

from lightning_critical.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--trajectories" not in argv:
        argv += ["--trajectories", "5000", "40000"] if "--switch-epochs" not in argv else []
    sys.exit(main(["matrix-completion", *argv]))
