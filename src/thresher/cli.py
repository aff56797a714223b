"""The ``thresher`` command line: one thin command per pipeline function.

Every command validates its options and calls the Python function of the same
name; :class:`_Group` turns whatever it raises into a one-line message on
stderr: exit 2 for the user's input, 1 for the environment or an internal
error, 130 for Ctrl-C (never a traceback unless ``THRESHER_DEBUG=1``).
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from thresher.cli_steps import Convert, build_config, old_spelling, step_options
from thresher.exceptions import ThresherError, ThresherWarning
from thresher.pipeline.steps import STEPS


EXIT_INPUT = 2  # the user's input (options, files, specs): fix the command
EXIT_ENVIRONMENT = 1  # the machine (disk, permissions, memory, network, packages) or a bug: the same command may work later
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)


def _debug() -> bool:
    return os.environ.get("THRESHER_DEBUG", "") not in ("", "0")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class _Group(click.Group):
    """The CLI boundary: whatever a command raises becomes one line on stderr and an exit code, never a traceback.

    Exit 2 for the user's input (:class:`ThresherError`, click's usage errors), 1 for the
    environment (``OSError`` including disk full, permissions and refused connections;
    ``MemoryError``; :class:`~thresher.exceptions.EnvironmentProblemError`) and for unexpected
    internal errors, 130 for Ctrl-C. Output locks are context managers, so they are released
    on the way out and the same command resumes. ``THRESHER_DEBUG=1`` re-raises instead, with
    the traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click prints these itself (usage errors exit 2)
        except KeyboardInterrupt:
            if _debug():
                raise
            click.echo("interrupted; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if _debug():
                raise
            message, code = _describe_failure(exc)
            click.echo(f"error: {_one_line(message)}", err=True)
            sys.exit(code)


def _describe_failure(exc: Exception) -> tuple[str, int]:
    """The one-line message and exit code for an exception that reached the CLI boundary."""
    if isinstance(exc, ThresherError):
        return str(exc), getattr(exc, "exit_code", EXIT_INPUT)
    if isinstance(exc, MemoryError):
        return f"out of memory ({_one_line(str(exc)) or 'MemoryError'}); free memory or lower the batch, block or partition size", EXIT_ENVIRONMENT
    if isinstance(exc, OSError):  # the environment (disk full, permissions, a path under a file, a refused connection)
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or exc}{where}", EXIT_ENVIRONMENT
    detail = _one_line(str(exc))
    return (f"internal error ({type(exc).__name__}){': ' + detail if detail else ''} — "
            "rerun with THRESHER_DEBUG=1 for the traceback, and report it"), EXIT_ENVIRONMENT


def _offline_by_default() -> None:
    # thresher never fetches from a hub at run time; without these a lookup can hang a minute before failing.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="thresher")
def main() -> None:
    """thresher: embed a data pool, index it, select from it, and write curated Arrow shards."""
    _offline_by_default()
    _warnings_as_lines()


def _warnings_as_lines() -> None:
    """thresher's own warnings print as one line, ``warning: ...``, as errors do; other libraries' warnings as Python prints them."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "_thresher", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings.showwarning's signature)
        if issubclass(category, ThresherWarning):
            click.echo(f"warning: {_one_line(str(message))}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    show._thresher = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _check_slurm(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read the --slurm file when the command line is parsed, so a bad one is refused before any work."""
    if value is not None:
        from thresher.jobs.cluster import read_slurm_config

        read_slurm_config(value)
    return value


def _cluster_options(f):
    f = click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786). Default: an in-process local cluster.")(f)
    f = click.option("--workers", type=int, default=None, help="Local worker processes (default: one per 4 cores), or SLURM jobs with --slurm.")(f)
    f = click.option("--slurm", type=click.Path(exists=True, dir_okay=False), default=None, callback=_check_slurm,
                     help="YAML file of dask_jobqueue.SLURMCluster arguments.")(f)
    f = click.option("--local", is_flag=True, help="Run in this process without Dask (debugging).")(f)
    return f


def _executor(scheduler: str | None, workers: int | None, slurm: str | None, local: bool, quiet: bool):
    """The :class:`thresher.jobs.executor.Executor` the cluster options name."""
    from thresher.jobs.executor import Executor

    return Executor.from_settings(scheduler=scheduler, workers=workers, slurm=slurm, local=local, progress=not quiet)


