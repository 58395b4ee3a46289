"""Confusing inputs to the deficits, windows and task switches: each a clear error at construction.

Every case asserts the exact exception type and that the message names the argument (and,
where there is one, the bad value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import lightning_critical as lc
from lightning_critical.deficits import WindowedDeficit as _WindowedDeficit

U, S, V = torch.linalg.svd(torch.randn(15, 8), full_matrices=False)
V = V.T  # U (15 x 8), S (8,), V (8 x 8)
BASIS = (U, S, V)
INF, NAN = float("inf"), float("nan")

# The cases pass wrong types on purpose, as an untyped script or a config would: the runtime
# checks are under test, so the constructors are called through Any.
Window: Any = lc.Window
TaskSwitch: Any = lc.TaskSwitch
WindowedDeficit: Any = _WindowedDeficit


def pathway(**kw):
    return lc.PathwayDeficit(**{"pathways": "right", "window": (0, 3), **kw})


def mode(**kw):
    return lc.ModeDeficit(**{"pathway": "a", "modes": [0], "window": (0, 3), **kw})


CASES = [
    # PathwayDeficit
    ("pathway-mode", lambda: pathway(mode="blur"), ValueError,
     r"mode='blur' is not valid; choose one of \('freeze', 'silence', 'noise'\)"),
    ("pathway-mode-type", lambda: pathway(mode=3), ValueError, r"mode=3 is not valid"),
    ("pathway-noise-inf", lambda: pathway(mode="noise", noise_std=INF), ValueError,
     r"noise_std=inf is not valid: it must be a finite number >= 0"),
    ("pathway-noise-nan", lambda: pathway(mode="noise", noise_std=NAN), ValueError, r"noise_std=nan is not valid"),
    ("pathway-noise-negative", lambda: pathway(mode="noise", noise_std=-1), ValueError, r"noise_std=-1 is not valid"),
    ("pathway-noise-string", lambda: pathway(mode="noise", noise_std="1.0"), ValueError,
     r"noise_std='1.0' is not valid.*not str"),
    ("pathway-seed-string", lambda: pathway(mode="noise", seed="abc"), ValueError,
     r"seed='abc' must be an integer >= 0, not str"),
    ("pathway-seed-float", lambda: pathway(mode="noise", seed=1.7), ValueError,
     r"seed=1.7 must be an integer >= 0, not float"),
    ("pathway-seed-negative", lambda: pathway(mode="noise", seed=-1), ValueError, r"seed=-1 must be an integer >= 0"),
    ("pathway-pathways-int", lambda: pathway(pathways=5), ValueError, r"pathways=5 is not valid: give a name / glob"),
    ("pathway-pathways-empty", lambda: pathway(pathways=[]), ValueError, r"pathways=\[\] is not valid"),
    ("pathway-pathways-blank", lambda: pathway(pathways=["a", ""]), ValueError, r"pathways=\['a', ''\] is not valid"),
    ("pathway-input-index-negative", lambda: pathway(mode="noise", input_index=-1), ValueError,
     r"input_index=-1 must be an integer >= 0"),
    ("pathway-input-index-float", lambda: pathway(mode="noise", input_index=1.5), ValueError,
     r"input_index=1.5 must be an integer"),
    ("pathway-input-index-mode", lambda: pathway(mode="freeze", input_index=0), ValueError,
     r"input_index=0 only applies to mode='noise', not mode='freeze'"),
    ("pathway-unit", lambda: pathway(unit="batch"), ValueError,
     r"unit='batch' is not valid; choose one of \('epoch', 'step'\)"),
    ("pathway-name-empty", lambda: pathway(name=""), ValueError, r"name='' is not valid"),
    ("pathway-name-int", lambda: pathway(name=5), ValueError, r"name=5 is not valid"),
    # ModeDeficit
    ("mode-pathway-int", lambda: mode(pathway=3), ValueError, r"pathway=3 is not valid: give one pathway name"),
    ("mode-pathway-list", lambda: mode(pathway=["a", "b"]), ValueError, r"pathway=\['a', 'b'\] is not valid"),
    ("mode-modes-repeated", lambda: mode(modes=[0, 0]), ValueError, r"modes=\[0, 0\] repeats mode\(s\) \[0\]"),
    ("mode-modes-repeated-np", lambda: mode(modes=[np.int64(1), 1, 2]), ValueError,
     r"modes=.* repeats mode\(s\) \[1\]"),
    ("mode-modes-negative", lambda: mode(modes=[-1]), ValueError,
     r"modes=\[-1\] must be one or more non-negative integer"),
    ("mode-modes-empty", lambda: mode(modes=[]), ValueError, r"modes=\[\] must be one or more"),
    ("mode-modes-string", lambda: mode(modes="0"), ValueError, r"modes='0' must be one or more"),
    ("mode-modes-float", lambda: mode(modes=[1.5]), ValueError, r"modes=\[1.5\] must be one or more"),
    ("mode-basis-string", lambda: mode(task_basis="svd"), ValueError,
     r"task_basis is a str; it must be a tuple \(U, S, V\)"),
    ("mode-basis-pair", lambda: mode(task_basis=(U, S)), ValueError, r"task_basis is a tuple of length 2"),
    ("mode-basis-none-entry", lambda: mode(task_basis=(U, None, V)), ValueError,
     r"task_basis: S is a NoneType; it must be a floating-point tensor"),
    ("mode-basis-int", lambda: mode(task_basis=(U.long(), S, V)), ValueError,
     r"task_basis: U is a Tensor; it must be a floating-point tensor"),
    ("mode-basis-u-1d", lambda: mode(task_basis=(U[:, 0], S, V)), ValueError,
     r"task_basis: U has shape \(15,\); it must be 2-D, \(out, r\)"),
    ("mode-basis-s-2d", lambda: mode(task_basis=(U, torch.diag(S), V)), ValueError,
     r"task_basis: S has shape \(8, 8\); it must be 1-D"),
    ("mode-basis-rank", lambda: mode(task_basis=(U[:, :5], S[:5], V)), ValueError,
     r"task_basis: U has 5 columns but V has 8"),
    ("mode-basis-s-length", lambda: mode(task_basis=(U, S[:3], V)), ValueError,
     r"task_basis: S has 3 values but U and V have r=8 columns"),
    ("mode-basis-nan", lambda: mode(task_basis=(U, S, V * NAN)), ValueError,
     r"task_basis: V holds NaN or infinite values"),
    ("mode-basis-not-orthonormal", lambda: mode(task_basis=(U * 2, S, V)), ValueError,
     r"task_basis: columns \[0\] of U are not orthonormal"),
    ("mode-basis-out-of-range", lambda: mode(modes=[8], task_basis=BASIS), ValueError,
     r"modes \[8\] are out of range: the task basis has 8 modes"),
    ("mode-unit", lambda: mode(unit="minute"), ValueError, r"unit='minute' is not valid"),
    # Window
    ("window-unit", lambda: Window(0, 3, "minute"), ValueError, r"unit='minute' is not valid"),
    ("window-unit-type", lambda: Window(0, 3, 5), ValueError, r"unit=5 is not valid"),
    ("window-start-float", lambda: Window(0.5, 3), ValueError,
     r"Window start=0.5 must be an integer number of epochs"),
    ("window-start-string", lambda: Window("0", 3), ValueError, r"Window start='0' must be an integer"),
    ("window-end-bool", lambda: Window(0, True), ValueError, r"Window end=True must be an integer"),
    ("window-start-negative", lambda: Window(-1, 3), ValueError, r"Window start=-1 must be >= 0"),
    ("window-empty", lambda: Window(5, 5), ValueError, r"Window \[5, 5\) is empty"),
    ("window-string", lambda: pathway(window="0-150"), ValueError, r"window='0-150' is not valid"),
    ("window-length", lambda: pathway(window=(0, 1, "step", 4)), ValueError,
     r"window=\(0, 1, 'step', 4\) must have 2 or 3 entries"),
    ("window-tuple-unit", lambda: pathway(window=(0, 1, "steps")), ValueError, r"window unit='steps' is not valid"),
    ("window-contradiction", lambda: pathway(window=Window(0, 1), unit="step"), ValueError,
     r"unit='step' contradicts the window"),
    # TaskSwitch
    ("switch-two-keys", lambda: TaskSwitch({"3": "a", 3: "b"}), ValueError,
     r"schedule keys '3' and 3 both mean epoch 3"),
    ("switch-unit", lambda: TaskSwitch({1: "a"}, unit="batch"), ValueError,
     r"unit='batch' is not valid; choose one of \('epoch', 'step'\)"),
    ("switch-empty", lambda: TaskSwitch({}), ValueError, r"schedule=\{\} must be a non-empty mapping"),
    ("switch-list", lambda: TaskSwitch([(1, "a")]), ValueError,
     r"schedule=\[\(1, 'a'\)\] must be a non-empty mapping"),
    ("switch-time-negative", lambda: TaskSwitch({-1: "a"}), ValueError,
     r"schedule time -1 must be a non-negative integer number of epochs"),
    ("switch-time-float", lambda: TaskSwitch({1.5: "a"}), ValueError, r"schedule time 1.5 must be"),
    ("switch-time-bool", lambda: TaskSwitch({True: "a"}), ValueError, r"schedule time True must be"),
    ("switch-task-int", lambda: TaskSwitch({1: 3}), ValueError, r"schedule\[1\]=3 must be a task name"),
    ("switch-initial-int", lambda: TaskSwitch({1: "a"}, initial=5), ValueError,
     r"initial=5 must be None or a task name"),
    ("switch-initial-empty", lambda: TaskSwitch({1: "a"}, initial=""), ValueError,
     r"initial='' must be None or a task name"),
    # WindowedDeficit (the base class a user subclasses)
    ("windowed-name", lambda: WindowedDeficit((0, 1), name=["a"]), ValueError, r"name=\['a'\] is not valid"),
    ("windowed-unit", lambda: WindowedDeficit((0, 1), unit="epochs"), ValueError, r"unit='epochs' is not valid"),
    ("windowed-window", lambda: WindowedDeficit(10), ValueError, r"window=10 is not valid; give lc.Window"),
    ("windowed-empty", lambda: WindowedDeficit((4, 2)), ValueError, r"Window \[4, 2\) is empty"),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_naming_the_argument(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert type(info.value) is error


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 25
    assert {c[0].split("-")[0] for c in CASES} == {"pathway", "mode", "window", "switch", "windowed"}
