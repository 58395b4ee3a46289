"""PathwayDeficit / ModeDeficit on real Trainer runs."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import lightning_critical as lc
from conftest import TwoBranchNet, all_hooks, make_trainer


class ParamRecorder(pl.Callback):
    """Snapshots of the model's parameters before every training batch."""

    def __init__(self) -> None:
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.snapshots[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.named_parameters()}

    def on_train_end(self, trainer, pl_module):
        self.on_train_batch_start(trainer, pl_module, None, 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_freeze_leaves_parameters_bitwise_unchanged(optimizer):
    model = TwoBranchNet(optimizer=optimizer)
    rec = ParamRecorder()
    # 4 batches per epoch: the window covers optimizer steps 5, 6, 7, 8, 9.
    trainer = make_trainer(max_epochs=4, callbacks=[lc.PathwayDeficit("right", lc.Window(5, 10, "step")), rec])
    trainer.fit(model)
    snaps = rec.snapshots
    right = [k for k in snaps[0] if k.startswith("right.")]
    for step in range(5, 11):
        for k in right:
            assert torch.equal(snaps[step][k], snaps[5][k]), (optimizer, step, k)
    # The other pathway and the head keep learning, and the frozen one learns before and after.
    assert not torch.equal(snaps[10]["left.0.weight"], snaps[5]["left.0.weight"])
    assert not torch.equal(snaps[5]["right.0.weight"], snaps[4]["right.0.weight"])
    assert not torch.equal(snaps[11]["right.0.weight"], snaps[10]["right.0.weight"])


def test_frozen_pathway_still_feeds_the_output():
    model = TwoBranchNet()
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            x = batch[0]
            seen[trainer.global_step] = (pl_module(x) - pl_module.head(pl_module.left(x))).abs().max().item()

    trainer = make_trainer(max_steps=3, callbacks=[lc.PathwayDeficit("right", (0, 2), mode="freeze", unit="step"), Probe()])
    trainer.fit(model)
    assert seen[0] > 1e-4 and seen[1] > 1e-4


def test_silence_zeroes_the_output_only_inside_the_window():
    model = TwoBranchNet()
    outputs = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            outputs[trainer.global_step] = pl_module.right(batch[0]).abs().max().item()

    deficit = lc.PathwayDeficit("right", lc.Window(2, 4, "step"), mode="silence")
    trainer = make_trainer(max_steps=6, callbacks=[deficit, Probe()])
    trainer.fit(model)
    assert outputs[2] == 0.0 and outputs[3] == 0.0
    assert outputs[1] > 0 and outputs[4] > 0
    assert all_hooks(model) == 0


def test_noise_replaces_the_pathway_input():
    model = TwoBranchNet()
    inputs = {}

    def capture(module, args, output):
        inputs.setdefault(module.step, args[0].clone())

    model.right[0].register_forward_hook(capture)
    model.right[0].step = -1

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pl_module.right[0].step = trainer.global_step
            inputs.setdefault(f"x{trainer.global_step}", batch[0].clone())

    trainer = make_trainer(max_steps=2, callbacks=[lc.PathwayDeficit("right", (0, 1), mode="noise", noise_std=5.0, unit="step"), Probe()])
    trainer.fit(model)
    assert not torch.allclose(inputs[0], inputs["x0"])
    assert 3.0 < inputs[0].std().item() < 7.0
    assert torch.equal(inputs[1], inputs["x1"])  # outside the window the input is the batch


def test_globs_and_several_deficits_at_once():
    model = TwoBranchNet()
    rec = ParamRecorder()
    trainer = make_trainer(max_steps=4, callbacks=[
        lc.PathwayDeficit("*t", (0, 2), unit="step"),  # matches left and right, not their children
        lc.PathwayDeficit("head", (2, 4), unit="step"),
        rec,
    ])
    trainer.fit(model)
    cb = trainer.callbacks[0]
    assert sorted(cb.targets) == ["left", "right"]
    assert torch.equal(rec.snapshots[2]["left.0.weight"], rec.snapshots[0]["left.0.weight"])
    assert torch.equal(rec.snapshots[4]["head.weight"], rec.snapshots[2]["head.weight"])
    assert not torch.equal(rec.snapshots[2]["head.weight"], rec.snapshots[0]["head.weight"])


def test_unknown_pathway_lists_what_exists():
    trainer = make_trainer(max_steps=1, callbacks=[lc.PathwayDeficit("encoder_left", (0, 1))])
    with pytest.raises(ValueError, match=r"'encoder_left' matches nothing.*left.*right.*head"):
        trainer.fit(TwoBranchNet())


def test_overlapping_deficits_on_one_pathway_fail_before_training():
    model = TwoBranchNet()
    rec = ParamRecorder()
    trainer = make_trainer(max_epochs=3, callbacks=[
        lc.PathwayDeficit("right", (0, 2)),
        lc.PathwayDeficit("right.0", lc.Window(4, 6, "step"), mode="silence"),  # epoch 1 = steps 4..7
        rec,
    ])
    with pytest.raises(ValueError, match="overlapping windows"):
        trainer.fit(model)
    assert rec.snapshots == {}
    # Disjoint windows on the same pathway are fine.
    make_trainer(max_epochs=2, callbacks=[lc.PathwayDeficit("right", (0, 1)), lc.PathwayDeficit("right", (1, 2), mode="silence")]).fit(TwoBranchNet())


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="mode='blur'.*freeze"):
        lc.PathwayDeficit("a", (0, 1), mode="blur")
    with pytest.raises(ValueError, match="empty"):
        lc.PathwayDeficit("a", (3, 3))
    with pytest.raises(ValueError, match="start=-2"):
        lc.PathwayDeficit("a", (-2, 3))
    with pytest.raises(ValueError, match="noise_std"):
        lc.PathwayDeficit("a", (0, 3), mode="noise", noise_std=-1)
    with pytest.raises(ValueError, match="modes"):
        lc.ModeDeficit("a", modes=[-1], window=(0, 3))