@main.command()
@click.option("--pool", "pool", required=True, multiple=True, help="Pool files, globs, directories, a save_to_disk folder or fsspec URLs (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output embedding-store directory.")
@click.option("--text", default=None, help='Text template over columns, e.g. "{instruction}\\n\\n{response}" (\\n and \\t are unescaped).')
@click.option("--text-column", default=None, help="Column holding the text (default: 'text' when no other text option is given).")
@click.option("--messages-column", default=None, help="Column holding chat messages (list of {role, content}).")
@click.option("--chat-format", type=click.Choice(["tulu", "plain"]), default="tulu", show_default=True)
@click.option("--id-column", default=None, help="Column with the pool's stable ids (default: derived from file and row).")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk"]), default="auto", show_default=True)
@click.option("--split", default=None, help="Split of a DatasetDict folder.")
@click.option("--model", default="default", show_default=True, help="Model path or name (offline); 'default' is the bundled all-MiniLM-L6-v2.")
@click.option("--pooling", default=None, help="mean, weighted_mean, last_token, cls or max (default: the model's own).")
@click.option("--layer", type=int, default=-1, show_default=True, help="Hidden layer to pool (-1 = last).")
@click.option("--no-normalize", is_flag=True, help="Keep vectors unnormalised (default: L2-normalised).")
@click.option("--max-length", type=int, default=None, help="Max tokens per text (longer ones are truncated and counted).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="Storage dtype of the vectors.")
@click.option("--backend", type=click.Choice(["torch", "onnx-int8"]), default="torch", show_default=True,
              help='What runs the model: torch, or onnx-int8 (int8 weights in ONNX Runtime on CPU, ~2.5x faster; pip install "thresher[onnx]").')
@click.option("--quality-gate", type=click.Choice(["refuse", "warn"]), default="refuse", show_default=True,
              help="onnx-int8: when the int8 vectors of the first 256 rows miss the cosine gate to float32 (median 0.99, 1st percentile 0.96).")
@click.option("--partition-rows", type=int, default=None, help="Rows per partition / task / shard (default 50,000).")
@click.option("--overwrite", is_flag=True, help="Replace an existing thresher artefact in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--worker-resources", "worker_resources", multiple=True,
              help="NAME=N: Dask worker resources each embedding task needs, e.g. GPU=1 (repeatable; workers declare them with --resources).")
@_cluster_options
def embed(pool, out, text, text_column, messages_column, chat_format, id_column, fmt, split, model, pooling, layer, no_normalize,
          max_length, batch_size, device, dtype, backend, quality_gate, partition_rows, overwrite, quiet, worker_resources, scheduler, workers,
          slurm, local) -> None:
    """Embed a data pool into an embedding store (a Dask job, one task per partition)."""
    from thresher.pipeline.embed import embed as run

    if text is not None:
        text = codecs.decode(text, "unicode_escape") if "\\" in text else text
    store = run(
        list(pool) if len(pool) > 1 else pool[0], out, text=text, text_column=text_column, messages_column=messages_column,
        chat_format=chat_format, id_column=id_column, format=fmt, split=split, model=model, pooling=pooling, layer=layer,
        normalize=not no_normalize, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype, backend=backend,
        quality_gate=quality_gate, partition_rows=partition_rows, executor=_executor(scheduler, workers, slurm, local, quiet),
        resources=_parse_pairs(worker_resources, "--worker-resources", float) or None, overwrite=overwrite,
    )
    m = store.manifest
    click.echo(f"embedded {store.n_rows} rows into {store.path} ({store.n_shards} shards, dim {store.dim}, "
               f"{m.get('n_truncated', 0)} truncated, {m.get('wall_seconds', 0)} s)")
    skipped = (m.get("pool") or {}).get("skipped") or []
    if skipped:
        shown = "".join(f"\n  {s}" for s in skipped[:20]) + (f"\n  ... and {len(skipped) - 20} more (see manifest.json)" if len(skipped) > 20 else "")
        click.echo(f"skipped {len(skipped)} path{'s' if len(skipped) > 1 else ''} in the pool's directories:{shown}")


@main.group()
def embeddings() -> None:
    """Embedding stores made elsewhere: bring your own vectors."""


@embeddings.command("import")
@click.argument("vectors", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output embedding-store directory.")
@click.option("--model", required=True, help="Name of the model that made the vectors (recorded as given).")
@click.option("--ids", "ids", multiple=True, type=click.Path(),
              help="Ids file(s) beside .npy vectors, in order: Parquet/Arrow/JSON Lines (--id-column), .npy of ids, or .txt of one id a line (repeatable).")
@click.option("--id-column", default="id", show_default=True, help="Id column of Parquet/Arrow/JSON Lines files.")
@click.option("--vector-column", default="embedding", show_default=True, help="Vector column of Parquet/Arrow files (list or fixed-size list of floats).")
@click.option("--pooling", default=None, help="How the model pooled token states (recorded as given).")
@click.option("--normalized/--no-normalized", default=None,
              help="State whether rows are L2-normalised (checked when stated; default: detected from the rows).")
@click.option("--normalize", is_flag=True, help="L2-normalise every row on import.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="Storage dtype of the vectors.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None, help="Rows per store shard (default 50,000).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None, help="Rows read at once (default 65,536).")
@click.option("--overwrite", is_flag=True, help="Replace an existing thresher embedding store in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embeddings_import(vectors, out, model, ids, id_column, vector_column, pooling, normalized, normalize, dtype, shard_rows, batch_rows,
                      overwrite, quiet) -> None:
    """Import ids + vectors (Parquet, Arrow IPC or .npy files) into an embedding store, streaming in bounded memory."""
    from thresher.stores.embedding_import import import_embeddings

    store = import_embeddings(list(vectors), out, model=model, ids=list(ids) or None, id_column=id_column, vector_column=vector_column,
                              pooling=pooling, normalized=normalized, normalize=normalize, dtype=dtype, shard_rows=shard_rows,
                              batch_rows=batch_rows, overwrite=overwrite, progress=not quiet)
    click.echo(f"imported {store.n_rows} rows into {store.path} ({store.n_shards} shards, dim {store.dim}, {store.dtype}, "
               f"{'L2-normalised' if store.normalized else 'not normalised'}, model {store.model!r})")


@main.command()
@click.option("--embeddings", required=True, type=click.Path(exists=True, file_okay=False), help="Embedding-store directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output index directory.")
@click.option("--index-type", default="auto", show_default=True, help="auto, flat, or a FAISS factory string (e.g. IVF1024,PQ32x8).")
@click.option("--metric", type=click.Choice(["ip", "l2"]), default=None, help="Default: ip for normalised stores, else l2.")
@click.option("--memory-budget", type=int, default=None, help="Bytes the index may use (default THRESHER_MEMORY_BUDGET or 4 GiB).")
@click.option("--nprobe", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def index(embeddings, out, index_type, metric, memory_budget, nprobe, seed, overwrite) -> None:
    """Build a FAISS index over an embedding store, with its id map and measured recall@10."""
    from thresher.stores import open_embedding_store
    from thresher.stores.index import build_index

    built = build_index(open_embedding_store(embeddings), out, index_type=index_type, metric=metric,
                        memory_budget_bytes=memory_budget, nprobe=nprobe, seed=seed, overwrite=overwrite)
    m = built.manifest
    click.echo(f"indexed {m['n_rows']} vectors into {out} ({m['factory']}, metric {m['metric']}, recall@10 {m.get('recall_at_10')})")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--rows", "n_rows", type=click.IntRange(min=0), default=5, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify", is_flag=True, help="Re-check every shard's checksum.")
def inspect(path, n_rows, as_json, verify) -> None:
    """Say what an artefact is: its manifest, counts, and a few rows."""
    from thresher.describe import describe_artifact

    click.echo(describe_artifact(Path(path), n_rows=n_rows, as_json=as_json, verify=verify))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False), help="Output page (default: PATH/report.html).")
@click.option("--column", "columns", multiple=True, help="Composition column (repeatable; default: the spec's report.columns, else auto-detected).")
@click.option("--map-rows", type=click.IntRange(min=2), default=5000, show_default=True, help="Pool rows (a seeded sample) on the 2-D map.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--explore/--no-explore", "explore", default=None,
              help="Also write the interactive explore page as explore.html beside the report, and link it from the report "
                   "(default: the run spec's report.explore, true unless set false; off for other artefacts).")
def report(path, html_path, columns, map_rows, seed, explore) -> None:
    """Write a static HTML report of a run directory, curated shards or an embedding store."""
    from thresher.report import write_report

    out = write_report(path, html_path, columns=list(columns) or None, map_rows=map_rows, seed=seed, explore=explore)
    click.echo(f"report written to {out}")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Output page (default for a run directory: PATH/explore.html, which its report links to).")
@click.option("--map-rows", type=click.IntRange(min=2), default=20_000, show_default=True, help="Pool rows (a seeded sample) on the map.")
@click.option("--table-rows", type=click.IntRange(min=0), default=5_000, show_default=True,
              help="Rows of the final output (a seeded sample) embedded in the table.")
@click.option("--text-chars", type=click.IntRange(min=1), default=500, show_default=True, help="Texts are cut to this many characters.")
@click.option("--method", type=click.Choice(["auto", "umap", "pca"]), default="auto", show_default=True,
              help="The map's projection (auto: UMAP when umap-learn is installed and the sample is small enough, else PCA).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def explore(path, out, map_rows, table_rows, text_chars, method, seed) -> None:
    """Write an interactive, self-contained HTML page of a run's selection: map, per-row reasons, searchable table."""
    from thresher.explore import explore as write_explore

    page = write_explore(path, out, map_rows=map_rows, table_rows=table_rows, text_chars=text_chars,
                         map_text_chars=min(200, text_chars), method=method, seed=seed)
    click.echo(f"explore page written to {page}")


def _parse_budget(value: str) -> int | float:
    if value.lower() == "all":
        return 1.0
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"must be a count (10000), a fraction of the pool (0.1) or 'all'; got {value!r}", param_hint="'--budget'") from None


def _parse_pairs(values: tuple[str, ...], what: str, cast=str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{what} must look like NAME=VALUE; got {item!r}")
        if name in out:
            raise click.BadParameter(f"{what} names {name!r} twice")
        try:
            out[name] = cast(value)
        except ValueError:
            raise click.BadParameter(f"{what} {item!r} has a value that is not a {cast.__name__}") from None
    return out


@main.group()
def select() -> None:
    """Select rows of a pool with a selector and write curated shards."""


def _pool_and_out(what: str = "The pool's embedding store."):
    """The options every ``select`` step command has that are not step parameters: input store, output and how it runs."""
    def decorate(f):
        f = _cluster_options(f)
        f = click.option("--quiet", is_flag=True, help="No progress bar.")(f)
        f = click.option("--overwrite", is_flag=True, help="Replace an existing thresher artefact in --out.")(f)
        f = click.option("--out", required=True, type=click.Path(file_okay=False), help="Output curated-shards directory.")(f)
        f = click.option("--pool-embeddings", required=True, type=click.Path(exists=True, file_okay=False), help=what)(f)
        return f
    return decorate


def _select(kind: str, options: dict[str, Any], *, convert: dict[str, Convert] | None = None, fixed: dict[str, Any] | None = None):
    """Build the step's config from the command's options and run it through its kind, as ``thresher run`` does, on the whole store.

    Returns the config and the step's curated shards.
    """
    from thresher.pipeline.steps import StepInputs
    from thresher.stores import open_embedding_store

    step = STEPS[kind]
    config = build_config(step, options, convert=convert, fixed=fixed)
    index = options.get("index")
    inputs = StepInputs(store=open_embedding_store(options["pool_embeddings"]), out=Path(options["out"]), run_dir=Path(options["out"]).parent,
                        index=Path(index) if index else None, overwrite=options["overwrite"])
    executor = _executor(options["scheduler"], options["workers"], options["slurm"], options["local"], options["quiet"])
    return config, step.run(config, inputs, executor)


def _unescape(text: str | None) -> str | None:
    """A template with \\n and \\t written as such on the command line."""
    return codecs.decode(text, "unicode_escape") if text is not None and "\\" in text else text


def _parse_rank_window(value: str) -> tuple[int, int]:
    try:
        p, stop = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"--rank-window must look like P:P+M (e.g. 30:130); got {value!r}") from None
    return p, stop


_RDS_CONVERT = {
    "budget": Convert(_parse_budget),
    "targets": Convert(lambda v: _parse_pairs(v, "--targets"), multiple=True),
    "target_text": Convert(_unescape),
    "quotas": Convert(lambda v: _parse_pairs(v, "--quota", int) or None, multiple=True, synonyms=("--quota",)),
    "group_quotas": Convert(lambda v: _parse_pairs(v, "--group-quota", int) or None, multiple=True, synonyms=("--group-quota",)),
}


@select.command("rds")
@_pool_and_out()
@step_options(STEPS["rds"], skip=("target_task_column",), convert=_RDS_CONVERT)
def select_rds(**options) -> None:
    """RDS+: pick the pool rows most similar to target-task examples, round-robin across tasks (Ivison et al. 2025)."""
    _, curated = _select("rds", options, convert=_RDS_CONVERT)
    summary = curated.manifest["summary"]
    click.echo(f"selected {curated.n_rows} of {curated.manifest['n_pool']} rows into {curated.path}")
    if summary.get("budget_rounding"):
        click.echo(f"  {summary['budget_rounding']}")
    for task, count in summary["per_task_selected"].items():
        q = summary["per_task_score_quantiles"].get(task) or {}
        click.echo(f"  {task}: {count} rows, score min {q.get('min')} median {q.get('median')} max {q.get('max')}")
    if "per_group_selected" in summary:
        click.echo("  per group: " + ", ".join(f"{g} {n}" for g, n in summary["per_group_selected"].items()))
    click.echo(f"  exact duplicates removed {summary.get('n_exact_duplicates_removed', 0)}, decontaminated {summary.get('n_decontaminated', 0)}")


def _parse_sampling_strategy(value: str) -> Any:
    """'auto' and the other names, a float (binary: minority / majority after), or a JSON object {"class": count}."""
    if value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"is not a valid JSON object ({exc.msg}); got {value!r}", param_hint="'--sampling-strategy'") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter(f"must be a JSON object of class -> count; got {value!r}", param_hint="'--sampling-strategy'")
        return parsed
    try:
        return float(value)
    except ValueError:
        return value


