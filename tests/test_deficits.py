"""PathwayDeficit / ModeDeficit on real Trainer runs."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from conftest import TwoBranchNet, all_hooks, make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl


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

    trainer = make_trainer(
        max_steps=3, callbacks=[lc.PathwayDeficit("right", (0, 2), mode="freeze", unit="step"), Probe()]
    )
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
    inputs: dict[int | str, torch.Tensor] = {}

    def capture(module, args, output):
        inputs.setdefault(module.step, args[0].clone())

    model.right[0].register_forward_hook(capture)
    model.right[0].step = -1  # type: ignore[assignment]  # a plain int attribute, which Module allows

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pl_module.right[0].step = trainer.global_step
            inputs.setdefault(f"x{trainer.global_step}", batch[0].clone())

    trainer = make_trainer(
        max_steps=2, callbacks=[lc.PathwayDeficit("right", (0, 1), mode="noise", noise_std=5.0, unit="step"), Probe()]
    )
    trainer.fit(model)
    assert not torch.allclose(inputs[0], inputs["x0"])
    assert 3.0 < inputs[0].std().item() < 7.0
    assert torch.equal(inputs[1], inputs["x1"])  # outside the window the input is the batch


def test_globs_and_several_deficits_at_once():
    model = TwoBranchNet()
    rec = ParamRecorder()
    glob = lc.PathwayDeficit("*t", (0, 2), unit="step")  # matches left and right, not their children
    trainer = make_trainer(max_steps=4, callbacks=[glob, lc.PathwayDeficit("head", (2, 4), unit="step"), rec])
    trainer.fit(model)
    assert sorted(glob.targets) == ["left", "right"]
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
    make_trainer(
        max_epochs=2, callbacks=[lc.PathwayDeficit("right", (0, 1)), lc.PathwayDeficit("right", (1, 2), mode="silence")]
    ).fit(TwoBranchNet())


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
    assert all_hooks(model) == 0 and global_hooks() == 0  # neither module nor process-wide hooks


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
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(), strict=True):
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
    inputs: dict[str, torch.Tensor] = {}

    def capture_as(name):
        def capture(module, args, output):
            inputs.setdefault(name, args[0].clone())
        return capture

    for name in ("left", "right"):
        getattr(model, name)[0].register_forward_hook(capture_as(name))
    trainer = make_trainer(
        max_steps=1, callbacks=[lc.PathwayDeficit(["left", "right"], (0, 1), mode="noise", unit="step")]
    )
    trainer.fit(model)
    assert not torch.equal(inputs["left"], inputs["right"])
    with pytest.raises(ValueError, match="pathways=5"):
        lc.PathwayDeficit(5, (0, 1))  # type: ignore[arg-type]  # the bad input under test
    assert lc.ModeDeficit("a", modes=np.int64(1), window=(0, 1)).modes == [1]

    # An evaluation-mode pass inside the window (as FisherMonitor makes) sees the intact
    # network and does not shift the noise the training steps draw.
    def weights(extra):
        net = TwoBranchNet()
        make_trainer(
            max_steps=4, callbacks=[lc.PathwayDeficit("right", (0, 4), mode="noise", unit="step"), *extra]
        ).fit(net)
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


# -- issue 10: faults that were silently wrong ---------------------------------------------------
import copy  # noqa: E402
import warnings  # noqa: E402

import torch.nn.modules.module as torch_module  # noqa: E402
from conftest import read_tensorboard  # noqa: E402

TensorBoardLogger = pl.loggers.TensorBoardLogger
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from lightning_critical.deficits import WindowedDeficit  # noqa: E402
from lightning_critical.probing import probing  # noqa: E402


def global_hooks() -> int:
    """Process-wide module hooks (the deficits' copy-safe hooks live there while a window is open)."""
    return len(torch_module._global_forward_hooks) + len(torch_module._global_forward_pre_hooks)


def right_by_hand(model, x):
    """The right branch computed layer by layer, with no module hook involved."""
    r = model.right
    return nn.functional.linear(torch.tanh(nn.functional.linear(x, r[0].weight, r[0].bias)), r[2].weight, r[2].bias)


def test_repeated_modes_are_refused_instead_of_reflecting_the_map():
    with pytest.raises(ValueError, match=r"modes=\[0, 0\] repeats mode\(s\) \[0\]"):
        lc.ModeDeficit("a", modes=[0, 0], window=(0, 1))
    assert lc.ModeDeficit("a", modes=[2, 0], window=(0, 1)).modes == [2, 0]


class CausalAttentionNet(TwoBranchNet):
    """The right branch is self-attention with a float causal mask passed as a keyword argument."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
            self.seen: list = []

        def forward(self, x, attn_mask=None):
            self.seen.append((x.detach().clone(), attn_mask.detach().clone()))
            return self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)[0].sum(1)[:, :4]

    def __init__(self) -> None:
        super().__init__()
        self.right = self.Attention()  # type: ignore[assignment]  # the branch swapped for attention
        self.mask = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)

    def forward(self, x):
        seq = x.unsqueeze(1).expand(-1, 5, -1)
        return self.head(self.left(x) + self.right(seq, attn_mask=self.mask))


def test_noise_replaces_only_the_input_never_keyword_arguments():
    model = CausalAttentionNet()
    trainer = make_trainer(
        max_steps=2, callbacks=[lc.PathwayDeficit("right", (0, 1), mode="noise", noise_std=3.0, unit="step")]
    )
    trainer.fit(model)
    assert isinstance(model.right, CausalAttentionNet.Attention)
    (x0, mask0), (x1, mask1) = model.right.seen
    assert torch.equal(mask0, model.mask) and torch.equal(mask1, model.mask)  # the causal mask survives
    assert 2.0 < x0.std().item() < 4.0  # the input is noise inside the window ...
    assert x1.std().item() < 2.0 and torch.equal(x1[:, 0], x1[:, 4])  # ... and the batch after it
    assert global_hooks() == 0 and all_hooks(model) == 0


class RecordingAttention(nn.MultiheadAttention):
    def forward(self, query, key, value, **kwargs):  # type: ignore[override]  # passes every option through
        self.seen = (query.detach().clone(), key.detach().clone(), value.detach().clone(), kwargs["attn_mask"].clone())
        return super().forward(query, key, value, **kwargs)


class AttentionNet(TwoBranchNet):
    def __init__(self) -> None:
        super().__init__()
        self.attn = RecordingAttention(6, 2, batch_first=True)
        self.mask = torch.triu(torch.full((3, 3), float("-inf")), diagonal=1)

    def forward(self, x):
        seq = x.unsqueeze(1).expand(-1, 3, -1)
        out = self.attn(seq, seq, seq, attn_mask=self.mask, need_weights=False)[0].mean(1)
        return self.head(self.left(x) + self.right(out))


@pytest.mark.parametrize("input_index", [None, 2])
def test_noise_on_multihead_attention_replaces_the_chosen_positional_input(input_index):
    model = AttentionNet()
    deficit = lc.PathwayDeficit("attn", (0, 1), mode="noise", unit="step", input_index=input_index)
    make_trainer(max_steps=1, callbacks=[deficit]).fit(model)
    query, key, value, mask = model.attn.seen
    assert torch.equal(mask, model.mask)
    noisy = 0 if input_index is None else 2
    for i, t in enumerate((query, key, value)):
        intact = torch.equal(t[:, 0], t[:, 2])  # the batch repeats each row along the sequence
        assert intact == (i != noisy), (i, input_index)


def test_noise_input_that_is_not_a_tensor_is_a_clear_error():
    model = AttentionNet()
    deficit = lc.PathwayDeficit("attn", (0, 1), mode="noise", unit="step", input_index=5)
    with pytest.raises(ValueError, match=r"input_index=5 names nothing.*floating-point tensor"):
        make_trainer(max_steps=1, callbacks=[deficit]).fit(model)
    assert global_hooks() == 0


class ProbeInside(pl.Callback):
    """A monitor-like callback that runs a pathway inside probing() in training mode."""

    def __init__(self) -> None:
        self.errors: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with probing(), torch.no_grad():
            x = batch[0]
            self.errors.append((pl_module.right(x) - right_by_hand(pl_module, x)).abs().max().item())


@pytest.mark.parametrize("mode", ["noise", "silence"])
def test_probing_inside_a_window_changes_nothing_whatever_the_callback_order(mode):
    def run(order):
        model = TwoBranchNet()
        deficit = lc.PathwayDeficit("right", (0, 4), mode=mode, unit="step")
        probe = ProbeInside()
        callbacks = {"none": [deficit], "before": [probe, deficit], "after": [deficit, probe]}[order]
        make_trainer(max_steps=6, callbacks=callbacks).fit(model)
        return model.state_dict(), probe.errors

    plain, _ = run("none")
    for order in ("before", "after"):
        probed, errors = run(order)
        assert errors and max(errors) == 0.0, order  # the probe saw the intact pathway
        for k in plain:
            assert torch.equal(plain[k], probed[k]), (order, k)


class AliasNet(TwoBranchNet):
    """The same module under two attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.alias = self.right


class TiedNet(TwoBranchNet):
    """Two branches whose first layers share one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.right[0].weight = self.left[0].weight


@pytest.mark.parametrize(
    "net, first, second, match",
    [
        (AliasNet, "right", "alias", r"'right' and 'alias' \(the same module\)"),
        (AliasNet, "alias", "right.2", r"'right.2', which is inside 'alias'"),
        (TiedNet, "left", "right", r"'left' and 'right', which share parameter '0.weight'"),
    ],
)
def test_one_module_under_two_names_or_a_tied_weight_is_one_pathway(net, first, second, match):
    model = net()
    rec = ParamRecorder()
    trainer = make_trainer(
        max_steps=4,
        callbacks=[
            lc.PathwayDeficit(first, (0, 2), unit="step"),
            lc.PathwayDeficit(second, (1, 3), mode="silence", unit="step"),
            rec,
        ],
    )
    with pytest.raises(ValueError, match=match + ".*overlapping windows"):
        trainer.fit(model)
    assert rec.snapshots == {} and global_hooks() == 0


def test_two_windows_on_one_pathway_log_one_clean_step_function(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    windows = [(0, 2), (4, 6), (9, 10)]
    callbacks = [lc.PathwayDeficit("right", lc.Window(a, b, "step")) for a, b in windows]
    callbacks.append(lc.PathwayDeficit("left", lc.Window(2, 5, "step"), mode="silence"))
    make_trainer(max_steps=12, logger=logger, callbacks=callbacks).fit(TwoBranchNet())
    acc = read_tensorboard(logger.log_dir)
    for tag, spans in (("deficit/freeze/right", windows), ("deficit/silence/left", [(2, 5)])):
        values: dict[int, set] = {}
        for event in acc.Scalars(tag):
            values.setdefault(event.step, set()).add(event.value)
        assert all(len(v) == 1 for v in values.values()), (tag, values)  # never two values at one step
        curve = {step: v.pop() for step, v in values.items()}
        expected = {step: float(any(a <= step < b for a, b in spans)) for step in range(12)}
        assert all(curve[s] == expected[s] for s in curve if s < 12), (tag, curve)
        edges = {b - 1 for _, b in spans} | {b for _, b in spans} | {a for a, _ in spans} | {0}
        assert edges - {12} <= set(curve), (tag, curve)  # every edge is drawn sharply
        assert curve[12] == expected[11]


class Snapshot(pl.Callback):
    """Deep-copies the model inside the window, as EMA / SWA / snapshot callbacks do."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.copy: Any = None  # the deep copy, once taken
        self.checks: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            self.copy = copy.deepcopy(pl_module)
            self.checks.append(all_hooks(self.copy))


@pytest.mark.parametrize("mode", ["silence", "noise"])
def test_a_deepcopy_taken_inside_a_window_is_a_clean_model(mode):
    model = TwoBranchNet()
    snap = Snapshot(at_step=1)
    seen: dict[str, float] = {}

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if snap.copy is not None and trainer.global_step == 1:
                x = batch[0]
                with torch.no_grad():
                    seen["copy"] = (snap.copy.right(x) - right_by_hand(snap.copy, x)).abs().max().item()
                    seen["original"] = (pl_module.right(x) - right_by_hand(pl_module, x)).abs().max().item()

    deficit = lc.PathwayDeficit("right", (0, 3), mode=mode, unit="step")
    make_trainer(max_steps=5, callbacks=[deficit, snap, Check()]).fit(model)
    assert snap.checks == [0]  # the copy holds no hook of ours ...
    assert seen["copy"] == 0.0  # ... and runs unaltered inside the window,
    assert seen["original"] > 0.1  # while the original is deprived.
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(snap.copy.right(x), right_by_hand(snap.copy, x))
    assert all_hooks(model) == 0 and all_hooks(snap.copy) == 0 and global_hooks() == 0


def test_a_deepcopy_of_a_mode_lesioned_model_is_whole():
    dm = lc.data.HierarchicalDataModule()
    model = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis(), init_scale=0.5)
    snap = Snapshot(at_step=0)
    make_trainer(max_epochs=2, callbacks=[lc.ModeDeficit("a", modes=[0], window=(0, 2)), snap]).fit(model, dm)
    copy_ = snap.copy
    with torch.no_grad():
        assert torch.allclose(copy_.pathways["a"](torch.eye(8)).T, copy_.end_to_end_maps()["a"], atol=1e-6)
    assert snap.checks == [0] and all_hooks(model) == 0 and global_hooks() == 0


class LSTMNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 15, batch_first=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.rnn(x.unsqueeze(1))[0].squeeze(1), y.T[: x.shape[0]])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mode_deficit_on_a_module_with_tuple_outputs_fails_before_training():
    dm = lc.data.HierarchicalDataModule()
    model = LSTMNet()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(max_epochs=1, callbacks=[lc.ModeDeficit("rnn", 0, (0, 1))])
    with pytest.raises(ValueError, match=r"pathway='rnn' is a LSTM.*returns a tuple"):
        trainer.fit(model, dm)
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class UnsizedNet(TwoBranchNet):
    """Its train loader is an IterableDataset without a length: steps per epoch are unknown."""

    def train_dataloader(self):
        class Stream(IterableDataset):
            def __iter__(self):
                gen = torch.Generator().manual_seed(1)
                for _ in range(4):
                    yield torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)

        return DataLoader(Stream(), batch_size=None)


def test_mixed_units_with_unknown_epoch_length_may_overlap_and_are_checked_per_step():
    # Epoch 0 is steps 0..3: a step window at [10, 12) does not overlap it.
    trainer = make_trainer(max_epochs=4, callbacks=[
        lc.PathwayDeficit("right", (0, 1)), lc.PathwayDeficit("right", lc.Window(10, 12, "step"), mode="silence"),
    ])
    with pytest.warns(UserWarning, match=r"may overlap: one is in epochs, the other in steps.*unknown"):
        trainer.fit(UnsizedNet())
    assert trainer.global_step == 16
    # [2, 3) in steps falls inside epoch 0: the run stops at the first step where both act.
    trainer = make_trainer(max_epochs=4, callbacks=[
        lc.PathwayDeficit("right", (0, 1)), lc.PathwayDeficit("right", lc.Window(2, 3, "step"), mode="silence"),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"both act on 'right' at epoch 0, step 2: their windows overlap"):
            trainer.fit(UnsizedNet())
    assert trainer.global_step == 2 and global_hooks() == 0


def test_state_key_is_a_property_and_names_profiler_actions():
    SimpleProfiler = pl.profilers.SimpleProfiler

    a, b = lc.PathwayDeficit("right", (0, 1)), lc.PathwayDeficit("right", (1, 2), mode="silence")
    assert isinstance(inspect.getattr_static(WindowedDeficit, "state_key"), property)  # defined on the base
    assert isinstance(a.state_key, str) and a.state_key != b.state_key
    assert a.label == "PathwayDeficit[freeze/right, [0, 1) epochs]"
    profiler = SimpleProfiler()
    make_trainer(max_epochs=2, profiler=profiler, callbacks=[a, b]).fit(TwoBranchNet())
    actions = [k for k in profiler.recorded_durations if "PathwayDeficit" in k]
    assert actions and not any("bound method" in k for k in actions)
    assert any(a.state_key in k for k in actions) and any(b.state_key in k for k in actions)


def test_every_lightning_hook_override_is_marked():

    hooks = {n for n in dir(pl.Callback) if not n.startswith("_")}
    for cls in (WindowedDeficit, lc.PathwayDeficit, lc.ModeDeficit, lc.TaskSwitch):
        for name, value in vars(cls).items():
            if name in hooks:
                fn = value.fget if isinstance(value, property) else value
                assert getattr(fn, "__override__", False), f"{cls.__name__}.{name}"


def test_old_underscore_extension_points_still_work():
    with pytest.warns(DeprecationWarning, match=r"_attach is deprecated: override attach"):
        class OldHalfGain(WindowedDeficit):
            def _resolve(self, trainer, pl_module):
                self.targets = {"right": pl_module.right}

            def _attach(self, trainer, pl_module):
                return [self.register_forward_hook(pl_module.right, lambda m, a, out: out * 0)]

            def _default_name(self):
                return "old/right"

    with pytest.warns(DeprecationWarning, match=r"_resolve is deprecated"):
        class NarrowFreeze(lc.PathwayDeficit):
            def _resolve(self, trainer, pl_module):
                super()._resolve(trainer, pl_module)  # type: ignore[misc]  # the deprecated name under test
                self.targets = {k: v for k, v in self.targets.items() if k != "left"}

    outputs = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            outputs[trainer.global_step] = pl_module.right(batch[0]).abs().max().item()

    old, narrow = OldHalfGain((0, 1), unit="step"), NarrowFreeze(["left", "head"], (0, 2), unit="step")
    model = TwoBranchNet()
    rec = ParamRecorder()
    make_trainer(max_steps=2, callbacks=[old, narrow, Probe(), rec]).fit(model)
    assert old.name == "old/right" and outputs[0] == 0.0 and outputs[1] > 0
    assert sorted(narrow.targets) == ["head"]
    assert torch.equal(rec.snapshots[2]["head.weight"], rec.snapshots[0]["head.weight"])
    assert not torch.equal(rec.snapshots[2]["left.0.weight"], rec.snapshots[0]["left.0.weight"])


class ScaledBranch(WindowedDeficit):
    """A user's deficit written with the public extension points only: scale a branch's output in the window."""

    def __init__(self, branch: str, window: Any, gain: float, unit: str = "epoch") -> None:
        super().__init__(window, unit=unit)
        self.branch, self.gain = branch, gain

    def resolve(self, trainer, pl_module):
        self.targets = {self.branch: pl_module.get_submodule(self.branch)}

    def attach(self, trainer, pl_module):
        gain = self.gain
        return [self.register_forward_hook(self.targets.values(), lambda module, args, out: out * gain)]

    def default_name(self):
        return f"gain/{self.branch}"

    def describe_target(self):
        return f"branch {self.branch}"

    def repr_settings(self):
        return {"branch": repr(self.branch), **super().repr_settings(), "gain": f"{self.gain:g}"}


def test_a_user_subclass_with_public_names_acts_in_its_window_and_leaves_nothing_attached():
    deficit = ScaledBranch("right", (2, 5), gain=0.5, unit="step")
    assert repr(deficit) == "ScaledBranch(branch='right', window=[2, 5) steps, gain=0.5)"
    assert deficit.hparams_for_tensorboard()["deficit/gain/right/target"] == "branch right"  # before resolve()
    seen: dict[int, tuple[bool, float]] = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            x = batch[0]
            ratio = (pl_module.right(x) / right_by_hand(pl_module, x)).mean().item()
            seen[trainer.global_step] = (deficit.attached, round(ratio, 5))

    model = TwoBranchNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # public names: nothing deprecated is involved
        make_trainer(max_steps=8, callbacks=[deficit, Probe()]).fit(model)
    assert seen == {t: (True, 0.5) if 2 <= t < 5 else (False, 1.0) for t in range(8)}
    assert not deficit.attached and global_hooks() == 0 and all_hooks(model) == 0
    x = torch.randn(4, 6)
    assert torch.equal(model.right(x), right_by_hand(model, x))
    assert deficit.hparams_for_tensorboard()["deficit/gain/right/target"] == "right"  # resolved targets


def test_an_old_describe_target_override_is_still_used_and_deprecated():
    with pytest.warns(DeprecationWarning, match=r"_describe_target is deprecated: override describe_target"):
        class OldWords(WindowedDeficit):
            def _describe_target(self):
                return "old words"

    assert OldWords((0, 1)).hparams_for_tensorboard()["deficit/OldWords/target"] == "old words"
