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
