"""The vectorized runner's gradients: which parameters get one (and an update) and what clipping sees, as Lightning.

Each test trains one sweep with the default runner and with the vectorized one and compares
the final metrics and saved weights bitwise.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vectorized_nets import DigitsMLP

import lightning_critical as lc
from lightning_critical.sweep.runners.vectorized.reach import block

METRICS = ["val_loss", "train_loss"]


class Net(DigitsMLP):
    """The digits MLP; ``opt`` picks the optimizer (all with weight decay: a zero gradient moves)."""

    def __init__(self, opt: str = "sgd") -> None:
        super().__init__()
        self.opt = opt

    def configure_optimizers(self) -> Any:
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-2, amsgrad=True)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)


class Frozen(Net):
    """``l1.weight`` a fixed random projection (``requires_grad=False``), for every member or only some."""

    def __init__(self, opt: str = "sgd", frozen: bool = True) -> None:
        super().__init__(opt)
        self.l1.weight.requires_grad_(not frozen)


class Unused(Net):
    """A head the step never calls: Lightning leaves its gradient ``None``."""

    def __init__(self, opt: str = "sgd") -> None:
        super().__init__(opt)
        self.aux = nn.Linear(16, 3)


class HeadOnly(Net):
    """An optimizer over the head only: ``l1`` is never updated; Lightning clips over the head's gradients."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.l2.parameters(), lr=0.5)


class Tied(Net):
    """``l3`` shares ``l1``'s weight."""

    def __init__(self, opt: str = "sgd") -> None:
        super().__init__(opt)
        self.l3 = nn.Linear(64, 16)
        self.l3.weight = self.l1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.l2(F.relu(self.l1(x)) + F.relu(self.l3(x)))


def assert_bitwise(tmp_path: Any, model: Any, deficit: Any = None, trainer: dict[str, Any] | None = None,
                   **kw: Any) -> None:
    tables, weights = [], []
    for runner in (None, "vectorized"):
        out = os.path.join(tmp_path, str(runner))
        table = lc.sweep.run(
            model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
            deficit=deficit or lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1], epochs_after=1),
            seeds=[0, 1], metrics=METRICS, runner=runner, out=out, backend="serial", tensorboard=False, plot=False,
            save_model=True, progress=False, errors="raise", trainer=trainer or {}, **kw)
        tables.append(table.set_index("label").sort_index())
        folder = os.path.join(out, "models")
        weights.append({f: torch.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder))})
    default, vectorized = tables
    for metric in METRICS:
        assert default[metric].tolist() == vectorized[metric].tolist(), metric
    assert list(weights[0]) == list(weights[1]) and len(weights[0]) >= 4
    for name, state in weights[0].items():
        assert list(state) == list(weights[1][name])
        for key, value in state.items():
            assert torch.equal(value, weights[1][name][key]), (name, key)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_parameter_with_requires_grad_false_is_not_trained(tmp_path: Any, opt: str) -> None:
    assert_bitwise(tmp_path, functools.partial(Frozen, opt))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_members_that_freeze_a_parameter_others_train_share_a_job(tmp_path: Any, opt: str) -> None:
    assert_bitwise(tmp_path, functools.partial(Frozen, opt), params={"frozen": [True, False]})


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_parameter_the_step_never_reaches_gets_no_update(tmp_path: Any, opt: str) -> None:
    assert_bitwise(tmp_path, functools.partial(Unused, opt))


def test_clipping_sees_the_optimizers_parameters_only(tmp_path: Any) -> None:
    assert_bitwise(tmp_path, HeadOnly, trainer={"gradient_clip_val": 0.05})  # the norm over the head's gradients


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_tied_weights_stay_tied(tmp_path: Any, opt: str) -> None:
    assert_bitwise(tmp_path, functools.partial(Tied, opt), trainer={"gradient_clip_val": 0.05})


def test_tied_weights_under_a_freeze_deficit(tmp_path: Any) -> None:
    assert_bitwise(tmp_path, Tied, deficit=lc.PathwayDeficit("l3", (0, 1), mode="freeze"))


@pytest.mark.filterwarnings("ignore:PathwayDeficit")  # its weight-decay warning (the point here)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_noise_cuts_what_feeds_its_pathway_off_the_gradients(tmp_path: Any, opt: str) -> None:
    # noise replaces l2's input while the window is open: l1 then gets no gradient (and no weight decay)
    assert_bitwise(tmp_path, functools.partial(Net, opt), deficit=lc.PathwayDeficit("l2", (0, 1), mode="noise"),
                   trainer={"gradient_clip_val": 0.05})


def test_members_whose_templates_reach_less_get_no_gradient_there() -> None:
    # one template per swept combination: "a" members' step never reaches "head", "b" members' does
    nets = [nn.ModuleDict({"body": nn.Linear(2, 2), "head": nn.Linear(2, 2)}) for _ in range(2)]
    members = [SimpleNamespace(pathways=[], named=list(n.named_parameters()), blocked={}, kind=k)
               for n, k in zip(nets, "ab", strict=True)]
    reaches = {"a": {"body.weight", "body.bias"}, "b": {"body.weight", "body.bias", "head.weight", "head.bias"}}
    probes: list[str] = []

    def reached_under(member: Any, modules: frozenset[str]) -> set[str]:
        probes.append(member.kind)
        return reaches[member.kind]

    trained = {n for n, _ in members[0].named} - {"body.bias"}  # requires_grad=False in every member
    found = block(members, trained, reached_under, kind=lambda m: m.kind)
    assert found == {"body.weight", "head.weight", "head.bias"}
    head = dict(members[0].named)
    assert members[0].blocked == {frozenset(): [head["head.bias"], head["head.weight"]]}
    assert members[1].blocked == {} and probes == ["a", "b"]