_SMOTE_CONVERT = {"sampling_strategy": Convert(_parse_sampling_strategy)}


@select.command("smote")
@_pool_and_out()
@step_options(STEPS["smote"], convert=_SMOTE_CONVERT)
def select_smote(**options) -> None:
    """SMOTE: synthetic minority rows in embedding space, with majority under-sampling (Chawla et al., JAIR 2002)."""
    _, curated = _select("smote", options, convert=_SMOTE_CONVERT)
    s = curated.manifest["summary"]
    click.echo(f"wrote {curated.n_rows} rows into {curated.path}: {s['n_kept']} pool rows kept, {s['n_synthetic']} synthetic, "
               f"{s['n_undersampled']} under-sampled away")
    for c, before in s["class_counts_before"].items():
        click.echo(f"  class {c}: {before} -> {s['class_counts_after'][c]} rows")


_BATCHES_CONVERT = {"rank_window": Convert(_parse_rank_window, show=lambda w: f"{w[0]}:{w[1]}")}


@select.command("batches")
@_pool_and_out("The pool's embedding store (the teacher's embeddings).")
@click.option("--index", default=None, type=click.Path(file_okay=False), help="FAISS index over the store (default: exact search, small pools only).")
@step_options(STEPS["batches"], skip=("exact",), convert=_BATCHES_CONVERT, off_flags={"drop_last": "--keep-last"},
              old_flags={"--hard-negatives": "n_hard_negatives"})
