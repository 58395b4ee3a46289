"""Building one run's objects from a sweep's spec (``sweep/build.py``): factories called with what
they name, results checked, deficit templates rebuilt through their constructor for each window."""

from __future__ import annotations

import functools
from typing import Any, cast

import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.sweep.build import (
    build_callbacks,
    build_datamodule,
    build_deficits,
    build_model,
    make_deficit,
)
from lightning_critical.sweep.spec import RunSpec, SweepSpec


class Span(WindowedDeficit):
    """Derives a setting from its window in ``__init__``: a copy re-windowed behind its back would keep the old one."""

    def __init__(self, window: Any, seed: int | None = None) -> None:
        super().__init__(window)
        self.length = cast(int, self.window.end) - self.window.start
        self.seed = seed


class Tiny(pl.LightningModule):
    def __init__(self, seed: int, width: int = 2) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 1)
        self.seed = seed


def test_a_template_is_rebuilt_through_its_constructor_for_each_window():
    template = Span((0, 2))
    run = RunSpec((lc.Window(3, 8), lc.Window(10, 11)), seed=4)
    made = build_deficits(SweepSpec(model=Tiny, deficit=template), run)
    assert [(d.window, d.length, d.seed) for d in made] == [(lc.Window(3, 8), 5, 4), (lc.Window(10, 11), 1, 4)]
    assert (template.window, template.length, template.seed) == (lc.Window(0, 2), 2, None)
    assert make_deficit(Span((0, 2), seed=1), lc.Window(1, 2), {"seed": 4}).seed == 1  # an explicit seed stays


def test_a_factory_gets_the_window_the_seed_and_the_swept_values_it_names():
    calls = []

    def factory(window: lc.Window, seed: int, depth: int) -> list[Any]:
        calls.append((window, seed, depth))
        return [Span(window), lc.InputDeficit("noise", window)]

    run = RunSpec((lc.Window(0, 3),), seed=2, params=(("depth", 5), ("lr", 0.1)))
    made = build_deficits(SweepSpec(model=Tiny, deficit=factory), run)
    assert calls == [(lc.Window(0, 3), 2, 5)]
    assert [d.seed for d in made] == [2, 2]  # built without a seed: rebuilt with the run's
    assert build_deficits(SweepSpec(model=Tiny, deficit=factory), RunSpec((), seed=2)) == []  # the baseline


def test_model_datamodule_and_callbacks_are_built_and_checked():
    run = RunSpec((lc.Window(0, 1),), seed=3, params=(("width", 4),))
    model = build_model(SweepSpec(model=functools.partial(Tiny, width=6)), run)
    assert model.seed == 3 and model.layer.in_features == 6  # a bound keyword stays bound
    assert build_datamodule(SweepSpec(model=Tiny), run) is None
    seen: list[tuple[Any, int]] = []

    def callbacks(windows: Any, seed: int) -> list[pl.Callback]:
        seen.append((windows, seed))
        return [pl.Callback()]

    spec = SweepSpec(model=Tiny, callbacks=callbacks)
    assert len(build_callbacks(spec, run)) == 1 and seen == [((lc.Window(0, 1),), 3)]
    with pytest.raises(TypeError, match=r"model factory test_sweep_build:.*<lambda> returned int, not a Light"):
        build_model(SweepSpec(model=lambda seed: seed), run)
    with pytest.raises(TypeError, match=r"callbacks factory .* returned str, not a Lightning Callback"):
        build_callbacks(SweepSpec(model=Tiny, callbacks=lambda: ["x"]), run)
    with pytest.raises(TypeError, match=r"deficit=3 is not valid: give a WindowedDeficit"):
        build_deficits(SweepSpec(model=Tiny, deficit=3), run)