def test_window_past_the_run_warns():
    trainer = make_trainer(max_epochs=2, callbacks=[lc.PathwayDeficit("right", (1, 5))])
    with pytest.warns(UserWarning, match="ends after max_epochs=2"):
        trainer.fit(TwoBranchNet())
    trainer = make_trainer(max_epochs=2, callbacks=[lc.PathwayDeficit("right", (3, 5))])
    with pytest.warns(UserWarning, match="never be active"):
        trainer.fit(TwoBranchNet())


def test_nothing_stays_attached_after_an_exception():
    model = TwoBranchNet(fail_at_step=2)
    trainer = make_trainer(max_steps=5, callbacks=[
        lc.PathwayDeficit("right", (0, 5), mode="silence", unit="step"),
        lc.PathwayDeficit("left", (0, 5), mode="noise", unit="step"),
    ])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(model)
    assert all_hooks(model) == 0


def test_resume_inside_the_window_reapplies_the_deficit(tmp_path):
    def fresh():
        return TwoBranchNet(), [lc.PathwayDeficit("right", (1, 4), mode="silence")]

    model, cbs = fresh()
    make_trainer(max_epochs=6, callbacks=cbs).fit(model)

    first, cbs = fresh()
    trainer = make_trainer(max_epochs=2, callbacks=cbs)
    trainer.fit(first)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, cbs = fresh()
    make_trainer(max_epochs=6, callbacks=cbs).fit(resumed, ckpt_path=str(ckpt))
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_mode_deficit_projects_the_pathway_map():
    dm = lc.data.HierarchicalDataModule()
    u, s, v = dm.task_basis()
    model = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis(), init_scale=0.5)
    maps = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with torch.no_grad():
                maps[trainer.global_step] = (pl_module.pathways["a"](torch.eye(8)).T, pl_module.end_to_end_maps()["a"])

    lesion = lc.ModeDeficit("a", modes=[0, 2], window=(0, 1))
    make_trainer(max_epochs=2, callbacks=[lesion, Probe()]).fit(model, dm)
    effective, raw = maps[0]
    uu, vv = u[:, [0, 2]], v[:, [0, 2]]
    expected = (torch.eye(15) - uu @ uu.T) @ raw @ (torch.eye(8) - vv @ vv.T)
    assert torch.allclose(effective, expected, atol=1e-5)
    k = u.T @ effective @ v
    assert k[0].abs().max() < 1e-5 and k[:, 2].abs().max() < 1e-5 and k[1, 1] > 0.1
    effective, raw = maps[1]  # after the window the pathway is whole again
    assert torch.allclose(effective, raw, atol=1e-5)
    assert all_hooks(model) == 0


def test_mode_deficit_basis_must_fit():
    dm = lc.data.HierarchicalDataModule()
    u, s, v = dm.task_basis()
    model = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis())
    bad = (torch.eye(10)[:, :8], s, v)
    trainer = make_trainer(max_epochs=1, callbacks=[lc.ModeDeficit("a", 0, (0, 1), task_basis=bad)])
    with pytest.raises(ValueError, match=r"U of shape \(10, 8\).*does not fit"):
        trainer.fit(model, dm)
    trainer = make_trainer(max_epochs=1, callbacks=[lc.ModeDeficit("a", 9, (0, 1))])
    with pytest.raises(ValueError, match=r"modes \[9\] are out of range.*8 modes"):
        trainer.fit(model, dm)
    trainer = make_trainer(max_epochs=1, callbacks=[lc.ModeDeficit("right", 0, (0, 1))])
    with pytest.raises(ValueError, match="needs a task basis"):
        trainer.fit(TwoBranchNet())


def test_noise_differs_between_pathways_and_spares_evaluation_passes():
    import numpy as np

    model = TwoBranchNet()
    inputs = {}

    def capture_as(name):
        def capture(module, args, output):
            inputs.setdefault(name, args[0].clone())
        return capture

    for name in ("left", "right"):
        getattr(model, name)[0].register_forward_hook(capture_as(name))
    trainer = make_trainer(max_steps=1, callbacks=[lc.PathwayDeficit(["left", "right"], (0, 1), mode="noise", unit="step")])
    trainer.fit(model)
    assert not torch.equal(inputs["left"], inputs["right"])
    with pytest.raises(ValueError, match="pathways=5"):
        lc.PathwayDeficit(5, (0, 1))
    assert lc.ModeDeficit("a", modes=np.int64(1), window=(0, 1)).modes == [1]

    # An evaluation-mode pass inside the window (as FisherMonitor makes) sees the intact
    # network and does not shift the noise the training steps draw.
    def weights(extra):
        net = TwoBranchNet()
        make_trainer(max_steps=4, callbacks=[lc.PathwayDeficit("right", (0, 4), mode="noise", unit="step"), *extra]).fit(net)
        return net.state_dict()

    class EvalProbe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pl_module.eval()
            with torch.no_grad():
                self.out = pl_module.right(batch[0])
            pl_module.train()
            assert torch.equal(self.out, pl_module.right[2](pl_module.right[1](pl_module.right[0](batch[0]))))

    plain, probed = weights([]), weights([EvalProbe()])
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
