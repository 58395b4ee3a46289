"""Arguments that the hand-written checks of the bundled models, datamodules and theory got wrong, now checked by
the shared ``_checks``: numpy integers count as integers, ``bool`` never counts as a number, infinities and strings
are refused with a message that names the argument, the bad value and what is valid."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lightning_critical as lc
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.theory import pathway_dynamics


@pytest.mark.parametrize(
    "make, match",
    [
        # a LinAlgError from the SVD of an infinite feature matrix before
        (lambda: lc.data.HierarchicalDataModule(feature_noise=float("inf")),
         r"feature_noise=inf is not valid: it must be a finite number >= 0"),
        # accepted before: the DataLoader failed later (2.5) or drew batches of one item (True)
        (lambda: lc.data.HierarchicalDataModule(batch_size=2.5),  # type: ignore[arg-type]  # the bad input
         r"batch_size=2.5 must be an integer \[1, 8\] or None, not float"),
        (lambda: lc.data.HierarchicalDataModule(batch_size=True), r"batch_size=True must be an integer \[1, 8\]"),
        # the one wording of every integer range (it said "between 1 and the 8 items" before)
        (lambda: lc.data.HierarchicalDataModule(batch_size=9), r"batch_size=9 must be an integer \[1, 8\] or None"),
        # accepted before: True counted as rank 1 / one observed entry
        (lambda: MatrixCompletionDataModule(size=10, n_observed=30, tasks={"a": {"rank": True}}),
         r"task 'a': rank=True must be an integer \[1, 10\], not bool"),
        (lambda: MatrixCompletionDataModule(size=10, n_observed=30,
                                            tasks={"a": 2, "b": {"subset_of": "a", "n_observed": True}}),
         r"task 'b': n_observed=True must be an integer \[1, 30\], not bool"),
        # accepted before: an extra key was ignored
        (lambda: MatrixCompletionDataModule(size=10, n_observed=30, tasks={"a": {"rank": 2, "n_observed": 5}}),
         r"task 'a': spec .* has keys besides 'rank'"),
        # accepted before: lr=True trained with lr 1; lr=inf and init_scale=inf gave nan weights
        (lambda: lc.models.MultiPathwayLinearNet(lr=True), r"lr=True is not valid: it must be a finite number > 0"),
        (lambda: lc.models.MultiPathwayLinearNet(init_scale=float("inf")),
         r"init_scale=inf is not valid: it must be a finite number > 0"),
        (lambda: DeepMatrixFactorization(size=4, lr=float("inf")),
         r"lr=inf is not valid: it must be a finite number > 0"),
        (lambda: DeepMatrixFactorization(size=4, init_scale=True),
         r"init_scale=True is not valid: it must be a finite number > 0, not bool"),
        # a TypeError from comparing a str with 0 before
        (lambda: lc.models.MultiPathwayLinearNet(lr="0.1"),  # type: ignore[arg-type]  # the bad input
         r"lr='0.1' is not valid: .* not str"),
        (lambda: lc.models.MultiPathwayLinearNet(pathways=27), r"pathways=27 must be an integer \[1, 26\]"),
        (lambda: lc.models.MultiPathwayLinearNet(nonlinearity="gelu"),
         r"nonlinearity='gelu' is not valid; choose one of \('tanh', 'relu'\) or None"),
    ],
)
def test_refused_with_a_message_naming_the_argument(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_integers_count_as_integers() -> None:
    # refused before ("must be an integer", "must be a count or distinct identifier names", "spec must be a rank")
    dm = MatrixCompletionDataModule(size=10, n_observed=np.int64(30), tasks={"a": np.int64(2), "b": 3})
    assert dm.n_observed == 30 and type(dm.n_observed) is int
    assert dm.rank("a") == 2 and len(dm.observations("a")[0]) == 30
    net = lc.models.MultiPathwayLinearNet(depth=2, width=8, pathways=np.int64(3))
    assert list(net.pathways) == ["a", "b", "c"]
    # accepted before, but the DataLoader then refused the numpy batch size
    loader = lc.data.HierarchicalDataModule(batch_size=np.int64(4)).train_dataloader()
    assert [len(x) for x, _ in loader] == [4, 4]


def test_set_task_refuses_an_unhashable_name_with_the_task_list() -> None:
    dm = MatrixCompletionDataModule(size=10, n_observed=30)
    with pytest.raises(ValueError, match=r"task=\['target'\] is not valid; choose one of \('pretrain', 'target'\)"):
        dm.set_task(["target"])  # type: ignore[arg-type]  # the bad input under test (a TypeError before)


@pytest.mark.parametrize(
    "deficits, match",
    [
        # True indexed the masks as a boolean array before: it silently deprived *both* pathways
        ({True: [(0, 1)]}, r"deficit pathway index=True must be an integer \[0, 1\], not bool"),
        ({(0, True): [(0, 1)]}, r"deficit mode index=True must be an integer \[0, 1\], not bool"),
        # an IndexError from numpy before
        ({1.0: [(0, 1)]}, r"deficit pathway index=1.0 must be an integer \[0, 1\], not float"),
        ({(0, 2): [(0, 1)]}, r"deficit mode index=2 must be an integer \[0, 1\]"),
        ({0: [(0, 1, "gate")]}, r"deficit mode='gate' is not valid; choose one of \('freeze', 'silence'\)"),
    ],
)
def test_theory_deficit_keys_are_checked(deficits: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pathway_dynamics([1.0, 0.5], depth=2, k0=0.1, lr=0.1, steps=3, deficits=deficits)


def test_theory_accepts_numpy_deficit_keys_with_the_same_result() -> None:
    plain_deficits: Any = {1: [(0, 3)], (0, 1): [(1, 2)]}  # a pathway and a single-mode lesion
    plain = pathway_dynamics([1.0, 0.5], 2, 0.1, 0.1, 5, deficits=plain_deficits)
    numpy_deficits: Any = {np.int64(1): [(0, 3)], (np.int64(0), np.int64(1)): [(1, 2)]}
    numpy_keys = pathway_dynamics([1.0, 0.5], 2, 0.1, 0.1, 5, deficits=numpy_deficits)
    assert np.array_equal(plain, numpy_keys)
