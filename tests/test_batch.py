"""lightning_critical._batch: finding and replacing the input and the target in any batch structure."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, UserDict, namedtuple
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType

import pytest
import torch

from lightning_critical._batch import describe, locate, replace
from lightning_critical._batch_spec import BatchSpec

X, XB, Y = torch.zeros(4, 3), torch.ones(4, 3), torch.tensor([0, 1, 2, 3])
Triple = namedtuple("Triple", ["xa", "xb", "y"])


class Encoding(UserDict):
    """Stands in for a tokenizer's BatchEncoding (a UserDict subclass with its own attributes)."""

    def __init__(self, data, n_sequences=1):
        super().__init__(data)
        self.n_sequences = n_sequences


class Store(MutableMapping):
    """A MutableMapping whose default shallow copy shares its storage."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, k):
        return self._data[k]

    def __setitem__(self, k, v):
        self._data[k] = v

    def __delitem__(self, k):
        del self._data[k]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


class Frozen(Mapping):
    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, k):
        return self._data[k]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


@dataclasses.dataclass
class Sample:
    image: torch.Tensor
    label: torch.Tensor


@pytest.mark.parametrize(
    "batch, input_key, target_key",
    [
        ((X, XB, Y), 0, 2),
        ([X, XB, Y], 0, 2),
        (Triple(X, XB, Y), 0, 2),
        ((X, Y), 0, 1),
        ({"x": X, "y": Y}, "x", "y"),
        (OrderedDict(image=X, labels=Y), "image", "labels"),
        (UserDict({"input": X, "target": Y}), "input", "target"),
        (Encoding({"input_ids": X, "label": Y}), "input_ids", "label"),
        (Sample(X, Y), "image", "label"),
    ],
)
def test_default_input_and_target_and_replacement_leaves_the_original(batch, input_key, target_key):
    spec = BatchSpec()
    assert spec.input_key_of(batch) == input_key and spec.target_key_of(batch) == target_key
    assert spec.input(batch) is X and spec.target(batch) is Y
    new_y = Y.flip(0)
    out = spec.with_target(batch, new_y)
    assert type(out) is type(batch) and out is not batch
    assert spec.target(out) is new_y and spec.input(out) is X
    assert spec.target(batch) is Y  # the original is untouched
    if isinstance(batch, Encoding):
        assert out.n_sequences == 1  # the mapping's own attributes survive the copy


def test_three_element_tuple_targets_the_last_not_the_second():
    # Issue item 14: (xa, xb, y) used to shuffle xb (default target index 1).
    assert locate((X, XB, Y), "target") == 2
    assert locate((X, XB, Y), "target", key=1) == 1
    assert locate((X, XB, Y), "target", key=-1) == 2  # negative indices are normalised


def test_explicit_input_key_that_is_the_default_target_needs_target_key():
    with pytest.raises(ValueError, match="target_key"):
        BatchSpec(input_key=1).target((Y, X))
    assert BatchSpec(input_key=1, target_key=0).target((Y, X)) is Y


@pytest.mark.parametrize(
    "batch, spec, match",
    [
        ((X, Y), BatchSpec(input_key=5), r"input_key=5 is not an index .* tuple of 2 elements: \[0\] tensor \(4, 3\)"),
        ((X, Y), BatchSpec(input_key="x"), r"input_key='x' is not an index"),
        ({"a": X, "b": Y}, BatchSpec(), r"none of the default input keys .* its keys are \['a', 'b'\].*input_key"),
        ({"x": X, "b": Y}, BatchSpec(), r"none of the default target keys .* Pass target_key"),
        ({"x": X}, BatchSpec(input_key="img"), r"input_key='img' is not in the batch; its keys are \['x'\]"),
        (X, BatchSpec(), r"holds no target"),
        ((X,), BatchSpec(), r"no element is left for the target.*target_key"),
        (X, BatchSpec(input_key=0), r"input_key=0 cannot index the batch.*single tensor"),
        ({"x": [1, 2], "y": Y}, BatchSpec(), r"input .*'x'.* is a list, not a tensor"),
        (object(), BatchSpec(), r"cannot find the input in a object"),
    ],
)
def test_lookup_errors_name_the_argument_and_list_the_batch(batch, spec, match):
    with pytest.raises(ValueError, match=match):
        spec.input(batch) if "target" not in match else spec.target(batch)


def test_replacing_in_a_mapping_that_shares_storage_is_refused_and_undone():
    store = Store({"x": X, "y": Y})
    with pytest.raises(TypeError, match="shares storage"):
        replace(store, "y", Y.flip(0))
    assert store["y"] is Y  # undone
    # an immutable mapping is rebuilt from a dict when its constructor takes one ...
    frozen = Frozen({"x": X, "y": Y})
    out = replace(frozen, "x", XB)
    assert type(out) is Frozen and out["x"] is XB and frozen["x"] is X
    assert replace(MappingProxyType({"x": X}), "x", XB)["x"] is XB

    # ... and refused clearly when it cannot be
    class Keyed(Frozen):
        def __init__(self, data, owner):
            super().__init__(data)

    with pytest.raises(TypeError, match="cannot rebuild a Keyed"):
        replace(Keyed({"x": X}, "me"), "x", XB)


def test_model_inputs_default_and_callable():
    assert BatchSpec().model_inputs((X, Y)) == (X,)
    two = BatchSpec(inputs=lambda b: (b[0], b[1]))
    assert two.model_inputs((X, XB, Y)) == (X, XB)
    assert BatchSpec(inputs=lambda b: b["x"]).model_inputs({"x": X}) == (X,)
    with pytest.raises(ValueError, match="inputs\\(batch\\) must return"):
        BatchSpec(inputs=lambda b: None).model_inputs((X, Y))
    with pytest.raises(ValueError, match="give one of them"):
        BatchSpec(input_key=0, inputs=lambda b: b)
    with pytest.raises(ValueError, match="inputs=3 is not valid"):
        BatchSpec(inputs=3)  # type: ignore[arg-type]  # the bad input under test


def test_describe():
    assert describe(Triple(X, XB, Y)).startswith("a Triple of 3 elements: [0] tensor (4, 3) float32")
    assert (
        describe(Sample(X, Y))
        == "a Sample (dataclass) with fields 'image' tensor (4, 3) float32, 'label' tensor (4,) int64"
    )
