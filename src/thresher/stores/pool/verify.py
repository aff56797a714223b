"""Checking that a pool's files are the ones a store was made from."""

from __future__ import annotations

import os

from thresher.exceptions import InputDataError
from thresher.fingerprint import fingerprint_of
from thresher.stores.pool.core import FINGERPRINT_VERSION, Pool
from thresher.stores.pool.fs import content_key, filesystem, is_local
from thresher.stores.pool.hf_datasets import saved_fingerprint


def check_pool_files(pool: Pool, where: str) -> None:
    """Refuse a pool whose files changed since ``where`` (an embedding store) was made from them.

    Cheap when nothing changed: a local file with the recorded size and
    mtime_ns is taken as unchanged; any other is hashed again and must give
    the recorded content key (so a file only touched, or copied elsewhere
    with the same bytes, is accepted). Remote files are compared by the
    filesystem's checksum. A description without per-file records (written
    before they were kept) is checked by recomputing the pool's whole
    fingerprint, which hashes every file.

    Raises
    ------
    InputDataError
        Naming the first changed or missing file and ``where``.
    """
    if pool.files is None:
        if pool.kind == "dataset":
            return  # an in-memory dataset: reopen_pool checked its rows and columns against the description
        try:
            verify_fingerprint(pool)
        except InputDataError:
            raise InputDataError(
                f"The pool files of {where} changed since they were embedded (the pool's fingerprint differs); re-embed them or restore the files."
            ) from None
        return
    for record in pool.files:
        source = record["source"]
        fs, path = filesystem(source, pool.storage_options)
        if is_local(fs):
            try:
                stat = os.stat(path)
            except OSError:
                raise InputDataError(f"Pool file {source} embedded into {where} is missing; restore it or re-embed the pool.") from None
            if stat.st_size == record.get("size") and stat.st_mtime_ns == record.get("mtime_ns"):
                continue
        try:
            key = content_key(source, pool.storage_options)
        except (OSError, FileNotFoundError):
            raise InputDataError(f"Pool file {source} embedded into {where} cannot be read; restore it or re-embed the pool.") from None
        if key != record.get("checksum"):
            raise InputDataError(
                f"Pool file {source} changed since it was embedded into {where} (content differs); re-embed it or restore the file."
            )


def verify_fingerprint(pool: Pool) -> None:
    if pool.kind == "files":
        sources = list(dict.fromkeys(p.source for p in pool.partitions))
        formats = {p.source: p.format for p in pool.partitions}
        inputs = [f"{pool.names[s]}|{formats[s]}|{content_key(s, pool.storage_options)}" for s in sources]
        fingerprint = fingerprint_of("pool", FINGERPRINT_VERSION, {"id_column": pool.id_column}, inputs)
    elif pool.kind == "hf_disk":
        source = pool.partitions[0].source
        fingerprint = saved_fingerprint(source, pool.storage_options, pool.id_column, pool.names[source])
    else:
        return  # the reloaded dataset was checked against the description's row count and columns
    if fingerprint != pool.fingerprint:
        raise InputDataError(f"The pool's files changed since it was described (fingerprint {fingerprint}, described {pool.fingerprint}).")
