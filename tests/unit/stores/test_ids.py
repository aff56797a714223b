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


# -- the numpy id map (issue 13): against a dict oracle, with collisions forced ----------------------------------


def _dict_oracle(ids):
    lookup = {}
    for position, key in enumerate(ids):
        lookup.setdefault(key, position)  # the first position of a repeated id, as the map documents
    return lookup


def _colliding_hash(ids):
    """A deliberately terrible hash: the length of the id modulo 3, so most ids share a key with many others."""
    return np.array([len(s) % 3 for s in ids], dtype=np.uint64)


@pytest.mark.parametrize("hash_ids", [None, _colliding_hash], ids=["xxh64", "colliding"])
@pytest.mark.parametrize("kind", ["int", "str"])
def test_id_map_agrees_with_a_dict_on_random_ids(kind, hash_ids):
    from thresher.stores.ids import hash_text_ids

    rng = np.random.default_rng(7)
    n = 3_000
    raw = rng.choice(10**12, size=n, replace=False)
    ids = raw.astype(np.int64) if kind == "int" else np.asarray([f"doc/{v:x}" + "é" * int(v % 4) for v in raw], dtype=object)
    oracle = _dict_oracle(ids.tolist())
    mapping = IdPositions(ids, "the test ids", hash_ids=hash_ids or hash_text_ids)
    wanted = ids[rng.permutation(n)[:1_000]]
    got = mapping.positions_of(wanted)
    assert got.dtype == np.int64
    assert got.tolist() == [oracle[k] for k in wanted.tolist()]
    assert mapping.positions_of(list(wanted[:5])).tolist() == [oracle[k] for k in wanted[:5].tolist()]  # a list, not an array
    assert mapping.positions_of(pa.array(wanted[:5].tolist())).tolist() == [oracle[k] for k in wanted[:5].tolist()]  # an Arrow column
    assert mapping.nbytes <= 12 * n  # 8-byte keys + int32 positions, not a dict of n Python objects
    missing = -1 if kind == "int" else "doc/absent"
    with pytest.raises(InputDataError, match=f"id {missing!r} is not in the test ids"):
        mapping.positions_of(np.asarray([wanted[0], missing], dtype=ids.dtype))


def test_a_colliding_hash_never_returns_another_ids_position(make_store):
    """Two ids with the same key: each finds its own position; an id absent but sharing the key is unknown."""
    ids = ["aa", "bb", "cc", "dddd", "e"]  # lengths 2, 2, 2, 4, 1: keys 2, 2, 2, 1, 1 under the colliding hash
    mapping = IdPositions(np.asarray(ids, dtype=object), "x", hash_ids=_colliding_hash)
    assert mapping.positions_of(["cc", "bb", "aa", "e", "dddd"]).tolist() == [2, 1, 0, 4, 3]
    with pytest.raises(InputDataError, match="id 'zz' is not in x"):
        mapping.positions_of(["aa", "zz"])  # 'zz' hashes like 'aa', 'bb' and 'cc' but is none of them
    store = make_store(np.eye(5, dtype=np.float32), ids=ids, n_shards=3)
    streamed = IdPositions.of_store(store, "the store", hash_ids=_colliding_hash)
    assert streamed.positions_of(["e", "cc", "dddd", "aa"]).tolist() == [4, 2, 3, 0]


def test_ids_of_another_kind_are_unknown_not_converted(make_store):
    ints = make_store(np.eye(4, dtype=np.float32), ids=[1, 2, 3, 4], n_shards=2, name="ints")
    with pytest.raises(InputDataError, match=r"id '2' is not in the embedding store"):
        ints.positions_of(["2"])  # a string is never the integer it spells
    with pytest.raises(InputDataError, match=r"id True is not in"):
        ints.positions_of([True])
    strs = make_store(np.eye(3, dtype=np.float32), ids=["1", "2", "3"], n_shards=2, name="strs")
    with pytest.raises(InputDataError, match=r"id 2 is not in the embedding store"):
        strs.positions_of([2])
    assert strs.positions_of(np.asarray(["3", "1"])).tolist() == [2, 0]  # a numpy unicode array works as str ids
    assert ints.positions_of(np.asarray([4, 1], dtype=np.int32)).tolist() == [3, 0]
    assert ints.positions_of([]).tolist() == []


@pytest.mark.parametrize("hash_ids", [None, _colliding_hash], ids=["xxh64", "colliding"])
def test_first_duplicate_finds_true_repeats_only(hash_ids):
    from thresher.stores.ids import first_duplicate, hash_text_ids, id_keys

    ids = np.asarray(["a", "bb", "cc", "dd", "a", "ee", "cc", "a"], dtype=object)
    keys = id_keys(ids, hash_ids=hash_ids or hash_text_ids)
    value, positions = first_duplicate(keys, lambda p: ids[p])
    assert value == "a" and positions.tolist() == [0, 4, 7]  # "a" repeats first (at 4), before "cc" (at 6)
    unique = np.asarray(["aa", "bb", "cc", "x"], dtype=object)  # collide under the bad hash, all different
    assert first_duplicate(id_keys(unique, hash_ids=hash_ids or hash_text_ids), lambda p: unique[p]) is None
    ints = np.asarray([5, 9, 2, 9], dtype=np.int64)
    value, positions = first_duplicate(id_keys(ints), lambda p: ints[p])
    assert value == 9 and positions.tolist() == [1, 3]
