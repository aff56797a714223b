"""Every writer refuses an output it must never write: `/`, a home, an input, another artefact, someone else's files.

The property: for every command that writes (and its Python function), an
output pointing at one of those places exits 2 with a message naming the
cause, and not one byte outside the output changes — nothing is created,
nothing is deleted, with or without ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from thresher.cli import main
from thresher.exceptions import ArtifactError, ParameterError
from thresher.jobs.executor import Executor

N_POOL = 12


@dataclass
class World:
    root: Path
    model: str
    pool: Path
    targets: Path
    emb: Path
    idx: Path
    state: Path
    plan: Path
    preds: Path
    spec: Path


def _cli(argv: list[str]):
    return CliRunner().invoke(main, argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_path) -> World:
    """One tiny store (embedded in-process), its index, an InfoBatch state, a plan, predictions and a run spec."""
    from thresher.stores import open_embedding_store
    from thresher.stores.index import build_index

    root = tmp_path_factory.mktemp("world")
    (root / "data").mkdir()
    pool = root / "data" / "pool.jsonl"
    pool.write_text("".join(json.dumps({"uid": f"r{i}", "text": f"sentence {i} about {'cats' if i % 3 else 'dogs'}", "label": i % 2}) + "\n"
                            for i in range(N_POOL)), encoding="utf-8")
    targets = root / "data" / "t.jsonl"
    targets.write_text('{"text": "cats"}\n', encoding="utf-8")
    emb = root / "emb"
    result = _cli(["embed", "--pool", str(pool), "--id-column", "uid", "--model", minilm_path, "--out", str(emb), "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    build_index(open_embedding_store(emb), root / "idx", index_type="flat")
    assert _cli(["plan", "infobatch-init", "--out", str(root / "state"), "--n-samples", "10", "--epochs", "3"]).exit_code == 0
    result = _cli(["plan", "infobatch", "--scores", str(root / "state"), "--epoch", "0", "--out", str(root / "plan")])
    assert result.exit_code == 0, result.output
    (root / "preds").mkdir()
    probs = np.full((N_POOL, 2), 0.5)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(N_POOL)], "probs": probs.tolist()}), root / "preds" / "p.parquet")
    (root / "spec").mkdir()
    spec = root / "spec" / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "guard", "pool": {"path": str(pool), "id_column": "uid"}, "embedding": {"model": minilm_path},
        "steps": [{"step": "semdedup", "n_clusters": 2, "eps": 0.1}], "report": {"html": False},
    }), encoding="utf-8")
    return World(root, minilm_path, pool, targets, emb, root / "idx", root / "state", root / "plan", root / "preds" / "p.parquet", spec)


def tree_digest(*roots: Path) -> str:
    """A hash of every path, file content and symlink target under ``roots``."""
    h = hashlib.sha256()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            h.update(f"D {dirpath}\n".encode())
            for name in sorted(filenames):
                path = Path(dirpath) / name
                h.update(f"F {path}\n".encode())
                h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return h.hexdigest()


# command -> (argv for an --out, has --overwrite, input file, input folder, an artefact of another kind)
def _commands(w: World) -> dict[str, tuple]:
    emb, idx, model = str(w.emb), str(w.idx), w.model
    return {
        "embed": (lambda o: ["embed", "--pool", str(w.pool), "--id-column", "uid", "--model", model, "--out", o, "--local", "--quiet"],
                  True, w.pool, w.pool.parent, w.plan),
        "index": (lambda o: ["index", "--embeddings", emb, "--out", o], True, w.emb / "part-00000.arrow", w.emb, w.plan),
        "import": (lambda o: ["embeddings", "import", str(w.preds.parent), "--vector-column", "probs", "--model", "m", "--out", o, "--quiet"],
                   True, w.preds, w.preds.parent, w.idx),
        "rds": (lambda o: ["select", "rds", "--pool-embeddings", emb, "--targets", f"t={w.targets}", "--budget", "3", "--out", o, "--local",
                           "--quiet"], True, w.targets, w.targets.parent, w.idx),
        "smote": (lambda o: ["select", "smote", "--pool-embeddings", emb, "--labels", "label", "--out", o, "--local", "--quiet"],
                  True, w.emb / "manifest.json", w.emb, w.idx),
        "batches": (lambda o: ["select", "batches", "--pool-embeddings", emb, "--index", idx, "--batch-size", "2", "--community-size", "2",
                               "--rank-window", "1:3", "--out", o, "--local", "--quiet"], True, w.idx / "index.faiss", w.idx, w.state),
        "acquire": (lambda o: ["select", "acquire", "--pool-embeddings", emb, "--predictions", str(w.preds), "--budget", "2", "--out", o],
                    True, w.preds, w.preds.parent, w.idx),
        "semdedup": (lambda o: ["select", "semdedup", "--pool-embeddings", emb, "--n-clusters", "2", "--eps", "0.1", "--out", o, "--local",
                                "--quiet"], True, w.emb / "part-00000.arrow", w.emb, w.idx),
        "infobatch-init": (lambda o: ["plan", "infobatch-init", "--out", o, "--n-samples", "10", "--epochs", "3"], False, None, None, w.plan),
        "infobatch": (lambda o: ["plan", "infobatch", "--scores", str(w.state), "--epoch", "1", "--out", o], True,
                      w.state / "scores.npy", w.state, w.idx),
        "run": (lambda o: ["run", str(w.spec), "--out", o, "--local", "--quiet"], False, w.spec, w.spec.parent, w.emb),
        "demo": (lambda o: ["demo", "--out", o, "--local", "--quiet"], True, None, None, w.emb),
        "report": (lambda o: ["report", str(w.plan), "--html", o], False, w.plan / "manifest.json", w.plan, w.emb / "part-00000.arrow"),
    }


COMMANDS = ["embed", "import", "index", "rds", "smote", "batches", "acquire", "semdedup", "infobatch-init", "infobatch", "run", "demo", "report"]
TARGETS = ["root", "input_file", "input_dir", "inside_input", "other_kind", "foreign", "home"]

# What each refusal must say. "is a file"/"is a directory" are click's own checks of --out/--html (a file where a directory is
# expected, or the reverse), which fire first for those paths.
EXPECT = {
    "root": r"is the filesystem root|File '/' is a directory",
    "input_file": r"is a file|is the input|is a file thresher keeps",
    "input_dir": r"(contains|is) the input|is a directory",
    "inside_input": r"is inside the input",
    "other_kind": r"holds an? '\w+' artefact, not an? '\w+'|is a file of the 'embeddings' artefact",
    "foreign": r"holds no thresher artefact \(it holds 'notes\.txt'|is not a report thresher wrote",
    "home": r"is a home directory|is a directory",
}


# Commands without --overwrite, and the targets a command has no input of (no input file or folder, no input directory to write into).
NO_OVERWRITE = {"infobatch-init", "run", "report"}
NO_TARGET = {"embed": {"inside_input"}, "infobatch-init": {"input_file", "input_dir", "inside_input"}, "run": {"inside_input"},
             "demo": {"input_file", "input_dir", "inside_input"}, "report": {"inside_input"}}
COMBINATIONS = [(command, target, overwrite) for command in COMMANDS for target in TARGETS for overwrite in (False, True)
                if target not in NO_TARGET.get(command, ()) and not (overwrite and command in NO_OVERWRITE)]


@pytest.mark.parametrize(("command", "target", "overwrite"), COMBINATIONS,
                         ids=[f"{c}-{t}-{'overwrite' if o else 'plain'}" for c, t, o in COMBINATIONS])
def test_every_writer_refuses_every_forbidden_output(world, tmp_path, monkeypatch, command, target, overwrite):
    argv_of, has_overwrite, input_file, input_dir, other = _commands(world)[command]
    assert has_overwrite == (command not in NO_OVERWRITE)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".profile").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    out = {
        "root": Path("/"),
        "input_file": input_file,
        "input_dir": input_dir,
        "inside_input": {"import": world.preds.parent, "index": world.emb, "rds": world.emb, "smote": world.emb, "batches": world.idx, "acquire": world.emb,
                         "semdedup": world.emb, "infobatch": world.state}.get(command, Path("/nonexistent")) / "out",
        "other_kind": other,
        "foreign": foreign / "notes.txt" if command == "report" else foreign,
        "home": home,
    }[target]
    assert out is not None and out != Path("/nonexistent/out"), f"{command} has no input for {target}: list it in NO_TARGET"
    root_listing = sorted(os.listdir("/"))
    before = tree_digest(world.root, tmp_path)
    result = _cli([*argv_of(str(out)), *(["--overwrite"] if overwrite else [])])
    assert result.exit_code == 2, result.output
    assert re.search(EXPECT[target], result.output), result.output
    assert "Traceback" not in result.output
    assert tree_digest(world.root, tmp_path) == before, f"{command} --out {target} changed files"
    assert sorted(os.listdir("/")) == root_listing


# ---- the Python entry points refuse the same way (naming the parameter)


def test_python_entry_points_refuse_before_any_work(world, tmp_path, monkeypatch):
    from thresher import embed
    from thresher.pipeline.dedup import select_semdedup
    from thresher.pipeline.plan import write_plan
    from thresher.pipeline.select import select_rds
    from thresher.report import write_report
    from thresher.selectors.infobatch import InfoBatch
    from thresher.stores import open_embedding_store
    from thresher.stores.index import build_index

    monkeypatch.setenv("HOME", str(tmp_path))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    before = tree_digest(world.root, tmp_path)
    with pytest.raises(ParameterError, match=r"'out' / is the filesystem root"):
        embed(str(world.pool), "/", id_column="uid", model=world.model, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match=r"'out' .*home is|is a home directory"):
        embed(str(world.pool), tmp_path, id_column="uid", model=world.model, executor=Executor.in_process(progress=False), overwrite=True)
    with pytest.raises(ParameterError, match=r"'out' .*emb is the input 'store'"):
        build_index(open_embedding_store(world.emb), world.emb, overwrite=True)
    with pytest.raises(ArtifactError, match=r"holds a 'curated' artefact, not an 'index'"):
        build_index(open_embedding_store(world.emb), world.plan, overwrite=True)
    with pytest.raises(ParameterError, match=r"is inside the input 'pool_embeddings'"):
        select_rds(world.emb, {"t": str(world.targets)}, world.emb / "sub", budget=2, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match=r"contains the input pool file .*pool\.jsonl"):
        select_semdedup(world.emb, world.pool.parent, n_clusters=2, eps=0.1, executor=Executor.in_process(progress=False), overwrite=True)
    with pytest.raises(ParameterError, match=r"is the input 'ib_or_scores'"):
        write_plan(world.state, 1, world.state, overwrite=True)
    with pytest.raises(ArtifactError, match=r"'directory' .*mine is not empty and holds no thresher artefact \(it holds 'notes.txt'"):
        InfoBatch(n_samples=4, epochs=2).save(foreign)
    with pytest.raises(ArtifactError, match=r"'html_path' .*manifest\.json is a file thresher keeps"):
        write_report(world.plan, world.plan / "manifest.json")
    with pytest.raises(ArtifactError, match=r"is a directory"):
        write_report(world.plan, foreign)
    assert tree_digest(world.root, tmp_path) == before
    assert not Path("/.thresher-lock.json").exists() and not Path("/.thresher-partial.json").exists()


def test_run_pipeline_refuses_before_reading_the_pool(world, tmp_path):
    from thresher.pipeline.runner import run_pipeline

    before = tree_digest(world.root, tmp_path)
    with pytest.raises(ArtifactError, match=r"holds an 'embeddings' artefact, not a 'run'"):
        run_pipeline(world.spec, out=world.emb, executor=Executor.in_process(progress=False), echo=lambda *_: None)
    with pytest.raises(ParameterError, match=r"contains the input pool\.path .*pool\.jsonl"):
        run_pipeline(world.spec, out=world.pool.parent, executor=Executor.in_process(progress=False), echo=lambda *_: None)
    assert tree_digest(world.root, tmp_path) == before


# ---- --overwrite removes only what thresher wrote


def test_overwrite_of_a_same_kind_artefact_with_a_foreign_file_deletes_nothing(world, tmp_path):
    out = tmp_path / "plan"
    assert _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "1", "--out", str(out)]).exit_code == 0
    (out / "notes.txt").write_text("precious")
    before = tree_digest(tmp_path, world.root)
    result = _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "2", "--out", str(out), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert re.search(r"--out .*plan holds .*notes\.txt, which thresher did not write", result.output), result.output
    assert tree_digest(tmp_path, world.root) == before


def test_overwrite_never_follows_a_link_out_of_the_artefact(world, tmp_path):
    """A listed shard replaced by a symbolic link to the user's file: the link is foreign, and neither it nor its target is removed."""
    out = tmp_path / "plan"
    assert _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "1", "--out", str(out)]).exit_code == 0
    shard = json.loads((out / "manifest.json").read_text())["shards"][0]["file"]
    precious = tmp_path / "mine" / "data.arrow"
    precious.parent.mkdir()
    precious.write_bytes(b"the user's own data")
    (out / shard).unlink()
    (out / shard).symlink_to(precious)
    before = tree_digest(tmp_path, world.root)
    result = _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "2", "--out", str(out), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert re.search(rf"holds .*{re.escape(shard)}, which thresher did not write", result.output), result.output
    assert tree_digest(tmp_path, world.root) == before
    assert precious.read_bytes() == b"the user's own data" and (out / shard).is_symlink()


