"""The flagship demo as a script: early / middle / late deficits in a two-pathway deep linear net.

    python examples/multipathway_critical_period.py --out outputs/multipathway

Writes TensorBoard logs (``<out>/tensorboard``), CSV tables and three PNG figures:
``trajectories.png`` (K_a, K_b per mode, SGD vs theory, deficit shaded), ``onset_sweep.png``
(the deprived pathway's final share against deficit onset, depths 1, 2, 3, 4, 6) and
``phase.png`` (phase portraits, early vs late deficit, depths 1, 2, 4). Same as
``lightning-critical demo``.
"""

import sys

from lightning_critical.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
