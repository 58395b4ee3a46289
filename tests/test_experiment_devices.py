"""The bundled experiments train on the user's accelerator; on the CPU nothing changes.

The GPU tests are skipped without CUDA (CI has none): run them on a machine that has one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import lightning_critical as lc
from lightning_critical.experiments import matrix_completion_sweep, pathway_deficit_run
from lightning_critical.experiments.pathways import initial_mode_strengths

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL_RUN: dict[str, Any] = dict(window=(0, 30), depth=3, width=16, max_epochs=80, every_n_steps=20)
SMALL_SWEEP: dict[str, Any] = dict(
    depth=2, switch_epochs=[0, 100], continue_epochs=100, size=10, n_observed=40, pretrain_rank=3, target_rank=1, lr=0.5
)


@pytest.mark.parametrize("experiment", ["pathways", "matrix_completion"])
def test_auto_leaves_the_choice_to_lightning_and_its_environment(experiment, monkeypatch):
    # Lightning reads PL_TRAINER_ACCELERATOR only for arguments not given: a hard-coded
    # accelerator ignored it, "auto" must not pass one.
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "not-a-device")
    with pytest.raises(ValueError, match="not-a-device"):
        if experiment == "pathways":
            pathway_deficit_run(**SMALL_RUN)
        else:
            matrix_completion_sweep(**SMALL_SWEEP)


def test_cpu_results_are_bitwise_those_of_the_default():
    default = pathway_deficit_run(**SMALL_RUN)
    cpu = pathway_deficit_run(accelerator="cpu", **SMALL_RUN)
    pd.testing.assert_frame_equal(default.frame, cpu.frame, check_exact=True)
    a = matrix_completion_sweep(**SMALL_SWEEP)
    b = matrix_completion_sweep(accelerator="cpu", **SMALL_SWEEP)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@needs_cuda
def test_pathway_run_on_the_gpu_follows_the_theory():
    cpu = pathway_deficit_run(accelerator="cpu", **SMALL_RUN)
    gpu = pathway_deficit_run(accelerator="gpu", **SMALL_RUN)
    s_max = gpu.singular_values.max()
    assert (gpu.frame.measured - gpu.frame.theory).abs().max() < 1e-3 * s_max
    assert gpu.theory is not None and cpu.theory is not None
    assert np.array_equal(gpu.theory, cpu.theory)  # the theory is computed on the CPU in float64 either way
    assert np.abs(gpu.frame.measured.to_numpy() - cpu.frame.measured.to_numpy()).max() < 1e-4 * s_max


@needs_cuda
def test_initial_mode_strengths_of_a_model_on_the_gpu():
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=12, task_basis=dm.task_basis())
    on_cpu = initial_mode_strengths(net, dm)
    on_gpu = initial_mode_strengths(net.cuda(), dm)
    assert on_gpu.dtype == np.float64 and np.allclose(on_gpu, on_cpu, rtol=1e-5)


@needs_cuda
def test_matrix_completion_sweep_on_the_gpu_matches_the_cpu():
    cpu = matrix_completion_sweep(accelerator="cpu", **SMALL_SWEEP)
    gpu = matrix_completion_sweep(accelerator="gpu", **SMALL_SWEEP)
    assert list(gpu.switch_epoch) == list(cpu.switch_epoch)
    assert np.allclose(gpu.test_loss, cpu.test_loss, rtol=1e-3, atol=1e-6)
