"""Pool ids <-> store positions (thresher.stores.ids), on real multi-shard stores, against plain Python lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from thresher.exceptions import InputDataError, ParameterError
from thresher.stores.ids import IdPositions, find_positions, ids_at, ids_to_numpy, store_ids_at


@pytest.mark.parametrize("kind", ["int", "str"])
def test_every_conversion_agrees_with_the_store_id_list(make_store, kind):
    n = 57
    ids = [1000 + 7 * i for i in range(n)] if kind == "int" else [f"row-{(31 * i) % n:03d}" for i in range(n)]
    store = make_store(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), ids=ids, n_shards=4)
    assert store.n_shards == 4 and store.ids().tolist() == ids
    positions = np.array([56, 0, 13, 13, 40, 2])
    assert store_ids_at(store, positions).tolist() == [ids[p] for p in positions]
    assert store_ids_at(store, np.empty(0, np.int64)).tolist() == []
    wanted = [ids[p] for p in (44, 3, 20)]
    np.testing.assert_array_equal(store.positions_of(wanted), [44, 3, 20])
    np.testing.assert_array_equal(IdPositions(store.ids(), "x").positions_of(np.array(wanted, dtype=object if kind == "str" else np.int64)), [44, 3, 20])
    unknown = -5 if kind == "int" else "nope"
    assert find_positions(store, wanted + [unknown]) == {ids[44]: 44, ids[3]: 3, ids[20]: 20}
    with pytest.raises(InputDataError, match=repr(unknown)):
        store.positions_of([wanted[0], unknown])


def test_ids_at_an_id_column_marks_missing_positions_and_refuses_out_of_range():
    ints = pa.chunked_array([pa.array([10, 11]), pa.array([12])])
    assert ids_at(ints, np.array([[2, -1], [0, 1]])).tolist() == [[12, -1], [10, 11]]
    strs = pa.chunked_array([pa.array(["a", "b", "c"])])
    assert ids_at(strs, np.array([1, -1, 0])).tolist() == ["b", None, "a"]
    with pytest.raises(ParameterError, match=r"\[-1, 3\) for the id map"):
        ids_at(strs, np.array([3]))
    assert ids_to_numpy(ints).dtype == np.int64 and ids_to_numpy(strs).tolist() == ["a", "b", "c"]
