"""Window grids, run identities and the prefix-sharing plan (pure: no training)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lightning_critical as lc
from lightning_critical.schedule import Window
from lightning_critical.sweep.grids import removal, sliding, windows
from lightning_critical.sweep.params import accepted_kwargs, check_params
from lightning_critical.sweep.plan import PlanItem, make_plan, prefix_keys, schedule_tokens
from lightning_critical.sweep.spec import RunSpec, SweepSpec, describe


def _plan(grid, epochs, seeds=(0,), params=((),), share=True, steps_per_epoch=None, available=None):
    items = []
    for entry in grid:
        for seed in seeds:
            for combo in params:
                run = RunSpec(entry.windows, seed, combo, entry.max_epochs)
                e = entry.max_epochs or epochs
                group = f"{seed}/{combo}"
                items.append(PlanItem(run.label(), group, e, schedule_tokens(run.windows, e, steps_per_epoch)))
    return make_plan(items, share_prefixes=share, available=available)


# -- grids ---------------------------------------------------------------------------------
def test_grids_include_the_baseline_exactly_once():
    assert [e.windows for e in removal([0, 3, 6])] == [(), (Window(0, 3),), (Window(0, 6),)]
    assert [e.windows for e in removal([6, 3])][0] == ()
    assert len(sliding([0, 5], length=5)) == 3
    grid = windows([None, (2, 4), [(0, 1), (5, 6)]])
    assert [e.label() for e in grid] == ["baseline", "w2-4", "w0-1+w5-6"]
    assert grid.kind == "explicit"
    assert [e.label() for e in removal(np.arange(0, 9, 4))] == ["baseline", "w0-4", "w0-8"]  # numpy ints


def test_removal_with_epochs_after_sets_each_runs_length():
    grid = removal([0, 5, 10], epochs_after=20)
    assert [(e.label(), e.max_epochs) for e in grid] == [("baseline", 20), ("w0-5", 25), ("w0-10", 30)]


def test_step_grids_keep_their_unit():
    grid = sliding([0, 100], length=50, unit="step")
    assert grid.unit == "step" and grid.entries[1].windows[0] == Window(0, 50, "step")


# -- run identity ----------------------------------------------------------------------------
def _factory(seed, depth=2):
    return None


def test_run_ids_are_stable_and_distinguish_window_seed_and_params():
    a = RunSpec((Window(0, 5),), 0, (("depth", 2),))
    same = RunSpec((Window(0, 5, "epoch"),), 0, (("depth", 2),))
    assert a.run_id("s") == same.run_id("s")
    others = [RunSpec((Window(0, 6),), 0, (("depth", 2),)), RunSpec((Window(0, 5),), 1, (("depth", 2),)),
              RunSpec((Window(0, 5),), 0, (("depth", 3),)), RunSpec((), 0, (("depth", 2),))]
    ids = {a.run_id("s")} | {r.run_id("s") for r in others}
    assert len(ids) == 5
    assert a.run_id("s") != a.run_id("another sweep")


def test_sweep_identity_ignores_memory_addresses_but_sees_code_and_arguments():
    def make(lr):
        return SweepSpec(model=functools.partial(_factory, depth=lr), trainer={"max_epochs": 3}, metrics=("val_acc",),
                         deficit=lc.InputDeficit("blur", window=(0, 1)))

    ns = "pytorch_lightning"
    assert make(2).identity(namespace=ns) == make(2).identity(namespace=ns)
    assert make(2).identity(namespace=ns) != make(3).identity(namespace=ns)
    assert make(2).identity(namespace=ns) != make(2).identity(namespace="lightning.pytorch")  # the versions differ
    f1 = lambda seed: seed + 1  # noqa: E731
    f2 = lambda seed: seed + 2  # noqa: E731
    assert describe(f1) != describe(f2)
    assert "0x" not in str(describe(lc.InputDeficit("blur", window=(0, 1))))


def test_factories_receive_only_the_arguments_they_name():
    assert accepted_kwargs(_factory, {"seed": 1, "depth": 3, "lr": 0.1}) == {"seed": 1, "depth": 3}
    assert accepted_kwargs(functools.partial(_factory, depth=4), {"seed": 1, "depth": 3}) == {"seed": 1}
    assert accepted_kwargs(lambda **kw: None, {"seed": 1, "lr": 2}) == {"seed": 1, "lr": 2}


def test_params_expand_to_a_cartesian_product_or_explicit_combinations():
    assert check_params(None) == [()]
    assert len(check_params({"depth": [1, 2, 3], "lr": [0.1, 0.2]})) == 6
    assert check_params([{"depth": np.int64(2)}]) == [(("depth", 2),)]


# -- the plan ----------------------------------------------------------------------------------
def test_removal_sweep_trains_the_shared_deficit_once():
    ends, epochs = [2, 4, 6, 8], 10
    plan = _plan(removal(ends), epochs)
    # the longest deficit trains its 8 deficit epochs once; each other run branches where it ends
    expected = epochs + epochs + sum(epochs - k for k in ends[:-1])  # baseline + [0, 8) + branches
    assert plan.epochs_trained == expected == 38
    assert plan.epochs_independent == 5 * epochs
    nodes = {n.run_id: n for n in plan.nodes}
    longest = nodes["w0-8_seed0"]
    assert longest.parent is None and sorted(longest.save_keys) == [2, 4, 6]
    for k in (2, 4, 6):
        node = nodes[f"w0-{k}_seed0"]
        assert (node.parent, node.branch_epoch) == ("w0-8_seed0", k)
        assert node.resume_key == longest.save_keys[k] == node.prefix_keys[k] == longest.prefix_keys[k]
    assert nodes["baseline_seed0"].parent is None


def test_sliding_sweep_branches_off_the_clean_prefix():
    onsets, length, epochs = [0, 3, 6], 3, 12
    plan = _plan(sliding(onsets, length), epochs)
    # the onset-0 run and one clean spine train in full; every later onset branches at its onset
    assert plan.epochs_trained == epochs + epochs + sum(epochs - k for k in onsets[1:]) == 39
    assert plan.epochs_independent == 4 * epochs
    branches = {n.run_id.split("_")[0]: (n.parent or "", n.branch_epoch) for n in plan.nodes}
    # the clean epochs 0-2 train once (in the onset-3 run), 3-5 once (onset 6), 6-11 once (baseline)
    assert branches == {"w0-3": ("", 0), "w3-6": ("", 0), "w6-9": ("w3-6_seed0", 3), "baseline": ("w6-9_seed0", 6)}
    ids = [n.run_id for n in plan.nodes]
    for node in plan.nodes:  # parents come first
        if node.parent is not None:
            assert ids.index(node.parent) < ids.index(node.run_id)


def test_removal_with_epochs_after_shares_across_run_lengths():
    plan = _plan(removal([2, 4, 6], epochs_after=5), None)
    assert plan.epochs_independent == 5 + 7 + 9 + 11
    assert plan.epochs_trained == 5 + 11 + (7 - 2) + (9 - 4)


def test_no_sharing_across_seeds_or_params_or_when_turned_off():
    grid = removal([2, 4])
    plan = _plan(grid, 6, seeds=(0, 1), params=((("lr", 0.1),), (("lr", 0.2),)))
    by_id = {n.run_id: n for n in plan.nodes}
    for node in plan.nodes:
        if node.parent is not None:
            assert node.run_id.split("_", 1)[1] == by_id[node.parent].run_id.split("_", 1)[1]  # same seed and lr
    assert plan.epochs_trained == 4 * (6 + 6 + 4)
    off = _plan(grid, 6, seeds=(0, 1), share=False)
    assert off.epochs_trained == off.epochs_independent == 2 * 3 * 6
    assert all(n.parent is None and not n.save_keys for n in off.nodes)


def test_step_windows_share_at_epoch_boundaries_only_when_the_epoch_length_is_known():
    grid = removal([10, 25, 30], unit="step")
    known = _plan(grid, 4, steps_per_epoch=10)
    nodes = {n.run_id.split("_")[0]: n for n in known.nodes}
    # [0, 25) and [0, 30) agree on epochs 0-1 (steps 0-19), [0, 10) on epoch 0 only
    assert sorted(n.branch_epoch for n in (nodes["w0-25s"], nodes["w0-30s"])) == [0, 2]
    assert nodes["w0-10s"].branch_epoch == 1 and nodes["baseline"].branch_epoch == 0
    assert known.epochs_trained == 4 + 4 + 2 + 3
    unknown = _plan(grid, 4)
    assert unknown.epochs_trained == unknown.epochs_independent == 16
    assert schedule_tokens([Window(5, 15, "step")], 3, steps_per_epoch=10) == [[[1, 5, 10]], [[1, 0, 5]], 0]


def test_a_plan_resumes_from_checkpoints_left_on_disk():
    tokens = [1, 1, 1, 0, 0]
    key = prefix_keys("0/()", tokens)[3]
    plan = _plan(removal([3]), 5, available={key: "earlier-run"})
    node = {n.run_id: n for n in plan.nodes}["w0-3_seed0"]
    assert (node.branch_epoch, node.resume_key, node.parent) == (3, key, "earlier-run")


def test_grids_and_plan_import_no_lightning():
    import ast
    import inspect

    from lightning_critical.sweep import grids, plan

    for module in (grids, plan):
        tree = ast.parse(inspect.getsource(module))
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not any(n.split(".")[0] in ("pytorch_lightning", "lightning", "torch") for n in names), names


@pytest.mark.parametrize("window", [(0, 5), Window(0, 5)])
def test_window_forms_are_equivalent(window):
    assert windows([window]).entries[1].windows == (Window(0, 5),)
