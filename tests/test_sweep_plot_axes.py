"""plot_critical_period_curve draws into a caller's axes, also one inside a SubFigure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lightning_critical.plots import plot_critical_period_curve


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "window": ["none"] * 2 + ["[0, 5) epochs"] * 2 + ["[0, 10) epochs"] * 2,
        "window_start": [np.nan, np.nan, 0, 0, 0, 0], "window_end": [np.nan, np.nan, 5, 5, 10, 10],
        "baseline": [True, True, False, False, False, False], "seed": [0, 1] * 3,
        "val_acc": [0.9, 0.92, 0.85, 0.83, 0.6, 0.62], "status": ["ok"] * 6,
    })


def test_curve_in_an_axes_of_a_subfigure_returns_the_root_figure():
    root = Figure()
    right = root.add_subfigure(root.add_gridspec(1, 2)[0, 1])
    ax = right.subplots()
    fig = plot_critical_period_curve(_table(), "val_acc", ax=ax)
    assert fig is root
    assert np.allclose(ax.lines[0].get_ydata(), [0.84, 0.61])  # the means of the two windows
    assert ax.get_xlabel() == "intervention ends at epoch T"  # a hand-made table does not say what the windows held
