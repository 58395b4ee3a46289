"""Confusing SpectralMonitor arguments fail at construction with a ValueError naming the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lightning_critical as lc
from lightning_critical.spectral import METRICS

EYE = torch.eye(4)

# (keyword arguments, text the message must contain besides "<argument>=")
BAD = {
    "exclude-int": (dict(exclude=5), "give a name / glob"),
    "exclude-empty-name": (dict(exclude=["ok*", ""]), "give a name / glob"),
    "targets-empty": (dict(targets=[]), "Groups: ('auto', 'maps', 'weights')"),
    "targets-int": (dict(targets=[3]), "Groups: ('auto', 'maps', 'weights')"),
    "metrics-empty": (dict(metrics=[]), "is empty: give at least one metric"),
    "metrics-unknown": (
        dict(metrics=("singular_values", "rank")),
        f"metric 'rank' is not known; choose from {METRICS}",
    ),
    "metrics-repeated": (dict(metrics=("stable_rank", "stable_rank")), "listed more than once"),
    "metrics-int": (dict(metrics=5), "give metric names"),
    "theory-unknown-metric": (dict(theory={"rank": {"a": np.zeros((3, 1))}}), "metric 'rank' is not known"),
    "dtype-string": (dict(dtype="float32"), "choose one of (torch.float32, torch.float64) or None"),
    "dtype-half": (dict(dtype=torch.float16), "choose one of (torch.float32, torch.float64) or None"),
    "method-unknown": (dict(method="fast"), "choose one of ('auto', 'svd', 'gram', 'gram32')"),
    "every_n_steps-zero": (dict(every_n_steps=0), "must be an integer >= 1"),
    "every_n_steps-float": (dict(every_n_steps=2.5), "must be an integer >= 1, not float"),
    "every_n_steps-string": (dict(every_n_steps="10"), "not str"),
    "top_k-zero": (dict(top_k=0), "must be an integer >= 1 or None"),
    "subspace_k-bool": (dict(subspace_k=True), "not bool"),
    "log_top_k-negative": (dict(log_top_k=-1), "must be an integer >= 0"),
    "top_k-with-full-spectrum-metric": (dict(top_k=3, metrics=("effective_rank",)), "need all of them"),
    "task_basis-short": (dict(task_basis=(EYE, torch.ones(4))), "give (U, S, V) tensors"),
    "task_basis-mismatched": (dict(task_basis=(EYE, torch.ones(4), EYE[:, :2])), "U (out x r), S (r,) and V (in x r)"),
    "history_file-int": (dict(history_file=123), "give a file name"),
    "history_file-empty": (dict(history_file="  "), "give a file name"),
    "history_file-parent": (dict(history_file="../../elsewhere.csv"), "relative path inside the run's log directory"),
    "history_file-inner-parent": (dict(history_file="sub/../../x.csv"), "relative path inside the run's log directory"),
    "history_file-absolute": (dict(history_file="/tmp/history.csv"), "relative path inside the run's log directory"),
    "history_file-metrics-csv": (dict(history_file="metrics.csv"), "belongs to Lightning"),
    "history_file-hparams": (dict(history_file="sub/hparams.yaml"), "belongs to Lightning"),
    "history_file-events": (dict(history_file="events.out.tfevents.1.host"), "belongs to Lightning or TensorBoard"),
}


@pytest.mark.parametrize("kwargs, text", list(BAD.values()), ids=list(BAD))
def test_bad_argument_is_refused_at_construction(kwargs, text):
    argument = "top_k" if "top_k" in kwargs else next(iter(kwargs))
    with pytest.raises(ValueError) as caught:
        lc.SpectralMonitor(**kwargs)
    assert type(caught.value) is ValueError
    message = str(caught.value)
    assert f"{argument}=" in message, message
    assert text in message, message


def test_numpy_integers_and_single_names_are_accepted_as_what_they_stand_for():
    monitor = lc.SpectralMonitor(
        every_n_steps=np.int64(10), top_k=np.int32(3), subspace_k=np.int64(2), log_top_k=np.int16(0),
        metrics="spectral_norm", targets="pathways.*", exclude="*.0.weight",
    )
    assert type(monitor.every_n_steps) is int and monitor.every_n_steps == 10
    assert type(monitor.top_k) is int and monitor.metrics == ("spectral_norm",)
    assert monitor.patterns == ["pathways.*"] and monitor.exclude == ["*.0.weight"]
    assert "'every_n_steps': 10," in monitor.state_key  # not np.int64(10)


def test_task_basis_that_does_not_fit_the_maps_is_refused_before_training(tmp_path):
    from conftest import make_trainer

    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=12, task_basis=dm.task_basis())
    before = net.get_parameter("pathways.a.0.weight").detach().clone()
    basis = (torch.eye(15)[:, :3], torch.ones(3), torch.eye(7)[:, :3])
    with pytest.raises(ValueError, match=re.escape("V of shape (7, 3) does not fit the end-to-end map 'a'")):
        make_trainer(tmp_path, max_epochs=1, callbacks=[lc.SpectralMonitor(task_basis=basis)]).fit(net, dm)
    assert torch.equal(net.get_parameter("pathways.a.0.weight"), before)
