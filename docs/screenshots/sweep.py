"""The 16-run sweep behind the screenshots of docs/logging.md (a few seconds per run on a CPU).

Removal of view b (noise) over 3 ends and a baseline (12 epochs each), 2 seeds, 2 learning rates, with the
spectral and reliance monitors; then TensorBoard on ``<out>/tensorboard``::

    python docs/screenshots/sweep.py /tmp/lc-screens
    tensorboard --logdir /tmp/lc-screens/tensorboard --port 6006 &
    chromium --headless --disable-gpu --no-sandbox --window-size=2400,820 --virtual-time-budget=15000 \
        --screenshot=sweep_hparams.png "http://localhost:6006/#hparams"
    chromium ... --window-size=1600,1300 --screenshot=sweep_custom_scalars.png "http://localhost:6006/#custom_scalars"
    python docs/screenshots/shoot_hparams_tab.py "http://localhost:6006/#hparams" "Parallel Coordinates View" \
        sweep_parallel_coordinates.png 2000 1000

(the PNGs in docs/screenshots/ are those, reduced to 128 colours).
"""

from __future__ import annotations

import sys

import lightning_critical as lc


def model(seed: int, lr: float) -> lc.models.TwoViewNet:
    return lc.models.TwoViewNet(hidden=16, lr=lr, seed=seed)


def data() -> lc.data.TwoViewDigits:
    return lc.data.TwoViewDigits(batch_size=64)


def monitors() -> list:
    return [lc.SpectralMonitor(every_n_steps=10, log_top_k=3),
            lc.RelianceMonitor(measures=("ablation",), every_n_epochs=1, max_examples=128)]


if __name__ == "__main__":
    table = lc.sweep.run(
        model, data, deficit=lc.PathwayDeficit("b", window=(0, 1), mode="noise", noise_std=1.0),
        windows=lc.sweep.removal([2, 4, 6]), seeds=[0, 1], params={"lr": [0.05, 0.2]},
        metrics=["val_acc", lc.sweep.metrics.ablation_reliance(sources=["a", "b"])], callbacks=monitors, trainer={"max_epochs": 12, "accelerator": "cpu"},
        out=sys.argv[1] if len(sys.argv) > 1 else "lc-screens", backend="serial", progress=False)
    print(table[["label", "val_acc"]].to_string())
