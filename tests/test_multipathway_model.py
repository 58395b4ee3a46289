"""The bundled network and task: shapes, inits, protocols, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_trainer

import lightning_critical as lc
from lightning_critical.data import hierarchical_features
from lightning_critical.experiments.pathways import initial_mode_strengths
from lightning_critical.theory import pathway_dynamics


def test_default_tree_and_other_trees():
    y = hierarchical_features()
    assert y.shape == (15, 8)
    assert y[0].tolist() == [1.0] * 8 and y.sum().item() == 8 * 4  # every item has 4 features
    s = torch.linalg.svdvals(y)
    assert np.allclose(s.numpy(), [15**0.5, 7**0.5, 3**0.5, 3**0.5, 1, 1, 1, 1], atol=1e-5)
    assert hierarchical_features(branching=3, levels=2).shape == (13, 9)
    with pytest.raises(ValueError, match="branching=1"):
        hierarchical_features(branching=1)
    dm = lc.data.HierarchicalDataModule(branching=3, levels=2, feature_noise=0.1)
    u, s, v = dm.task_basis()
    assert torch.allclose(u @ torch.diag(s) @ v.T, dm.features, atol=1e-5)


def test_aligned_init_is_balanced_and_in_the_task_basis():
    dm = lc.data.HierarchicalDataModule()
    u, s, v = dm.task_basis()
    net = lc.models.MultiPathwayLinearNet(depth=3, width=20, task_basis=dm.task_basis(), seed=3)
    k0 = initial_mode_strengths(net, dm)
    assert np.allclose(k0[0], k0[1])  # noise shared by the pathways, as in the paper's code
    assert np.all(np.diff(k0[0]) <= 0) and np.allclose(k0.mean(), 0.01, rtol=0.2)
    omega = net.end_to_end_maps()["a"]
    assert torch.allclose(omega, u @ torch.diag(torch.tensor(k0[0], dtype=torch.float32)) @ v.T, atol=1e-6)
    layers = [m for m in net.pathways["a"].modules() if isinstance(m, torch.nn.Linear)]
    w1, w2 = layers[0].weight, layers[1].weight
    assert torch.allclose(w1 @ w1.T, w2.T @ w2, atol=1e-6)  # balanced layers
    independent = lc.models.MultiPathwayLinearNet(depth=3, width=20, task_basis=dm.task_basis(), independent_noise=True)
    k0 = initial_mode_strengths(independent, dm)
    assert not np.allclose(k0[0], k0[1])


def test_default_init_is_the_official_scripts_draw():
    """Kleinman, Achille & Soatto's multipath scripts: ``torch.manual_seed(seed)``, then one value
    ``(1 + 0.1 * N(0, 1)) * eps`` per hidden unit (100), sorted; mode a gets the a-th largest."""
    dm = lc.data.HierarchicalDataModule()
    for seed in (0, 7):
        net = lc.models.MultiPathwayLinearNet(depth=4, width=100, task_basis=dm.task_basis(), seed=seed)
        torch.manual_seed(seed)  # the scripts draw from the global generator
        official = torch.sort((torch.randn(100) * 0.1 + torch.ones(100)) * 0.01, descending=True).values[:8]
        k0 = initial_mode_strengths(net, dm)
        assert np.allclose(k0, official.double().numpy(), rtol=1e-5, atol=0), seed  # both pathways
        # The top 8 of 100 draws: every mode starts above init_scale.
        assert k0.min() > 0.01


def test_per_mode_draw_keeps_the_earlier_init():
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=4, width=100, task_basis=dm.task_basis(), init_noise_draw="per_mode")
    k0 = initial_mode_strengths(net, dm)
    earlier = [0.01154099591076374, 0.01083802524954081, 0.01056843157857656, 0.01040334720164537,
               0.00970657076686621, 0.00891547743231058, 0.00860140565782785, 0.00782120879739523]
    assert np.allclose(k0, earlier, rtol=1e-6, atol=0)


@pytest.mark.parametrize("draw", ["per_unit", "per_mode"])
def test_independent_noise_draws_once_per_pathway(draw):
    dm = lc.data.HierarchicalDataModule()
    kwargs = dict(depth=2, width=30, pathways=3, task_basis=dm.task_basis(), init_noise_draw=draw, seed=4)
    k0 = initial_mode_strengths(lc.models.MultiPathwayLinearNet(independent_noise=True, **kwargs), dm)
    shared = initial_mode_strengths(lc.models.MultiPathwayLinearNet(**kwargs), dm)
    assert not np.allclose(k0[0], k0[1]) and not np.allclose(k0[1], k0[2])
    assert np.allclose(shared[0], shared[1]) and np.allclose(shared[1], shared[2])
    assert np.all(np.diff(k0, axis=1) <= 0)  # sorted within each pathway


def test_three_pathways_follow_the_theory():
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=12, pathways=3, lr=0.02, task_basis=dm.task_basis(),
                                          independent_noise=True)
    assert list(net.pathways) == ["a", "b", "c"]
    k0 = initial_mode_strengths(net, dm)
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=50, metrics=("mode_strength",))
    make_trainer(max_epochs=300, callbacks=[lc.PathwayDeficit(["b", "c"], (0, 100)), monitor]).fit(net, dm)
    theory = pathway_dynamics(dm.task_basis()[1].numpy(), 2, k0, 0.02, 300, deficits={1: [(0, 100)], 2: [(0, 100)]})
    frame = monitor.to_frame().pivot_table(index="step", columns=["target", "index"], values="value")
    sgd = frame.to_numpy().reshape(len(frame), 3, 8)
    assert np.abs(sgd - theory[frame.index.to_numpy()]).max() < 1e-4


def test_gaussian_init_and_setup_from_the_datamodule():
    net = lc.models.MultiPathwayLinearNet(depth=2, width=50, init="gaussian", init_scale=1e-2)
    first = next(m for m in net.pathways["b"].modules() if isinstance(m, torch.nn.Linear))
    w = first.weight
    assert abs(w.std().item() - 0.1 / 8**0.5) < 0.01
    aligned = lc.models.MultiPathwayLinearNet(depth=2, width=10)
    assert aligned.task_basis() is None
    make_trainer(max_epochs=1).fit(aligned, lc.data.HierarchicalDataModule())
    assert aligned.task_basis() is not None and bool(aligned.initialized)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init="orthogonal"), "init='orthogonal'.*aligned"),
    (dict(nonlinearity="gelu"), "nonlinearity='gelu'.*tanh"),
    (dict(depth=0), "depth=0"),
    (dict(pathways=["a", "a"]), "distinct"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(init_noise_draw="per_layer"), "init_noise_draw='per_layer'.*per_unit.*per_mode"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lc.models.MultiPathwayLinearNet(**kwargs)


def test_aligned_init_without_a_basis_fails_before_training():
    from conftest import TwoBranchNet

    net = lc.models.MultiPathwayLinearNet(depth=2, width=10)
    with pytest.raises(ValueError, match="needs the task basis"):
        make_trainer(max_epochs=1).fit(net, train_dataloaders=TwoBranchNet().train_dataloader())
    with pytest.raises(ValueError, match="width=4 is smaller than the task's 8 modes"):
        lc.models.MultiPathwayLinearNet(depth=2, width=4, task_basis=lc.data.HierarchicalDataModule().task_basis())


def test_checkpoint_keeps_the_task_basis(tmp_path):
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=10, task_basis=dm.task_basis())
    trainer = make_trainer(max_epochs=1)
    trainer.fit(net, dm)
    trainer.save_checkpoint(tmp_path / "net.ckpt")
    loaded = lc.models.MultiPathwayLinearNet.load_from_checkpoint(tmp_path / "net.ckpt")
    basis = loaded.task_basis()
    assert basis is not None
    for a, b in zip(basis, dm.task_basis(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(loaded.end_to_end_maps()["a"], net.end_to_end_maps()["a"])