def select_batches(**options) -> None:
    """B3: batches of whole METIS communities of the teacher's rank-window graph (Thirukovalluru et al. 2025)."""
    config, curated = _select("batches", options, convert=_BATCHES_CONVERT, fixed={"exact": options["index"] is None})
    s = curated.manifest["summary"]
    click.echo(f"{s['n_batches']} batches of {config.batch_size} ({s['n_rows_batched']} of {s['n_rows']} rows) into {curated.path}")
    click.echo(f"  mean in-batch similarity {s['mean_in_batch_similarity']:.4f} vs random batches {s['mean_in_batch_similarity_random']:.4f}")
    click.echo(f"  graph: {s['n_edges']} reciprocal edges, {s['n_isolated_rows']} isolated rows; left out {s['n_rows_left_out']} rows")

_ACQUISITION_METHODS = ["entropy", "bald", "margin", "least_confidence", "variation_ratio"]


@select.command("acquire")
@click.option("--pool-embeddings", required=True, type=click.Path(exists=True, file_okay=False), help="The pool's embedding store.")
@click.option("--predictions", required=True, type=click.Path(exists=True), help="Parquet/Arrow file or folder: id + probs (list<float> [C]) or samples (list<list<float>> [S][C]).")
@click.option("--labelled", default=None, type=click.Path(exists=True), help="Parquet/jsonl/csv file with id and label of the labelled rows (never acquired; AnchorAL anchors).")
@click.option("--labeled", "old_labeled", default=None, type=click.Path(exists=True), hidden=True)
@click.option("--method", type=click.Choice(_ACQUISITION_METHODS), default=None, help="The uncertainty score.  [default: bald]")
@click.option("--score", "old_score", type=click.Choice(_ACQUISITION_METHODS), default=None, hidden=True)
@click.option("--sampling", type=click.Choice(["topk", "softmax", "power", "softrank"]), default="power", show_default=True)
@click.option("--beta", type=float, default=1.0, show_default=True, help="Inverse temperature of stochastic sampling.")
@click.option("--anchoral", is_flag=True, help="Score only the AnchorAL sub-pool around per-class anchors (needs --labelled).")
@click.option("--n-anchors", type=int, default=10, show_default=True)
@click.option("--n-neighbors", type=int, default=50, show_default=True)
@click.option("--subpool-size", type=int, default=10_000, show_default=True)
@click.option("--index", default=None, type=click.Path(file_okay=False), help="FAISS index over the store for AnchorAL (default: exact search).")
@click.option("--budget", required=True, type=int, help="Rows to acquire.")
@click.option("--round", "round_", type=int, default=0, show_default=True, help="Round number, written with the rows.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def select_acquire(pool_embeddings, predictions, labelled, old_labeled, method, old_score, sampling, beta, anchoral, n_anchors, n_neighbors,
                   subpool_size, index, budget, round_, seed, out, overwrite) -> None:
    """Active learning: acquire the most informative rows by model uncertainty, optionally in an AnchorAL sub-pool (runs in-process)."""
    from thresher.pipeline.acquire import select_acquire as run

    labelled = old_spelling("--labelled", labelled, "--labeled", old_labeled)
    method = old_spelling("--method", method, "--score", old_score) or "bald"
    curated = run(pool_embeddings, out, predictions=predictions, labelled=labelled, method=method, sampling=sampling, beta=beta,
                  anchoral=anchoral, n_anchors=n_anchors, n_neighbors=n_neighbors, subpool_size=subpool_size, index=index, budget=budget,
                  round=round_, seed=seed, overwrite=overwrite)
    s = curated.manifest["summary"]
    click.echo(f"round {s['round']}: acquired {s['n_selected']} of {s['n_candidates']} candidates ({s['n_pool']} pool rows, "
               f"{s['n_labelled']} labelled) by {method}/{sampling} into {curated.path}")
    if anchoral:
        click.echo(f"  AnchorAL: {s['n_anchors']} anchors, sub-pool of {s['n_candidates']} rows")


