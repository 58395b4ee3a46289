from typing import Any

import numpy as np
import pytest

from lightning_critical.theory import deprived_share, depth2_mode_strength, pathway_dynamics, pathway_flow, pathway_ode


def test_converges_to_the_singular_values_and_splits_evenly_without_deficit():
    s = [3.0, 1.5, 0.5]
    k = pathway_dynamics(s, depth=3, k0=0.01, lr=0.02, steps=3000)
    assert np.allclose(k[-1].sum(axis=0), s, rtol=1e-6)
    assert np.allclose(deprived_share(k[-1], 1), 0.5)


def test_depth2_closed_form_matches_small_step_dynamics():
    # One pathway of depth 2: tau du/dt = 2 u (s - u), Saxe et al. (2014).
    s, u0, lr = 2.0, 1e-3, 1e-3
    k = pathway_dynamics([s], depth=2, k0=u0, lr=lr, steps=4000, n_pathways=1)[:, 0, 0]
    t = np.arange(4001)
    closed = depth2_mode_strength(t, s, u0, lr=lr)
    assert np.abs(k - closed).max() < 5e-3 * s


def test_ode_matches_discrete_map_for_small_steps():
    s, lr, steps = [2.0, 1.0], 1e-3, 6000
    discrete = pathway_dynamics(s, 3, 0.05, lr, steps, deficits={1: [(0, 1500)]})
    times = np.arange(0, steps + 1, 500) * lr
    continuous = pathway_ode(s, 3, 0.05, times, deficits={1: [(0, 1500 * lr)]})
    assert np.abs(continuous - discrete[::500]).max() < 1e-2


def test_freeze_counts_the_frozen_pathway_and_silence_does_not():
    s = [1.0]
    frozen = pathway_dynamics(s, 2, 0.4, 0.1, 1, deficits={1: [(0, 1)]}, mode="freeze")
    silent = pathway_dynamics(s, 2, 0.4, 0.1, 1, deficits={1: [(0, 1)]}, mode="silence")
    q = 0.4**0.5
    assert frozen[1, 0, 0] == pytest.approx((q + 0.1 * q * (1.0 - 0.8)) ** 2)
    assert silent[1, 0, 0] == pytest.approx((q + 0.1 * q * (1.0 - 0.4)) ** 2)
    assert frozen[1, 1, 0] == silent[1, 1, 0] == pytest.approx(0.4)


def test_flow_field_is_the_continuous_time_derivative():
    du, dv = pathway_flow(np.array([0.5]), np.array([0.25]), s=2.0, depth=4)
    assert du[0] == pytest.approx(4 * 0.5**1.5 * 1.25)
    assert dv[0] == pytest.approx(4 * 0.25**1.5 * 1.25)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="gate"), "mode='gate'"),
    (dict(depth=0), "depth=0"),
    (dict(deficits={3: [(0, 1)]}), r"deficit pathway index=3 must be an integer \[0, 1\]"),
    (dict(deficits={0: [(5, 2)]}), "0 <= start < end"),
    (dict(k0=-1.0), "k0 must be positive"),
])
def test_bad_input(kwargs, match):
    args: dict[str, Any] = dict(singular_values=[1.0], depth=2, k0=0.1, lr=0.1, steps=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pathway_dynamics(**args)


def test_a_single_mode_lesion_defaults_to_silence():
    lesion = pathway_dynamics([3.0, 1.0], 2, 0.01, 0.05, 3000, deficits={(1, 0): [(0, None)]})
    explicit = pathway_dynamics([3.0, 1.0], 2, 0.01, 0.05, 3000, deficits={(1, 0): [(0, None, "silence")]})
    assert np.array_equal(lesion, explicit)
    assert lesion[-1, 0, 0] == pytest.approx(3.0, rel=1e-6)  # the lesioned K does not count in the sum


def test_depth2_closed_form_stays_finite_after_convergence():
    values = depth2_mode_strength(np.array([10.0, 100.0, 1e4]), s=3.0, u0=0.01)
    assert np.allclose(values, 3.0)
