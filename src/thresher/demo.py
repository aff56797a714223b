"""The main job on the bundled defaults: the bundled spec (thresher/data/demo.yaml) on the bundled pool and model.

It runs the whole pipeline — embed 10,000 real conversations with
all-MiniLM-L6-v2 on an in-process Dask cluster, index them, SemDeDup, RDS+
for two target tasks, SMOTE on a rating label and B3 batches — and writes
the curated shards, the run manifest, the event log and the HTML report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def demo_spec_path() -> Path:
    from thresher.pipeline.spec import bundled_path

    return bundled_path("demo.yaml")


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True, **cluster: Any):
    """Run the bundled demo spec into ``out`` and print what it made; ``overwrite`` recomputes every step."""
    from thresher.describe import describe_artifact
    from thresher.pipeline.runner import run_pipeline

    from thresher.stores.output_guard import check_output, clear_output

    out = Path(out)
    spec = demo_spec_path()
    check_output(out, "run", inputs={"spec_path": spec, "pool.path": spec.parent}, overwrite=overwrite)
    if overwrite and out.is_dir():
        clear_output(out, "run")  # only what thresher wrote; anything else was refused above
    result = run_pipeline(spec, out=out, progress=progress, **cluster)
    for record in result.steps:
        took = "cached" if record.cached else f"{record.seconds:.1f} s"
        print(f"  {record.name:<10} {took:>9}  {record.rows_in:>7,} → {record.rows_out:>7,} rows  {out / record.dir}")
    print(describe_artifact(result.output, n_rows=3))
    if result.report is not None:
        print(f"report: {result.report}")
        if (result.report.parent / "explore.html").is_file():  # the spec's report.explore (true by default)
            print(f"explore: {result.report.parent / 'explore.html'}")
    return result