@select.command("semdedup")
@_pool_and_out()
@step_options(STEPS["semdedup"], old_flags={"--clusters": "n_clusters", "--iterations": "n_iter"})
def select_semdedup(**options) -> None:
    """SemDeDup: drop semantic near-duplicates within k-means clusters (Abbas et al. 2023); removed rows go to removed.arrow."""
    _, curated = _select("semdedup", options)
    s = curated.manifest["summary"]
    click.echo(f"kept {s['kept']} of {s['rows_in']} rows, removed {s['removed']} ({s['clusters']} clusters, eps {s['eps']}) into {curated.path}")
    click.echo(f"  removed rows and what they duplicate: {curated.path / 'removed.arrow'}")

@main.command("run")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec value, e.g. rds.budget=5000 or embedding.batch_size=32 (repeatable).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default: the spec's 'out').")
@click.option("--embeddings", default=None, type=click.Path(file_okay=False),
              help="An existing embedding store to use in place, instead of the spec's 'embedding' section (as 'embedding: {store: DIR}'); "
                   "the pool's ids must be the store's, in the same order.")
@click.option("--dry-run", is_flag=True, help="Print the plan (steps to run, cached steps, expected sizes, memory per worker) and stop.")
@click.option("--quiet", is_flag=True)
@_cluster_options
def run_spec(spec, overrides, out, embeddings, dry_run, quiet, scheduler, workers, slurm, local) -> None:
    """Run the pipeline a YAML/TOML SPEC describes: embed (or an existing store) → index → steps → curated shards, reusing cached artefacts."""
    from thresher.pipeline.runner import run_pipeline

    result = run_pipeline(spec, overrides, out=out, embeddings=embeddings, dry_run=dry_run, scheduler=scheduler, workers=workers, slurm=slurm,
                          local=local or None, progress=not quiet, echo=click.echo)
    if dry_run:
        return
    for r in result.steps:
        click.echo(f"  {r.name:<12} {'cached' if r.cached else f'{r.seconds:8.1f} s'}  {r.rows_in:>10,} → {r.rows_out:>10,} rows  {r.dir}")
    click.echo(f"output: {result.output}")
    if result.report is not None:
        click.echo(f"report: {result.report}")


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
@_cluster_options
def demo(out, overwrite, quiet, scheduler, workers, slurm, local) -> None:
    """Run the main job on the bundled data and model: the bundled spec (embed, index, SemDeDup, RDS+, SMOTE, B3) and its report."""
    from thresher.demo import run_demo

    run_demo(Path(out), overwrite=overwrite, progress=not quiet, scheduler=scheduler, workers=workers, slurm=slurm, local=local)


