"""Writing results to disk: one place that decides file names, the figure resolution and the order.

Experiments, sweeps and the ``plot`` command all end by writing tables (CSV) and figures (PNG)
into a folder; they do it through :func:`write_outputs` so every PNG has the same resolution
and every caller gets back the same ``{key: path}`` mapping. Plain Python, no Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

DPI = 150
"""Resolution of every PNG the package writes (the ``plot`` command's ``--dpi`` overrides it)."""


def save_figure(fig: Figure, path: str, dpi: int = DPI) -> str:
    """Save ``fig`` as ``path`` (tight bounding box) and return the path.

    Example::

        >>> import os, tempfile
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 2)); _ = fig.subplots().plot([0, 1])
        >>> os.path.getsize(save_figure(fig, os.path.join(tempfile.mkdtemp(), "a.png"))) > 0
        True
    """
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def write_outputs(
    out_dir: str,
    tables: Mapping[str, tuple[str, pd.DataFrame]] | None = None,
    figures: Mapping[str, tuple[str, Figure]] | None = None,
    dpi: int = DPI,
) -> dict[str, str]:
    """Write ``{key: (file name, table)}`` as CSV and ``{key: (file name, figure)}`` as PNG into ``out_dir``.

    Returns ``{key: path}`` in the order given, tables first. The folder is created here, so a
    caller that validates its arguments first never leaves an empty folder behind.

    Example::

        >>> import tempfile, pandas as pd
        >>> paths = write_outputs(tempfile.mkdtemp(), tables={"csv": ("t.csv", pd.DataFrame({"a": [1]}))})
        >>> sorted(paths), paths["csv"].endswith("t.csv")
        (['csv'], True)
    """
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    for key, (name, table) in (tables or {}).items():
        paths[key] = os.path.join(out_dir, name)
        table.to_csv(paths[key], index=False)
    for key, (name, fig) in (figures or {}).items():
        paths[key] = save_figure(fig, os.path.join(out_dir, name), dpi=dpi)
    return paths
