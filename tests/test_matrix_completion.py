"""MatrixCompletionDataModule and DeepMatrixFactorization: the recipe, losses and protocols."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import numpy as np
import pytest
import torch

from lightning_critical._namespace import pl
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
QUIET: dict[str, Any] = dict(
    logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
)


def test_ground_truth_recipe_and_shared_positions():
    dm = MatrixCompletionDataModule(
        size=30, n_observed=200, seed=3,
        tasks={"pretrain": 6, "target": {"rank": 2}, "few": {"subset_of": "target", "n_observed": 50}},
    )
    assert dm.tasks == ("pretrain", "target", "few") and dm.task == "pretrain"
    for name, rank in (("pretrain", 6), ("target", 2)):
        w = dm.ground_truth(name)
        assert math.isclose(float(w.norm()), 30.0, rel_tol=1e-5)  # ||W*||_F = size: RMS entry 1
        assert int(torch.linalg.matrix_rank(w.double(), atol=1e-3)) == rank == dm.rank(name)
    r1, c1, v1 = dm.observations("pretrain")
    r2, c2, v2 = dm.observations("target")
    assert torch.equal(r1, r2) and torch.equal(c1, c2) and not torch.allclose(v1, v2)
    assert len(set(zip(r1.tolist(), c1.tolist(), strict=True))) == 200  # without replacement
    r3, c3, v3 = dm.observations("few")
    assert torch.equal(r3, r2[:50]) and torch.equal(v3, v2[:50]) and dm.rank("few") == 2
    assert torch.equal(dm.ground_truth("few"), dm.ground_truth("target"))


def test_task_basis_is_the_active_task():
    dm = MatrixCompletionDataModule(size=20, n_observed=100, tasks={"a": 4, "b": 2})
    dm.set_task("b")
    u, s, v = dm.task_basis()
    assert u.shape == (20, 2) and s.shape == (2,) and v.shape == (20, 2)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, dm.ground_truth("b"), atol=1e-4, rtol=1e-4)


def test_task_basis_is_cached_per_task(monkeypatch):
    dm = MatrixCompletionDataModule(size=12, n_observed=40, tasks={"a": 3, "b": 2})
    calls: list[int] = []
    svd = torch.linalg.svd
    def counting_svd(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return svd(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", counting_svd)
    first = dm.task_basis()
    first[0].zero_()  # callers get copies: modifying one does not poison the cache
    again = dm.task_basis()
    assert len(calls) == 1 and again[0].abs().sum() > 0
    dm.set_task("b")
    u, s, v = dm.task_basis()
    dm.task_basis()
    assert len(calls) == 2 and u.shape == (12, 2)
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, dm.ground_truth("b"), atol=1e-4, rtol=1e-4)
    dm.set_task("a")
    torch.testing.assert_close(dm.task_basis()[1], again[1])
    assert len(calls) == 2


def test_same_seed_same_tasks_other_seed_differs():
    a, b, c = (MatrixCompletionDataModule(size=10, n_observed=30, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.ground_truth("target"), b.ground_truth("target"))
    assert not torch.equal(a.ground_truth("target"), c.ground_truth("target"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0), r"size=0"),
        (dict(n_observed=101), r"n_observed=101 must be an integer \[1, 100\]"),
        (dict(tasks={"a": 11}), r"task 'a': rank=11 must be an integer \[1, 10\]"),
        (dict(tasks={"a": 2, "b": {"subset_of": "c", "n_observed": 3}}), r"subset_of='c' is not another task"),
        (dict(tasks={"a": 2, "b": {"subset_of": "a", "n_observed": 99}}), r"n_observed=99"),
        (dict(tasks={"a": "x"}), r"task 'a': spec 'x'"),
        (
            dict(tasks={"a": {"subset_of": "b", "n_observed": 5}, "b": {"subset_of": "a", "n_observed": 5}}),
            r"task 'a': circular subset_of chain a -> b -> a; a subset_of chain must end at a task with a rank",
        ),
        (
            dict(tasks={"r": 2, "a": {"subset_of": "b", "n_observed": 5}, "b": {"subset_of": "c", "n_observed": 5},
                        "c": {"subset_of": "a", "n_observed": 5}}),
            r"circular subset_of chain a -> b -> c -> a",
        ),
    ],
)
def test_datamodule_validation(kwargs, message):
    kwargs = {"size": 10, "n_observed": 30, **kwargs}
    with pytest.raises(ValueError, match=message):
        MatrixCompletionDataModule(**kwargs)


def test_set_task_unknown_name():
    dm = MatrixCompletionDataModule(size=10, n_observed=30)
    with pytest.raises(ValueError, match=r"task='nope' is not valid; choose one of \('pretrain', 'target'\)"):
        dm.set_task("nope")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_end_to_end_map_and_gaussian_init_scale(depth):
    model = DeepMatrixFactorization(size=100, depth=depth, init_scale=1e-3, seed=0)
    w = model.end_to_end_maps()["end_to_end"]
    expected = model.factors[0]
    for f in list(model.factors)[1:]:
        expected = f @ expected
    torch.testing.assert_close(w, expected)
    assert len(model.factors) == depth
    # Arora et al.'s recipe: ||W||_F is about init_scale * sqrt(n) at init
    assert 0.8 <= float(w.detach().norm()) / (1e-3 * 10) <= 1.2


def test_orthogonal_init_is_balanced_and_identity_init():
    model = DeepMatrixFactorization(size=12, depth=3, init="orthogonal", init_scale=1e-2, seed=0)
    f = [p.detach().double() for p in model.factors]
    for a, b in itertools.pairwise(f):
        torch.testing.assert_close(b.T @ b, a @ a.T)
    model = DeepMatrixFactorization(size=5, depth=2, init="identity", init_scale=1e-2)
    torch.testing.assert_close(model.end_to_end().detach(), 1e-2 * torch.eye(5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=0), r"depth=0 must be an integer >= 1"),
        (dict(init="xavier"), r"init='xavier' is not valid; choose one of \('gaussian', 'orthogonal', 'identity'\)"),
        (dict(init_scale=0.0), r"init_scale=0.0 is not valid: it must be a finite number > 0"),
        (dict(lr=-1.0), r"lr=-1.0 is not valid: it must be a finite number > 0"),
    ],
)
def test_model_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepMatrixFactorization(size=4, **kwargs)


class LossCheck(pl.Callback):
    """Compare the logged losses with the formulas, computed independently from the weights."""

    def __init__(self, dm):
        self.dm, self.checked = dm, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            self.w = pl_module.end_to_end().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows, cols, values = self.dm.observations()
        train = 0.5 * float(((self.w[rows, cols] - values) ** 2).mean())
        test = float(((self.w - self.dm.ground_truth()) ** 2).mean())
        assert math.isclose(float(outputs["loss"]), train, rel_tol=1e-5)
        assert math.isclose(float(trainer.callback_metrics["test_loss"]), test, rel_tol=1e-5)
        self.checked += 1


def test_losses_match_the_formulas_and_loss_decreases():
    dm = MatrixCompletionDataModule(size=10, n_observed=60, tasks={"pretrain": 2, "target": 1})
    check = LossCheck(dm)
    model = DeepMatrixFactorization(size=10, depth=2, init_scale=0.1, lr=5.0, seed=0)
    pl.Trainer(max_epochs=300, callbacks=[check], **QUIET).fit(model, datamodule=dm)
    assert check.checked == 300
    rows, cols, values = dm.observations()
    final = 0.5 * float(((model.end_to_end().detach()[rows, cols] - values) ** 2).mean())
    assert final < 1e-3  # fits the observations


def test_depth_one_leaves_unobserved_entries_untouched():
    # gradient descent on W only touches observed entries: the reason depth 1 has no critical period
    dm = MatrixCompletionDataModule(size=10, n_observed=30)
    model = DeepMatrixFactorization(size=10, depth=1, init_scale=0.1, seed=0)
    w0 = model.end_to_end().detach().clone()
    pl.Trainer(max_epochs=20, **QUIET).fit(model, datamodule=dm)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    rows, cols, _ = dm.observations()
    mask[rows, cols] = True
    w = model.end_to_end().detach()
    assert torch.equal(w[~mask], w0[~mask]) and not torch.equal(w[mask], w0[mask])
    assert np.isfinite(model.test_loss(dm.ground_truth()))
