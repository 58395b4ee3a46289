"""A sweep's results belong to the code and library versions that made them (issue 18, item 2).

Each test writes a user module (model class, datamodule, helper, constant, metric, factory)
into ``tmp_path``, imports it, runs a tiny serial sweep, edits the file, reimports it under the
same name and runs the sweep again into the same ``out``.
"""

from __future__ import annotations

import functools
import importlib
import json
import linecache
import os
import sys
import uuid
from typing import Any

import pytest
import torch
from conftest import SWEEP_CPU as CPU

import lightning_critical as lc
from lightning_critical.sweep import identity, source
from lightning_critical.sweep.config import read_config

SOURCE = '''
"""A user's study module."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
import UTILS as utils
from lightning_critical._namespace import pl

SCALE = 1.0
NOISE = 0.5
SHRINK = 1.0


def helper(loss):
    return loss * SCALE


def unrelated():
    return 0


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 3, generator=gen), torch.randn(16, 1, generator=gen)),
                          batch_size=8)


class Base(pl.LightningModule):
    LR = 0.1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.LR)


class Net(Base):
    """A tiny regression net."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        return helper(utils.clip(loss))


class Shrink(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.layer.weight.mul_(SHRINK)


def make_deficit(window):
    return lc.InputDeficit("noise", window, noise_std=NOISE)


def weight_norm(trainer, module):
    return {"norm": float(module.layer.weight.detach().norm())}


make_model = lambda seed: Net(seed)  # noqa: E731
make_callbacks = lambda: [Shrink()]  # noqa: E731
'''

UTILS = '''
def clip(loss):
    return loss.clamp(max=100.0)
'''

# a model that picks its code at run time: a loss by name (getattr on a module), a helper module
# imported inside the method, an activation from a module-level registry
LOSSES = '''
"""Losses, picked by name."""


def mse(a, b):
    return ((a - b) ** 2).mean()


def l1(a, b):
    return (a - b).abs().mean()
'''

SCALING = '''
def factor():
    return 1.0


def other():
    return 0
'''

TRICKY = '''
import LOSSES as losses
from MAIN import Net


def act(t):
    return t


ACTS = {"act": act, "gain": 1.0}


class Tricky(Net):
    LOSS = "mse"

    def training_step(self, batch, batch_idx):
        import SCALING as scaling
        x, y = batch
        loss = getattr(losses, self.LOSS)(ACTS["act"](self.layer(x)), y)
        return loss * scaling.factor() * ACTS["gain"]


make_tricky = lambda seed: Tricky(seed)  # noqa: E731
'''


class UserModule:
    """The study module and its utils module in ``tmp_path``; ``edit`` rewrites one and reimports both."""

    def __init__(self, root: Any) -> None:
        self.root = str(root)
        self.name = f"user_study_{uuid.uuid4().hex[:8]}"
        self.utils = f"{self.name}_utils"
        self.sources = {self.name: SOURCE.replace("UTILS", self.utils), self.utils: UTILS,
                        f"{self.name}_losses": LOSSES, f"{self.name}_scaling": SCALING,
                        f"{self.name}_tricky": TRICKY.replace("LOSSES", f"{self.name}_losses")
                        .replace("MAIN", self.name).replace("SCALING", f"{self.name}_scaling")}
        self._write()

    def _write(self) -> None:
        for name, text in self.sources.items():
            with open(os.path.join(self.root, f"{name}.py"), "w") as fh:
                fh.write(text)
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        self.module = importlib.import_module(self.name)
        self.tricky = importlib.import_module(f"{self.name}_tricky")  # imports {name}_losses, not {name}_scaling

    def edit(self, old: str, new: str, utils: bool | str = False) -> None:
        name = f"{self.name}_{utils}" if isinstance(utils, str) else self.utils if utils else self.name
        assert self.sources[name].count(old) == 1, old
        self.sources[name] = self.sources[name].replace(old, new)
        self._write()

    def forget(self) -> None:
        for name in self.sources:
            sys.modules.pop(name, None)