def test_overwrite_replaces_a_clean_artefact_and_keeps_nothing_stale(world, tmp_path):
    out = tmp_path / "plan"
    assert _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "1", "--out", str(out)]).exit_code == 0
    (out / "part-00007.arrow").write_bytes(b"stale")  # thresher's naming, but not listed by the finished manifest
    result = _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "2", "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "part-00007.arrow" in result.output, result.output
    (out / "part-00007.arrow").unlink()
    result = _cli(["plan", "infobatch", "--scores", str(world.state), "--epoch", "2", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["epoch"] == 2


def test_demo_overwrite_of_a_folder_with_events_and_a_foreign_file_refuses(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "events.jsonl").write_text("{}\n")
    (out / "thesis.tex").write_text("precious")
    before = tree_digest(tmp_path)
    result = _cli(["demo", "--out", str(out), "--overwrite", "--local", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "holds no thresher artefact (it holds 'events.jsonl'" in result.output
    assert tree_digest(tmp_path) == before


def test_run_directory_is_cleared_by_its_sub_artefacts_manifests(world, tmp_path):
    from thresher.stores.output_guard import check_output, clear_output

    run = tmp_path / "run"
    (run / "steps").mkdir(parents=True)
    (run / ".thresher-partial.json").write_text(json.dumps({"artifact": "run", "fingerprint": "x"}))
    (run / "events.jsonl").write_text("{}\n")
    shutil.copytree(world.emb, run / "embeddings")
    shutil.copytree(world.plan, run / "steps" / "01-plan")
    check_output(run, "run", overwrite=True)
    (run / "steps" / "01-plan" / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match=r"01-plan/notes\.txt, which thresher did not write"):
        check_output(run, "run", overwrite=True)
    before = tree_digest(tmp_path)
    with pytest.raises(ArtifactError, match=r"notes\.txt, which thresher did not write"):
        clear_output(run, "run")
    assert tree_digest(tmp_path) == before
    (run / "steps" / "01-plan" / "notes.txt").unlink()
    clear_output(run, "run")
    assert list(run.iterdir()) == []


# ---- report files


def test_report_html_only_onto_a_new_file_or_a_thresher_report(world, tmp_path):
    page = tmp_path / "page.html"
    assert _cli(["report", str(world.plan), "--html", str(page), "--map-rows", "2"]).exit_code == 0
    assert "thresher report" in page.read_text(encoding="utf-8")[:400]
    assert _cli(["report", str(world.plan), "--html", str(page), "--map-rows", "2"]).exit_code == 0  # its own page: replaced
    manifest = world.plan / "manifest.json"
    before = manifest.read_bytes()
    result = _cli(["report", str(world.plan), "--html", str(manifest)])
    assert result.exit_code == 2 and "is a file thresher keeps" in result.output, result.output
    assert manifest.read_bytes() == before
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my page</html>")
    result = _cli(["report", str(world.plan), "--html", str(mine)])
    assert result.exit_code == 2 and "is not a report thresher wrote" in result.output, result.output
    assert mine.read_text() == "<html>my page</html>"