@main.group()
def plan() -> None:
    """Per-epoch training plans (InfoBatch dynamic pruning) written as shards for trainers."""


@plan.command("infobatch-init")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="State directory to create.")
@click.option("--n-samples", type=int, required=True, help="Dataset size (samples are indices 0..n-1).")
@click.option("--epochs", type=int, required=True, help="Total training epochs.")
@click.option("--prune-ratio", type=float, default=0.5, show_default=True, help="Fraction of well-learned samples dropped per pruning epoch, in [0, 0.9].")
@click.option("--delta", type=float, default=0.875, show_default=True, help="Annealing (full data) from epoch ceil(delta * epochs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--initial-score", type=float, default=3.0, show_default=True, help="Score of samples not trained yet.")
def plan_infobatch_init(out, n_samples, epochs, prune_ratio, delta, seed, initial_score) -> None:
    """Create a fresh InfoBatch state (Qin et al., ICLR 2024)."""
    from thresher.selectors.infobatch import InfoBatch
    from thresher.stores.output_guard import check_output
    from thresher.training.infobatch import save_state

    check_output(out, "infobatch", new=True)
    ib = InfoBatch(n_samples=n_samples, epochs=epochs, prune_ratio=prune_ratio, delta=delta, seed=seed, initial_score=initial_score)
    save_state(ib, out)
    click.echo(f"InfoBatch state for {n_samples} samples, {epochs} epochs (annealing from epoch {ib.annealing_epoch}) in {out}")