@pytest.fixture
def user(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc within the same second
    made = UserModule(tmp_path)
    yield made
    made.forget()


def _sweep(user: UserModule, out: Any, **kw: Any) -> Any:
    mod = user.module
    args: dict[str, Any] = dict(
        model=mod.make_model, datamodule=mod.Data, deficit=mod.make_deficit, callbacks=mod.make_callbacks,
        windows=lc.sweep.removal([1]), metrics=mod.weight_norm, trainer={"max_epochs": 2, **CPU}, out=str(out),
        backend="serial", tensorboard=False, plot=False, progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


def _lines(out: Any) -> list[dict[str, Any]]:
    with open(os.path.join(str(out), "results.jsonl")) as fh:
        return [json.loads(line) for line in fh]


EDITS: dict[str, tuple[str, str, bool, str]] = {
    # id: (old text, new text, refused?, the diff line that must name it); "utils:" edits the second module
    "training_step": ("return helper(utils.clip(loss))\n", "return helper(utils.clip(loss)) * 2\n", True,
                      "code.model: {m}:Net.training_step changed"),
    "helper_function": ("    return loss * SCALE\n", "    return loss * SCALE * 3\n", True,
                        "code.model: {m}:helper changed"),
    "module_constant": ("SCALE = 1.0\n", "SCALE = 2.0\n", True, "code.model: {m}:SCALE changed"),
    "function_in_another_user_module": ("utils:max=100.0", "max=0.01", True, "code.model: {m}_utils:clip changed"),
    "user_base_class_method": ("lr=self.LR)", "lr=self.LR, momentum=0.5)", True,
                               "code.model: {m}:Base.configure_optimizers changed"),
    "class_attribute": ("    LR = 0.1\n", "    LR = 0.2\n", True, "code.model: {m}:Base changed"),
    "datamodule_class": ("batch_size=8)", "batch_size=4)", True, "code.datamodule: {m}:Data.train_dataloader changed"),
    "callback_class": ("mul_(SHRINK)", "mul_(SHRINK * 0.5)", True,
                       "code.callbacks: {m}:Shrink.on_train_epoch_end changed"),
    "deficit_factory_constant": ("NOISE = 0.5\n", "NOISE = 0.9\n", True, "code.deficit: {m}:NOISE changed"),
    "metric_function": ('{"norm": float(', '{"norm": 2 * float(', True, "code.metrics: {m}:weight_norm changed"),
    "factory_lambda_body": ("lambda seed: Net(seed)", "lambda seed: Net(seed + 1)", True,
                            "code.model: {m}:<lambda> changed"),
    "new_method_on_class": ("    def training_step(", "    def on_fit_start(self):\n        self.seen = 1\n\n"
                            "    def training_step(", True, "code.model: {m}:Net.on_fit_start added"),
    "class_docstring_comment_blank_lines": (
        '    """A tiny regression net."""\n\n    def __init__(self, seed=0):\n',
        '    """A tiny regression net, documented at length.\n\n    It has one layer.\n    """\n\n\n'
        '    def __init__(self, seed=0):  # the seed sets the initial weights\n', False, ""),
    "helper_docstring_added": ("def helper(loss):\n", 'def helper(loss):\n    """Scale the loss."""\n', False, ""),
    "metric_function_docstring": ("def weight_norm(trainer, module):\n",
                                  'def weight_norm(trainer, module):\n    """The weight norm."""\n', False, ""),
    "reformatted_code": ("loss = nn.functional.mse_loss(self.layer(x), y)",
                         "loss = nn.functional.mse_loss(\n            self.layer(x),\n            y,\n        )",
                         False, ""),
    "unrelated_function": ("    return 0\n", "    return 1  # changed, but nothing calls it\n", False, ""),
    "unused_constant": ("SCALE = 1.0\n", "SCALE = 1.0\nUNUSED = 7\n", False, ""),
}


def _edit(user: UserModule, case: str) -> None:
    old, new = EDITS[case][:2]
    user.edit(old.removeprefix("utils:"), new, utils=old.startswith("utils:"))


@pytest.mark.parametrize("case", list(EDITS), ids=list(EDITS))
def test_an_edit_of_the_user_code_is_refused_exactly_when_it_changes_what_runs(tmp_path, user, case, capsys):
    refused, line = EDITS[case][2:]
    out = tmp_path / "sweep"
    first = _sweep(user, out)
    assert (first.status == "ok").all()
    _edit(user, case)
    capsys.readouterr()
    if refused:
        with pytest.raises(lc.sweep.SweepDirectoryError) as err:
            _sweep(user, out)
        message = str(err.value)
        assert line.format(m=user.name) in message
        assert "resume='rerun'" in message and "resume='reuse'" in message
        assert len(_lines(out)) == 2  # nothing trained, nothing lost
    else:
        again = _sweep(user, out)
        assert again.norm.tolist() == first.norm.tolist()
        assert again.run_id.tolist() == first.run_id.tolist()
        assert again.attrs["runs_done"] == 2 and again.attrs["runs_to_train"] == 0
        assert len(_lines(out)) == 2  # nothing trained again
        assert "2 of 2 runs already done (results.jsonl" in capsys.readouterr().err


DYNAMIC_EDITS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    # id: (module, old text, new text, the diff lines that must name it; none: reused)
    "getattr_on_a_module": ("losses", "return ((a - b) ** 2).mean()", "return ((a - b) ** 2).mean() * 3",
                            ("code.model: {m}_losses (whole module: reached through getattr) changed",
                             "code.model: {m}_losses:mse changed")),
    "getattr_on_a_module_other_function": (  # conservative: any function of it could be picked
        "losses", "return (a - b).abs().mean()", "return (a - b).abs().sum()",
        ("code.model: {m}_losses (whole module: reached through getattr) changed",
         "code.model: {m}_losses:l1 changed")),
    "getattr_on_a_module_docstring_comment": (
        "losses", "def mse(a, b):\n", 'def mse(a, b):\n    """Mean squared error."""\n    # a comment\n', ()),
    "module_imported_inside_the_method": ("scaling", "return 1.0", "return 0.5",
                                          ("code.model: {m}_scaling:factor changed",)),
    "module_imported_inside_the_method_unused_function": ("scaling", "return 0\n", "return 1\n", ()),
    "function_in_a_module_level_dict": ("tricky", "    return t\n", "    return t * 2\n",
                                        ("code.model: {m}_tricky:act changed",)),
    "constant_in_a_module_level_dict": ("tricky", '"gain": 1.0', '"gain": 2.0',
                                        ("code.model: {m}_tricky:ACTS changed",)),
}


@pytest.mark.parametrize("case", list(DYNAMIC_EDITS), ids=list(DYNAMIC_EDITS))
def test_code_picked_at_run_time_is_covered_too(tmp_path, user, case):
    module, old, new, lines = DYNAMIC_EDITS[case]
    out = tmp_path / "sweep"
    assert f"{user.name}_scaling" not in sys.modules  # imported inside the method: not loaded before the sweep
    first = _sweep(user, out, model=user.tricky.make_tricky)
    user.edit(old, new, utils=module)
    if lines:
        with pytest.raises(lc.sweep.SweepDirectoryError) as err:
            _sweep(user, out, model=user.tricky.make_tricky)
        for line in lines:
            assert line.format(m=user.name) in str(err.value)
        scratch = _sweep(user, tmp_path / "scratch", model=user.tricky.make_tricky)
        if "other_function" not in case:  # the edit changes what runs: the stored numbers were stale
            assert scratch.norm.tolist() != first.norm.tolist()
    else:
        again = _sweep(user, out, model=user.tricky.make_tricky)
        assert again.run_id.tolist() == first.run_id.tolist() and again.attrs["runs_to_train"] == 0


def test_a_user_module_held_as_a_value_is_hashed_whole(user):
    losses = sys.modules[f"{user.name}_losses"]
    entries = identity.code_digest({"model": functools.partial(user.module.helper, {"loss": losses})})["model"]
    assert f"{user.name}_losses (whole module: held as a value)" in entries
    assert {f"{user.name}_losses:mse", f"{user.name}_losses:l1", f"{user.name}:helper"} <= set(entries)
    assert identity.code_digest({"model": [json]}) == {}  # the standard library: its version only


IMPORT_FORMS = {  # id: (function body, the entries of the sub package it must reach)
    "relative_from_import": ("from .sub import f\n    return f()", ["sub:f"]),
    "import_as": ("import PKG.sub as s\n    return s.f()", ["sub:f"]),
    "dotted_import": ("import PKG.sub\n    return PKG.sub.f()", ["sub:f"]),
    "from_import_not_loaded_yet": ("from PKG.lazy import k\n    return k()", ["lazy:k"]),
    "getattr_on_a_local_import": ("import PKG.sub as s\n    return getattr(s, 'f')()",
                                  ["sub (whole module: reached through getattr)", "sub:f", "sub:g"]),
    "globals_lookup": ("return globals()['helper']()", ["main (whole module: reached through globals())",
                                                        "main:helper", "main:run"]),
}


@pytest.mark.parametrize("form", list(IMPORT_FORMS), ids=list(IMPORT_FORMS))
def test_every_form_of_import_inside_a_function_is_followed(tmp_path, monkeypatch, form):
    body, expected = IMPORT_FORMS[form]
    pkg = f"user_pkg_{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp_path / pkg)
    files = {"__init__": "", "sub": "def f():\n    return 1\n\n\ndef g():\n    return 2\n",
             "lazy": "def k():\n    return 3\n",
             "main": f"def helper():\n    return 4\n\n\ndef run():\n    {body.replace('PKG', pkg)}\n"}
    for name, text in files.items():
        (tmp_path / pkg / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    main = importlib.import_module(f"{pkg}.main")
    try:
        entries = identity.code_digest({"model": main.run})["model"]
        assert sorted(k.removeprefix(f"{pkg}.") for k in entries if k != f"{pkg}.main:run") == \
            sorted(e for e in expected if e != "main:run")
    finally:
        for name in [m for m in sys.modules if m.startswith(pkg)]:
            del sys.modules[name]


def test_rerun_retrains_with_the_new_code_and_sets_the_old_results_aside(tmp_path, user, capsys):
    out = tmp_path / "sweep"
    old = _sweep(user, out)
    _edit(user, "training_step")
    capsys.readouterr()
    new = _sweep(user, out, resume="rerun")
    err = capsys.readouterr().err
    assert f"0 of 2 runs already done (the results of identity {old.attrs['sweep']} were set aside in " \
           f"{out / 'replaced' / old.attrs['sweep']}), training 2" in err
    scratch = _sweep(user, tmp_path / "scratch")  # the edited code, from scratch
    assert new.norm.tolist() == scratch.norm.tolist()
    assert new.norm.tolist() != old.norm.tolist()
    assert new.reused_from.isna().all()
    aside = out / "replaced" / old.attrs["sweep"]
    assert len(_lines(aside)) == 2  # the old results are kept, not deleted
    with open(out / "sweep.json") as fh:
        history = json.load(fh)["history"]
    assert [(h["resume"], h["from"], h["to"]) for h in history] == [("rerun", old.attrs["sweep"], new.attrs["sweep"])]
    assert f"code.model: {user.name}:Net.training_step changed" in history[0]["changed"]


def test_reuse_keeps_the_old_numbers_flagged_and_recorded(tmp_path, user, capsys):
    out = tmp_path / "sweep"
    first = _sweep(user, out)
    _edit(user, "training_step")
    capsys.readouterr()
    # the old sweep has seed 0; this call also asks for seed 1, which trains with the new code
    kept = _sweep(user, out, resume="reuse", seeds=[0, 1])
    err = capsys.readouterr().err
    old_id, new_id = first.attrs["sweep"], kept.attrs["sweep"]
    assert new_id != old_id and kept.attrs["reused_from"] == old_id
    seed0, seed1 = kept[kept.seed == 0], kept[kept.seed == 1]
    assert seed0.norm.tolist() == first.norm.tolist()  # the stored numbers, as asked
    assert seed0.reused_from.tolist() == [old_id] * 2 and seed1.reused_from.isna().all()
    scratch = _sweep(user, tmp_path / "scratch", seeds=[1])
    assert seed1.norm.tolist() == scratch.norm.tolist()  # the new run trained with the new code
    assert (kept.attrs["runs_done"], kept.attrs["runs_to_train"]) == (2, 2)
    assert (f"sweep {out}: 2 of 4 runs already done (2 reused from identity {old_id} by resume='reuse', now "
            f"identity {new_id}; the old sweep is kept in {out / 'replaced' / old_id}), training 2") in err
    with open(out / "sweep.json") as fh:
        stored = json.load(fh)
    assert stored["identity"] == new_id
    assert [(h["resume"], h["from"], h["reused"]) for h in stored["history"]] == [("reuse", old_id, 2)]
    assert len(_lines(out / "replaced" / old_id)) == 2  # the originals, untouched
    reused_lines = [r for r in _lines(out) if r.get("reused_from")]
    assert sorted(r["reused_run_id"] for r in reused_lines) == sorted(first.run_id)
    # the takeover is final: the next call resumes quietly, and load() shows each run once
    again = _sweep(user, out, seeds=[0, 1])
    assert again.norm.tolist() == kept.norm.tolist() and again.attrs["runs_done"] == 4
    assert len(lc.sweep.load(out)) == 4


def test_a_file_edited_but_not_reloaded_is_hashed_from_the_code_that_runs(tmp_path, user):
    out = tmp_path / "sweep"
    first = _sweep(user, out)
    path = os.path.join(user.root, f"{user.name}.py")
    with open(path, "w") as fh:  # edited on disk; the loaded Net still runs the old training_step
        fh.write(user.sources[user.name].replace(*EDITS["training_step"][:2]))
    assert source.function_digest(user.module.Net.training_step).startswith("bytecode:")
    with pytest.raises(lc.sweep.SweepDirectoryError, match=r"Net.training_step changed \(hashed from the loaded "
                                                           r"bytecode(.|\n)*reload the module"):
        _sweep(user, out)
    rerun = _sweep(user, out, resume="rerun")  # what runs is the old code: the old numbers, under its own digest
    assert rerun.norm.tolist() == first.norm.tolist()


def test_reuse_is_refused_when_more_than_code_and_versions_changed(tmp_path, user):
    out = tmp_path / "sweep"
    _sweep(user, out)
    _edit(user, "training_step")
    with pytest.raises(lc.sweep.SweepDirectoryError, match=r"resume='reuse' keeps(.|\n)*trainer.max_epochs: 2 -> 3"):
        _sweep(user, out, resume="reuse", trainer={"max_epochs": 3, **CPU})
    assert len(_lines(out)) == 2 and not (out / "replaced").exists()  # nothing moved
    with pytest.raises(lc.sweep.SweepDirectoryError) as err:  # the default names only the choices that apply
        _sweep(user, out, trainer={"max_epochs": 3, **CPU})
    assert "resume='rerun'" in str(err.value) and "resume='reuse'" not in str(err.value)


def test_a_change_of_library_version_is_refused_with_the_versions_diff(tmp_path, user, monkeypatch):
    out = tmp_path / "sweep"
    _sweep(user, out)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    with pytest.raises(lc.sweep.SweepDirectoryError, match=r"versions: torch \S+ -> 9\.9\.9"):
        _sweep(user, out)


def test_every_call_prints_what_it_reused(tmp_path, user, capsys):
    out = tmp_path / "sweep"
    table = _sweep(user, out)
    sweep = table.attrs["sweep"]
    assert (f"lightning-critical: sweep {out}: 0 of 2 runs already done (new runs, identity {sweep}), training 2"
            in capsys.readouterr().err.splitlines())
    more = _sweep(user, out, seeds=[0, 1])
    assert f"sweep {out}: 2 of 4 runs already done (results.jsonl, identity {sweep}), training 2" \
        in capsys.readouterr().err
    assert (more.attrs["runs_done"], more.attrs["runs_to_train"]) == (2, 2)


def test_a_bad_resume_value_is_refused_before_training(tmp_path, user):
    with pytest.raises(ValueError, match=r"resume='again' is not valid; choose one of \('refuse', 'rerun', 'reuse'\)"):
        _sweep(user, tmp_path / "sweep", resume="again")
    assert not (tmp_path / "sweep").exists()


def test_the_code_digest_follows_user_code_only():
    digest = identity.code_digest({"model": [lc.models.SmallCNN, json.dumps, torch.nn.Linear]})
    assert digest == {}  # this package (its version), the standard library and site-packages
    entries = identity.code_digest({"model": [_sweep]})["model"]
    assert f"{__name__}:_sweep" in entries and f"{__name__}:_lines" not in entries
    assert f"{__name__}:UserModule" not in entries  # a type annotation is not a call


def test_the_main_module_is_user_code_even_when_a_kernel_launcher_from_site_packages_runs_it(monkeypatch):
    kernel = type(sys)("__main__")
    kernel.__file__ = os.path.join(os.path.dirname(pytest.__file__), "ipykernel_launcher.py")  # site-packages
    monkeypatch.setitem(sys.modules, "__main__", kernel)
    assert identity.is_user_module("__main__")
    assert not identity.is_user_module("pytest")


def test_without_source_the_bytecode_is_hashed_and_docstrings_still_do_not_count():
    scope: dict[str, Any] = {"__name__": "interactive_session"}
    exec("def f(x):\n    'Doc.'\n    return x + 1\n", scope)
    exec("def g(x):\n    return x + 1\n", scope)
    exec("def h(x):\n    return x + 2\n", scope)
    f, g, h = (source.function_digest(scope[name]) for name in "fgh")
    assert f.startswith("bytecode:") and f == g != h


def test_a_notebook_cell_is_hashed_from_its_source(monkeypatch):
    def cell(text: str) -> Any:  # what IPython does: the cell's text in linecache, code compiled under that name
        filename = f"/tmp/ipykernel_0/{uuid.uuid4().hex}.py"
        monkeypatch.setitem(linecache.cache, filename, (len(text), None, text.splitlines(True), filename))
        scope: dict[str, Any] = {"__name__": "__main__"}
        exec(compile(text, filename, "exec"), scope)
        return scope["f"]

    plain = source.function_digest(cell("def f(x):\n    return x + 1\n"))
    documented = source.function_digest(cell("def f(x):\n    'Add one.'\n    # a comment\n\n    return x + 1\n"))
    changed = source.function_digest(cell("def f(x):\n    return x + 2\n"))
    assert plain.startswith("ast:") and plain == documented != changed


def test_the_yaml_config_accepts_resume(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("study: {model: lightning_critical.models.SmallCNN, windows: {removal: [1]},\n"
                      "        metrics: [val_acc], trainer: {max_epochs: 2},\n"
                      "        deficit: {class_path: lightning_critical.InputDeficit, init_args: {transform: blur}}}\n"
                      "execution: {resume: reuse}\n")
    assert read_config(["--config", str(config)])[1].resume == "reuse"
    assert read_config(["--config", str(config), "--execution.resume", "rerun"])[1].resume == "rerun"
