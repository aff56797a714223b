"""The ``thresher`` command line: one thin command per pipeline function.

Every command validates its options, calls the Python function of the same
name, and turns a :class:`thresher.exceptions.ThresherError` into a one-line
message on stderr with exit code 2 (no traceback for a user's mistake).
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from thresher.exceptions import ThresherError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThresherError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def _offline_by_default() -> None:
    # thresher never fetches from a hub at run time; without these a lookup can hang a minute before failing.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="thresher")
def main() -> None:
    """thresher: embed a data pool, index it, select from it, and write curated Arrow shards."""
    _offline_by_default()


def _cluster_options(f):
    f = click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786). Default: an in-process local cluster.")(f)
    f = click.option("--workers", type=int, default=None, help="Local worker processes (default: one per 4 cores), or SLURM jobs with --slurm.")(f)
    f = click.option("--slurm", type=click.Path(exists=True, dir_okay=False), default=None, help="YAML file of dask_jobqueue.SLURMCluster arguments.")(f)
    f = click.option("--local", is_flag=True, help="Run in this process without Dask (debugging).")(f)
    return f


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
@click.option("--partition-rows", type=int, default=None, help="Rows per partition / task / shard (default 50,000).")
@click.option("--overwrite", is_flag=True, help="Replace an existing thresher artefact in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_cluster_options
def embed(pool, out, text, text_column, messages_column, chat_format, id_column, fmt, split, model, pooling, layer, no_normalize,
          max_length, batch_size, device, dtype, partition_rows, overwrite, quiet, scheduler, workers, slurm, local) -> None:
    """Embed a data pool into an embedding store (a Dask job, one task per partition)."""
    from thresher.pipeline.embed import embed as run

    if text is not None:
        text = codecs.decode(text, "unicode_escape") if "\\" in text else text
    store = run(
        list(pool) if len(pool) > 1 else pool[0], out, text=text, text_column=text_column, messages_column=messages_column,
        chat_format=chat_format, id_column=id_column, format=fmt, split=split, model=model, pooling=pooling, layer=layer,
        normalize=not no_normalize, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype,
        partition_rows=partition_rows, scheduler=scheduler, workers=workers, slurm=slurm, local=local,
        overwrite=overwrite, progress=not quiet,
    )
    m = store.manifest
    click.echo(f"embedded {store.n_rows} rows into {store.path} ({store.n_shards} shards, dim {store.dim}, "
               f"{m.get('n_truncated', 0)} truncated, {m.get('wall_seconds', 0)} s)")


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
@click.option("--rows", "n_rows", type=int, default=5, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify", is_flag=True, help="Re-check every shard's checksum.")
def inspect(path, n_rows, as_json, verify) -> None:
    """Say what an artefact is: its manifest, counts, and a few rows."""
    from thresher.describe import describe_artifact

    click.echo(describe_artifact(Path(path), n_rows=n_rows, as_json=as_json, verify=verify))


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
        raise click.BadParameter(f"must be a count (10000), a fraction of the pool (0.1) or 'all'; got {value!r}") from None


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


@select.command("rds")
@click.option("--pool-embeddings", required=True, type=click.Path(exists=True, file_okay=False), help="The pool's embedding store.")
@click.option("--targets", "targets", multiple=True, required=True, help="TASK=PATH: query examples of a task (data file or embedding store); repeat per task, in turn order.")
@click.option("--budget", required=True, help="Rows to select: a count, a fraction of the pool, or 'all'.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--aggregation", type=click.Choice(["max", "mean"]), default="max", show_default=True)
@click.option("--quota", "quotas", multiple=True, help="TASK=N: at most N rows picked by that task (repeatable).")
@click.option("--dedup", is_flag=True, help="Drop exact-duplicate texts before selection.")
@click.option("--decontaminate", type=float, default=None, help="Drop pool rows with cosine >= this to any target example.")
@click.option("--target-text", default=None, help="Text template for target files (default: the pool's).")
@click.option("--target-text-column", default=None)
@click.option("--target-messages-column", default=None)
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
@_cluster_options
def select_rds(pool_embeddings, targets, budget, out, aggregation, quotas, dedup, decontaminate, target_text, target_text_column,
               target_messages_column, overwrite, quiet, scheduler, workers, slurm, local) -> None:
    """RDS+: pick the pool rows most similar to target-task examples, round-robin across tasks (Ivison et al. 2025)."""
    from thresher.pipeline.select import select_rds as run

    if target_text is not None and "\\" in target_text:
        target_text = codecs.decode(target_text, "unicode_escape")
    curated = run(
        pool_embeddings, _parse_pairs(targets, "--targets"), out, budget=_parse_budget(budget), aggregation=aggregation,
        quotas=_parse_pairs(quotas, "--quota", int) or None, dedup=dedup, decontaminate=decontaminate, target_text=target_text,
        target_text_column=target_text_column, target_messages_column=target_messages_column, scheduler=scheduler,
        workers=workers, slurm=slurm, local=local, overwrite=overwrite, progress=not quiet,
    )
    summary = curated.manifest["summary"]
    click.echo(f"selected {curated.n_rows} of {curated.manifest['n_pool']} rows into {curated.path}")
    for task, count in summary["per_task_selected"].items():
        q = summary["per_task_score_quantiles"].get(task) or {}
        click.echo(f"  {task}: {count} rows, score min {q.get('min')} median {q.get('median')} max {q.get('max')}")
    click.echo(f"  exact duplicates removed {summary.get('n_exact_duplicates_removed', 0)}, decontaminated {summary.get('n_decontaminated', 0)}")


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", is_flag=True)
@_cluster_options
def demo(out, overwrite, quiet, scheduler, workers, slurm, local) -> None:
    """Run the main job on the bundled data and model: embed, index, inspect."""
    from thresher.demo import run_demo

    run_demo(Path(out), overwrite=overwrite, progress=not quiet, scheduler=scheduler, workers=workers, slurm=slurm, local=local)


if __name__ == "__main__":
    main()