@plan.command("infobatch")
@click.option("--scores", "state_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Saved InfoBatch state (updated in place).")
@click.option("--epoch", type=int, required=True, help="Epoch to plan, in [0, epochs).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output plan directory (curated shards: index, weight, epoch, position).")
@click.option("--losses", "loss_dirs", multiple=True, type=click.Path(exists=True, file_okay=False), help="Loss-shard directories (index, loss) to apply first (repeatable).")
@click.option("--rows-per-shard", type=int, default=None, help="Rows per plan shard (default 1,000,000).")
@click.option("--overwrite", is_flag=True)
def plan_infobatch(state_dir, epoch, out, loss_dirs, rows_per_shard, overwrite) -> None:
    """InfoBatch: apply fed-back losses, then write one epoch's plan (sample indices + loss weights) as shards."""
    from thresher.pipeline.plan import update_state, write_plan
    from thresher.stores.output_guard import check_output

    check_output(out, "curated", inputs={"ib_or_scores": state_dir, "loss_dirs": list(loss_dirs)}, overwrite=overwrite)  # before the state is updated
    if loss_dirs:
        update_state(state_dir, *loss_dirs)
    curated = write_plan(state_dir, epoch, out, rows_per_shard=rows_per_shard, overwrite=overwrite)
    s = curated.manifest["summary"]
    threshold = "none (annealing)" if s["threshold"] is None else f"{s['threshold']:.6g}"
    click.echo(f"epoch {s['epoch']}: kept {s['n_kept']} of {s['n_samples']} samples ({s['kept_fraction']:.1%}), "
               f"threshold {threshold}, well-learned {s['n_well']} (kept {s['n_kept_well']}), "
               f"saving so far {s['saving_so_far']:.1%} -> {curated.path}")


if __name__ == "__main__":
    main()
