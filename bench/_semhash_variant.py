"""One SemHash 0.5 self-deduplication of pre-computed vectors, run by bench_semdedup.py with SemHash's own Python.

SemHash is no runtime dependency of thresher: it is in the ``bench`` extra (``pip install -e .[bench]``;
``pip install --dry-run`` showed it adds packages and changes none of the project's), or install it in a
separate virtual environment (``python -m venv /tmp/semhash-venv && /tmp/semhash-venv/bin/pip install
semhash==0.5.0``). Pass the interpreter to ``bench/bench_semdedup.py --semhash-python``. Needs only numpy and semhash.

    python _semhash_variant.py VECTORS.npy BACKEND THRESHOLD OUT.npy   ->   one JSON line (seconds, rows removed)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    from semhash import SemHash
    from vicinity import Backend

    vectors, backend, threshold, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    x = np.load(vectors).astype(np.float32)
    records = [str(i) for i in range(len(x))]  # distinct: SemHash's exact-text grouping removes nothing
    started = time.perf_counter()
    index = SemHash.from_embeddings(x, records, model=None, ann_backend=Backend(backend))
    result = index.self_deduplicate(threshold=threshold)
    seconds = time.perf_counter() - started
    removed = np.array(sorted(int(r.record) for r in result.filtered), dtype=np.int64)
    np.save(out, removed)
    print(json.dumps({"seconds": seconds, "removed": int(len(removed))}))  # peak memory: sampled by the caller


if __name__ == "__main__":
    main()
