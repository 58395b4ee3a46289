"""The custom-scalars layout: categories in reading order, the spectral ones closed; a sweep's one layout.

TensorBoard's Custom Scalars tab merges the layouts of every run directory in the order of the
runs' names: the first layout sets the order of the categories (and whether each starts open),
later ones add charts to them. A sweep's runs each write their layout (the same categories, a
baseline without ``deficits and tasks``), so without help the tab opened on whatever the
alphabetically first run drew first. Here:

* :func:`layout_summary` writes a layout's categories in :data:`CATEGORY_ORDER` (deficits and
  tasks, reliance, then any other, then the spectral ones) and marks :data:`CLOSED` categories
  ``closed`` (collapsed until clicked: their charts draw a line per run and per series);
* :func:`sweep_layout` merges every run's last layout under a sweep's ``<out>/tensorboard`` into
  one, written at its root (run ``.``, read first), so the sweep's tab opens on its deficits,
  tasks and reliance series whatever the runs' names.

Example::

    >>> ordered({"singular values": {}, "reliance": {}, "deficits and tasks": {}})
    ['deficits and tasks', 'reliance', 'singular values']
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from typing import Any

Chart = list[Any]  # ["Multiline", [tag regexes]] or ["Margin", [[value, lower, upper], ...]]
Layout = dict[str, dict[str, Chart]]

CONFIG_TAG = "custom_scalars__config__"

DEFICITS_CATEGORY = "deficits and tasks"
RELIANCE_CATEGORY = "reliance"
MODES_CATEGORY = "mode strength"
SINGULAR_VALUES_CATEGORY = "singular values"

CATEGORY_ORDER = (DEFICITS_CATEGORY, RELIANCE_CATEGORY)
"""Categories that open the tab, in this order (any other category follows, then :data:`CLOSED`)."""

CLOSED = (MODES_CATEGORY, SINGULAR_VALUES_CATEGORY)
"""Categories written last and collapsed: one line per run and series, for who looks for them."""


def ordered(layout: Mapping[str, Any]) -> list[str]:
    """The categories of ``layout`` in reading order (:data:`CATEGORY_ORDER`, the rest as given, :data:`CLOSED`)."""
    first = [c for c in CATEGORY_ORDER if c in layout]
    last = [c for c in CLOSED if c in layout]
    return first + [c for c in layout if c not in first and c not in last] + last


def layout_proto(layout: Layout) -> Any:
    """``layout`` ({category: {title: chart}}) as TensorBoard's ``Layout`` proto, ordered, :data:`CLOSED` closed."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories = []
    for title in ordered(layout):
        charts = []
        for name, (kind, tags) in layout[title].items():
            if kind == "Margin":
                value, lower, upper = tags
                series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
                charts.append(layout_pb2.Chart(title=name, margin=layout_pb2.MarginChartContent(series=[series])))
            else:
                charts.append(layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=tags)))
        if charts:
            categories.append(layout_pb2.Category(title=title, chart=charts, closed=title in CLOSED))
    return layout_pb2.Layout(category=categories)


def proto_summary(layout: Any) -> Any:
    """A ``Summary`` holding the layout proto ``layout`` (what ``SummaryWriter.add_custom_scalars`` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    return Summary(value=[Summary.Value(tag=CONFIG_TAG, tensor=tensor, metadata=smd)])


def layout_summary(layout: Layout) -> Any:
    """``layout`` as the ``Summary`` a ``SummaryWriter`` writes (ordered, :data:`CLOSED` closed)."""
    return proto_summary(layout_proto(layout))


def read_layout(run_dir: str, files: str = "events.out.tfevents.*") -> Any | None:
    """The last layout proto written to the event ``files`` of ``run_dir`` (what TensorBoard shows), or ``None``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    found = None
    for path in sorted(glob.glob(os.path.join(run_dir, files))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == CONFIG_TAG:
                    found = value.tensor.string_val[0]
    return None if found is None else layout_pb2.Layout.FromString(found)


def sweep_layout(root: str, files: str = "events.out.tfevents.*") -> Any | None:
    """One layout proto merging the last layout of every run directory under ``root`` (in the runs' name order,
    charts deduplicated), categories ordered and :data:`CLOSED` closed; ``None`` if no run has one.
    ``files``: the event files read in each run directory (a sweep's runs keep their layout in
    their small session file)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories: dict[str, list[Any]] = {}
    for run_dir in sorted({os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", files))}):
        layout = read_layout(run_dir, files)
        for category in layout.category if layout is not None else []:
            charts = categories.setdefault(category.title, [])
            charts.extend(c for c in category.chart if c not in charts)
    if not categories:
        return None
    return layout_pb2.Layout(category=[layout_pb2.Category(title=t, chart=categories[t], closed=t in CLOSED)
                                       for t in ordered(categories)])
