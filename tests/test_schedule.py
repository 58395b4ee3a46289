from typing import Any

import pytest

import lightning_critical as lc


def test_half_open_in_epochs_and_steps():
    w = lc.Window(2, 5)
    assert [e for e in range(8) if w.contains(epoch=e, step=0)] == [2, 3, 4]
    s = lc.Window(10, 12, unit="step")
    assert [t for t in range(15) if s.contains(epoch=0, step=t)] == [10, 11]
    assert lc.Window(3, None).contains(epoch=10**6, step=0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((5, 5), "empty"),
        ((6, 2), "empty"),
        ((-1, 3), "start=-1"),
        ((0.5, 3), "integer"),
        ((0, 3, "minute"), "unit='minute'"),
    ],
)
def test_bad_windows_name_the_value(args, match):
    with pytest.raises(ValueError, match=match):
        lc.Window(*args)


def test_coerce_and_overlap():
    assert lc.Window.coerce((1, 4)) == lc.Window(1, 4, "epoch")
    assert lc.Window.coerce((1, 4, "step")).unit == "step"
    assert lc.Window.coerce([1, 4], unit="step") == lc.Window(1, 4, "step")
    with pytest.raises(ValueError, match="window="):
        lc.Window.coerce("0-150")
    assert lc.Window(0, 5).overlaps(lc.Window(4, 9))
    assert not lc.Window(0, 5).overlaps(lc.Window(5, 9))
    # Mixed units need the number of steps per epoch.
    assert not lc.Window(0, 2).overlaps(lc.Window(20, 30, "step"), steps_per_epoch=10)
    assert lc.Window(0, 3).overlaps(lc.Window(20, 30, "step"), steps_per_epoch=10)


def test_numpy_integers_and_unit_conflicts():
    np = pytest.importorskip("numpy")
    w = lc.Window(np.int64(2), np.int64(5))
    assert (w.start, w.end) == (2, 5) and type(w.start) is int
    with pytest.raises(ValueError, match="unit='step' contradicts"):
        lc.Window.coerce(lc.Window(0, 5), unit="step")


def test_one_unit_check_for_windows_deficits_and_task_switches():
    from lightning_critical.schedule import check_unit

    for make in (lambda u: lc.Window(0, 1, u), lambda u: lc.Window.coerce((0, 1), u),
                 lambda u: lc.PathwayDeficit("a", (0, 1), unit=u), lambda u: lc.TaskSwitch({1: "a"}, unit=u)):
        with pytest.raises(ValueError, match=r"^unit='batch' is not valid; choose one of \('epoch', 'step'\)\.$"):
            make("batch")
    assert check_unit("epoch") == "epoch"
    # A wrong unit next to a Window is reported as a wrong unit, not as a contradiction.
    with pytest.raises(ValueError, match=r"unit='steps' is not valid"):
        lc.Window.coerce(lc.Window(0, 5, "step"), unit="steps")


def test_mixed_units_are_comparable_only_with_the_epoch_length():
    epochs, steps = lc.Window(0, 2), lc.Window(20, 30, "step")
    assert not epochs.comparable(steps) and epochs.comparable(steps, steps_per_epoch=10)
    assert epochs.comparable(lc.Window(5, 6))
    assert epochs.overlaps(steps)  # unknown: they may overlap


def test_schedule_is_a_piecewise_constant_function_of_epoch_or_step():
    by_epoch = lc.Schedule({10: "b", 0: "a", 20: "c"})
    assert list(by_epoch) == [0, 10, 20] and by_epoch == {0: "a", 10: "b", 20: "c"}
    assert [by_epoch.value_at(epoch=e, step=10**6) for e in (0, 9, 10, 19, 20, 500)] == ["a", "a", "b", "b", "c", "c"]
    by_step = lc.Schedule({"400": "target"}, unit="step")  # a JSON / YAML config's key
    assert by_step.value_at(epoch=99, step=399, default="pretrain") == "pretrain"
    assert by_step.value_at(epoch=0, step=400) == "target" and by_step.at(399) is None
    assert by_step != lc.Schedule({400: "target"}) and by_step == lc.Schedule({400: "target"}, unit="step")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({}, r"^schedule=\{\} must be a non-empty mapping \{time: value\}\.$"),
        ([(1, "a")], r"must be a non-empty mapping"),
        ({-1: "a"}, r"^schedule time -1 must be a non-negative integer number of epochs\.$"),
        ({2.5: "a"}, r"schedule time 2.5 must be"),
        ({True: "a"}, r"schedule time True must be"),
        ({"x": "a"}, r"schedule time 'x' must be"),
        ({"3": "a", 3: "b"}, r"schedule keys '3' and 3 both mean epoch 3; give each time once"),
    ],
)
def test_bad_schedules_name_the_value(changes, match):
    with pytest.raises(ValueError, match=match):
        lc.Schedule(changes)


def test_windows_and_schedules_share_the_unit_check_and_what_an_integer_time_is():
    np = pytest.importorskip("numpy")
    for make in (lambda u: lc.Window(0, 1, u), lambda u: lc.Schedule({1: "a"}, unit=u)):
        with pytest.raises(ValueError, match=r"^unit='batch' is not valid; choose one of \('epoch', 'step'\)\.$"):
            make("batch")
    good: Any
    for good in (np.int64(3), 3.0, 3):
        assert lc.Window(good, 5).start == 3 and list(lc.Schedule({good: "a"})) == [3]
    bad: Any
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="must be an integer number"):
            lc.Window(bad, 5)
        if bad != "3":  # digit strings are config keys: only a schedule takes them
            with pytest.raises(ValueError, match="must be a non-negative integer number"):
                lc.Schedule({bad: "a"})
    switch = lc.TaskSwitch({10: "b", 20: "c"}, unit="step", initial="a")
    schedule = lc.Schedule({10: "b", 20: "c"}, unit="step")
    assert [switch.task_at(t) for t in range(25)] == [schedule.at(t, "a") for t in range(25)]


def test_schedule_checks_its_values_with_the_given_check():
    def positive(label, value):
        if value <= 0:
            raise ValueError(f"{label}={value!r} must be > 0.")
        return value

    assert lc.Schedule({0: 1, 5: 2}, check_value=positive).at(7) == 2
    with pytest.raises(ValueError, match=r"^accumulate\[5\]=0 must be > 0\.$"):
        lc.Schedule({0: 1, 5: 0}, name="accumulate", check_value=positive)


def test_a_schedule_keeps_its_unit_where_a_mapping_is_taken():
    steps = lc.Schedule({400: "target"}, unit="step")
    assert lc.Schedule(steps).unit == "step" and lc.Schedule(steps, unit="step") == steps
    switch = lc.TaskSwitch(steps)
    assert switch.unit == "step" and switch.schedule == {400: "target"}
    assert repr(switch) == "TaskSwitch(schedule={400: 'target'}, unit='step')"
    with pytest.raises(ValueError, match=r"unit='epochs' is not valid"):
        lc.Schedule(steps, unit="epochs")
    with pytest.raises(ValueError, match=r"^unit='step' contradicts the schedule Schedule\(\{0: 'a'\}, unit='epoch'\)"):
        lc.TaskSwitch(lc.Schedule({0: "a"}), unit="step")
