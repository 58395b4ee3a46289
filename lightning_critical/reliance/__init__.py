"""Reliance of a network on its input sources or pathways (Kleinman, Achille & Soatto, CVPR 2023).

"How much does the trained network still use source ``b``?" is the question critical-period
studies of multi-source (multisensory, multi-view, multi-pathway) networks ask. Three measures,
each a small pure function (plain torch, no Lightning; formulas in their modules and in
docs/science.md):

* :func:`relative_source_variance` (:mod:`.variance`): per unit of a chosen layer,
  ``RSV = (SV_a - SV_b) / (SV_a + SV_b)``; :func:`rsv_summary`, :func:`rsv_histogram`;
* :func:`ablation_reliance` (:mod:`.ablation`): a metric with one source replaced (zeros,
  noise, another example's) relative to intact;
* :func:`fisher_share` (:mod:`.fisher_share`): each pathway's share of the Fisher trace.

Where a source is (:mod:`.sources`): a pathway's input (:class:`PathwaySources`, the
``pathways`` protocol), a ``forward`` argument (:class:`ArgumentSources`) or a user split
(:class:`SplitSources`). Over training: :class:`lightning_critical.RelianceMonitor`; as sweep
final metrics: :func:`lightning_critical.sweep.metrics.ablation_reliance` and friends.

Example::

    >>> import torch, lightning_critical as lc
    >>> net = lc.models.TwoViewNet(hidden=16, seed=0)
    >>> args = (torch.rand(32, 1, 8, 4), torch.rand(32, 1, 8, 4))
    >>> rsv = lc.reliance.relative_source_variance(net, args, lc.reliance.as_sources(None, net), "a", "b",
    ...                                            layer="fusion")
    >>> tuple(rsv.shape), bool((rsv.nan_to_num().abs() <= 1).all())   # NaN: a unit that never fires
    ((16,), True)
"""

from lightning_critical.reliance.ablation import Ablation, ablation_reliance, metric_value, reliance_value
from lightning_critical.reliance.examples import collect
from lightning_critical.reliance.fisher_share import fisher_share, pathway_fisher_traces
from lightning_critical.reliance.sources import (
    ArgumentSources,
    PathwaySources,
    Sources,
    SplitSources,
    as_sources,
    replacement,
)
from lightning_critical.reliance.summary import MEASURES, Reliance, reliance_metrics
from lightning_critical.reliance.variance import relative_source_variance, rsv_histogram, rsv_summary, source_variances

__all__ = [
    "MEASURES", "Ablation", "ArgumentSources", "PathwaySources", "Reliance", "Sources", "SplitSources",
    "ablation_reliance", "as_sources", "collect", "fisher_share", "metric_value", "pathway_fisher_traces",
    "relative_source_variance", "reliance_metrics", "reliance_value", "replacement", "rsv_histogram", "rsv_summary",
    "source_variances",
]
