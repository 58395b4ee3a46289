"""Arora et al.'s singular-value/vector dynamics vs finite differences, closed forms and SGD."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.theory import switch_theory
from lightning_critical.theory.factorization import (
    end_to_end_velocity,
    integrate_factorization,
    singular_value_velocity,
    singular_vector_velocity,
)

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_singular_value_and_vector_equations_match_the_end_to_end_flow(depth):
    rng = np.random.default_rng(depth)
    w, grad = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    w_dot = end_to_end_velocity(w, grad, depth)
    eps = 1e-7
    u0, s0, vh0 = np.linalg.svd(w)
    u1, s1, vh1 = np.linalg.svd(w + eps * w_dot)
    sign = np.sign(np.sum(u0 * u1, axis=0))  # fix the SVD's sign freedom
    u1, vh1 = u1 * sign, vh1 * sign[:, None]
    np.testing.assert_allclose((s1 - s0) / eps, singular_value_velocity(w, grad, depth), rtol=1e-4, atol=1e-4)
    du, dv = singular_vector_velocity(w, grad, depth)
    scale = max(np.abs(du).max(), 1.0)
    np.testing.assert_allclose((u1 - u0) / eps, du, atol=1e-4 * scale)
    np.testing.assert_allclose((vh1.T - vh0.T) / eps, dv, atol=1e-4 * scale)


def test_end_to_end_velocity_is_the_factor_gradient_flow():
    # balanced factors W_1 = W_2 = W_3 = A (symmetric): dW/dt = sum_j dW_j/dt products
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = q @ np.diag(rng.uniform(0.5, 1.5, 5)) @ q.T
    g = rng.standard_normal((5, 5))
    grads = [g @ (a @ a).T, a.T @ g @ a.T, (a @ a).T @ g]  # dL/dW_3, dL/dW_2, dL/dW_1
    w_dot = -(grads[0] @ a @ a + a @ grads[1] @ a + a @ a @ grads[2])
    np.testing.assert_allclose(end_to_end_velocity(a @ a @ a, g, 3), w_dot, atol=1e-10)


def test_depth_one_flow_matches_the_exponential_solution():
    rng = np.random.default_rng(1)
    truth = rng.standard_normal((5, 5))
    weight = (rng.random((5, 5)) < 0.5) / 12.0
    w0 = 0.01 * rng.standard_normal((5, 5))
    flow = integrate_factorization(w0, [(400, weight, weight * truth)], depth=1, lr=0.5, stride=4, keep_maps=True)
    t = 0.5 * 400
    exact = np.where(weight > 0, truth + (w0 - truth) * np.exp(-weight * t), w0)
    np.testing.assert_allclose(flow.final, exact, atol=1e-7)
    assert flow.per_step().shape == (401, 5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth=0"):
        integrate_factorization(np.eye(2), [(1, np.eye(2), np.eye(2))], depth=0, lr=0.1)
    with pytest.raises(ValueError, match="segment 0"):
        integrate_factorization(np.eye(2), [(1, np.eye(3), np.eye(3))], depth=2, lr=0.1)


def test_one_ground_truth_per_segment():
    """Fewer ground truths than segments used to stop the integration silently after them."""
    one = (5, np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="ground_truths has 1 entries; need one per segment \\(2\\)"):
        integrate_factorization(np.zeros((2, 2)), [one, one], depth=1, lr=0.1, stride=1, ground_truths=[np.eye(2)])
    flow = integrate_factorization(np.zeros((2, 2)), [one, one], depth=1, lr=0.1, stride=1,
                                   ground_truths=[np.eye(2), np.eye(2)])
    assert flow.steps[-1] == 10 and np.isfinite(flow.test_loss).all()


def test_sgd_singular_values_follow_theory_through_a_task_switch():
    """A real Trainer run (TaskSwitch + SpectralMonitor carrying the theory) vs the flow."""
    size, switch, cont = 12, 600, 900
    dm = MatrixCompletionDataModule(size=size, n_observed=80, tasks={"pretrain": 3, "target": 1}, seed=0)
    model = DeepMatrixFactorization(size=size, depth=3, init="orthogonal", init_scale=0.05, lr=0.3, seed=0)
    flow = switch_theory(model, dm, [("pretrain", switch), ("target", cont)], stride=2, top_k=3)
    theory = flow.per_step(switch + cont)
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=50, metrics=("singular_values",),
                                 theory={"singular_values": {"end_to_end": theory}},
                                 histograms=False, history_file=None)
    trainer = pl.Trainer(max_epochs=switch + cont, callbacks=[lc.TaskSwitch({switch: "target"}), monitor],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    df = monitor.to_frame()
    df = df[(df.metric == "singular_values") & (df.target == "end_to_end") & (df["index"] < 2)]
    sgd = df.pivot(index="step", columns="index", values="value")
    predicted = theory[sgd.index.to_numpy(), :2]
    assert len(sgd) >= 30
    np.testing.assert_allclose(sgd.to_numpy(), predicted, rtol=0.05)
    # and the switch really moved them: the target is rank 1, so sigma_2 collapses afterwards
    assert sgd.loc[switch, 1] > 2.5 and sgd.loc[switch + cont, 1] < 0.8
    assert flow.test_loss[-1] < flow.test_loss[len(flow.test_loss) // 3]
