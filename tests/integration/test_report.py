"""The HTML report on a real run directory (semdedup → RDS+ → B3 on embedded text), on single artefacts, and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import thresher
from thresher.cli import main
from thresher.exceptions import ArtifactError, IncompleteArtifactError, ParameterError
from thresher.pipeline.dedup import read_removed, select_semdedup
from thresher.pipeline.select import select_batches, select_rds
from thresher.pipeline.smote import select_smote
from thresher.report import SECTIONS, gather_report, write_report
from thresher.report import gather as report_gather
from thresher.report.gather import streaming_histogram
from thresher.stores import build_index, open_curated
from thresher.stores.manifest import write_manifest
from thresher.jobs.executor import Executor

PLACES = ["a night train to Vienna", "a cheap flight to Lisbon", "hiking in the Dolomites", "a beach hotel in Crete", "camping by a lake"]
DISHES = ["sourdough bread", "a spicy lentil curry", "grilled mackerel", "fresh tagliatelle", "a lemon tart"]
GADGETS = ["a laptop that overheats", "a slow wifi router", "a phone battery that drains", "a noisy keyboard", "a cracked monitor"]
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def pool_rows() -> list[dict]:
    """120 rows on three topics, sources in unequal shares, a rare label, and planted exact and near duplicates."""
    rows = []
    for i in range(100):
        topic, things = [("travel", PLACES), ("food", DISHES), ("tech", GADGETS)][i % 3]
        text = f"Question {i}: what do you think about {things[(i // 3) % 5]}? I asked about it on day {i % 13}."
        rows.append({"id": f"r{i:03d}", "text": text, "source": ("forum", "wiki", "chat", "forum")[i % 4],
                     "label": "rare" if i % 6 == 0 else "common", "topic": topic, "note": HOSTILE, "category_id": f"c{i}"})
    for j in range(20):  # copies of rows 0..19: the even ones verbatim, the odd ones with a trailing word
        original = rows[j]
        text = original["text"] if j % 2 == 0 else original["text"] + " Thanks"
        rows.append({**original, "id": f"d{j:03d}", "text": text, "source": "mirror", "category_id": f"c{100 + j}"})
    return rows


class Page(HTMLParser):
    """The parts of a report page the tests read: sections' text, tables by class, images, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.section_images: dict[str, int] = Counter()
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts = 0
        self._section = None
        self._table = None
        self._row = None
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = ""
        elif tag == "img":
            self.images.append(attrs)
            self.section_images[self._section] += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = attrs.get("class", "") + ("/" + attrs["data-column"] if "data-column" in attrs else "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._section is not None:
            self.sections[self._section] += data
        if self._cell is not None:
            self._cell.append(data)

    def table(self, name: str) -> list[dict[str, str]]:
        header, *rows = self.tables[name]
        return [dict(zip(header, r)) for r in rows]


def png_sizes(page: Page) -> list[tuple[int, int]]:
    sizes = []
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True))) as im:
            im.load()  # decodes every pixel: a truncated PNG fails here
            sizes.append(im.size)
    return sizes


def ids_of(curated) -> list:
    return [i for i in curated.to_table().column("id").to_pylist() if i is not None]


@pytest.fixture(scope="module")
def run(tmp_path_factory, minilm_path):
    """A run directory as the runner lays it out: embed, index, semdedup, RDS+ on the kept rows, B3 on RDS+'s rows."""
    tmp = tmp_path_factory.mktemp("report")
    rows = pool_rows()
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = tmp / "targets.jsonl"
    targets.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["Where should I travel by train?", "Any tips for a hiking holiday?"]))
    out = tmp / "run"
    store = thresher.embed(str(pool), out / "embeddings", text_column="text", id_column="id", model=minilm_path, partition_rows=50,
                           executor=Executor.in_process(progress=False))
    build_index(store, out / "index")
    dedup = select_semdedup(store.path, out / "steps/01-semdedup", n_clusters=6, eps=0.05, executor=Executor.in_process(progress=False))
    kept = np.sort(store.positions_of(ids_of(dedup)))
    rds = select_rds(store.path, {"travel": str(targets)}, out / "steps/02-rds", budget=64, target_text_column="text", subset=kept,
                     executor=Executor.in_process(progress=False))
    chosen = np.sort(store.positions_of(ids_of(rds)))
    b3 = select_batches(store.path, out / "steps/03-batches", batch_size=16, community_size=4, rank_window=(2, 10), subset=chosen,
                        executor=Executor.in_process(progress=False))
    steps = [{"name": "embed", "step": "embed", "dir": "embeddings", "rows_in": len(rows), "rows_out": store.n_rows}]
    steps += [{"name": "index", "step": "index", "dir": "index", "rows_in": store.n_rows, "rows_out": store.n_rows}]
    n_in = store.n_rows
    for name, cur in (("semdedup", dedup), ("rds", rds), ("batches", b3)):
        steps.append({"name": name, "step": name, "dir": str(cur.path.relative_to(out)), "rows_in": n_in, "rows_out": cur.n_rows,
                      "fingerprint": cur.manifest["fingerprint"], "cached": False, "seconds": 0.5})
        n_in = cur.n_rows
    write_manifest(out, "run", fingerprint="test-run", body={"spec": {"report": {"columns": None}}, "steps": steps, "output": steps[-1]["dir"]})
    return {"dir": out, "rows": rows, "store": store, "dedup": dedup, "rds": rds, "b3": b3, "steps": steps, "tmp": tmp}


@pytest.fixture(scope="module")
def report(run):
    """The run's report, written once: its path and text."""
    path = write_report(run["dir"], run["dir"] / "report.html")
    return path, path.read_text(encoding="utf-8")


def test_run_report_matches_the_manifests(run, report):
    out = run["dir"]
    _, text = report
    page = Page(text)
    assert set(SECTIONS) <= set(page.sections)
    assert not list(out.glob(".tmp-*"))

    # per-step counts, row by row as in the run manifest
    table = {r["step"]: r for r in page.table("steps")}
    for step in run["steps"]:
        row = table[step["name"]]
        assert int(row["rows in"]) == step["rows_in"] and int(row["rows out"]) == step["rows_out"]
        assert int(row["dropped"]) == step["rows_in"] - step["rows_out"]
    assert run["dedup"].manifest["summary"]["removed"] == run["steps"][2]["rows_in"] - run["steps"][2]["rows_out"] > 0

    # composition: the pool column counted from the input file, each step's from its shards read back with datasets
    rows = run["rows"]
    source = {r["source"]: r for r in page.table("composition/source")}
    assert {v: int(r["pool"]) for v, r in source.items()} == Counter(r["source"] for r in rows)
    for name in ("semdedup", "rds", "batches"):
        counts = Counter(run[{"semdedup": "dedup", "rds": "rds", "batches": "b3"}[name]].to_hf_dataset()["source"])
        assert {v: int(r[name]) for v, r in source.items() if int(r[name])} == counts
    assert {r["label"]: int(r["pool"]) for r in page.table("composition/label")} == Counter(r["label"] for r in rows)
    task = page.table("composition/task")  # RDS+'s own column: absent from the pool
    assert [(r["task"], r["pool"], r["rds"]) for r in task] == [("travel", "–", str(run["rds"].n_rows))]
    assert "composition/topic" not in page.tables and "composition/id" not in page.tables  # topic is not named like a category
    assert "composition/category_id" not in page.tables  # named like one, but 120 distinct values: an id

    # duplicates: every removed row counted, shown pairs carry the pool's texts, escaped
    removed = read_removed(run["dedup"].path)
    assert f"{removed.num_rows} rows removed as near-duplicates" in page.sections["duplicates"]
    texts = {r["id"]: r["text"] for r in rows}
    pairs = page.tables["duplicates"][1:]
    assert len(pairs) == min(10, removed.num_rows)
    truth = dict(zip(removed.column("id").to_pylist(), removed.column("duplicate_of").to_pylist()))
    for cells in pairs:
        removed_id, removed_text = cells[0].split("\n", 1)
        kept_id, kept_text = cells[1].split("\n", 1)
        assert truth[removed_id] == kept_id
        assert removed_text.strip() == texts[removed_id] and kept_text.strip() == texts[kept_id]

    # sample of the final output: real rows, in rank order, hostile text escaped
    final = open_curated(out / run["steps"][-1]["dir"]).to_table()
    rank_of = dict(zip(final.column("id").to_pylist(), final.column("rank").to_pylist()))
    sample = page.table("sample")
    assert len(sample) == 20
    assert [int(r["rank"]) for r in sample] == sorted(rank_of[r["id"]] for r in sample)
    assert all(r["text"] == texts[r["id"]] and r["note"] == HOSTILE for r in sample)
    assert page.scripts == 0 and "<script>" not in text and "&lt;script&gt;" in text

    # figures: step counts, scores (RDS+ scores, semdedup's), composition, map; each a real PNG
    assert page.section_images["steps"] == 1 and page.section_images["map"] == 1
    assert page.section_images["composition"] == 3
    titles = [img["alt"] for img in page.images]
    assert "rds: score" in titles and "semdedup: similarity of removed rows to their duplicate" in titles
    assert all(w >= 300 and h >= 200 for w, h in png_sizes(page))


def test_figures_match_an_independent_computation(run):
    from sklearn.decomposition import PCA

    data = gather_report(run["dir"], map_rows=80, seed=3)
    store, final = run["store"], run["b3"]
    # the map: scikit-learn's PCA of the same sample, up to each axis's sign
    p = data.projection
    assert len(p.pool_xy) == 80 and p.n_pool == store.n_rows
    expected = PCA(n_components=2).fit(store.take(p.positions, dtype=np.float64))
    reference = expected.transform(store.take(p.positions, dtype=np.float64))
    signs = np.sign((reference * p.pool_xy).sum(axis=0))
    np.testing.assert_allclose(p.pool_xy * signs, reference, atol=1e-8)
    np.testing.assert_allclose(p.explained_variance, expected.explained_variance_ratio_, rtol=1e-8)
    # the highlighted rows: a sample of the final output's rows, projected the same way
    final_xy = expected.transform(store.take(store.positions_of(ids_of(final)), dtype=np.float64)) * signs
    assert p.n_selected == final.n_rows and len(p.selected_xy) == min(40, final.n_rows)
    assert np.abs(p.selected_xy[:, None, :] - final_xy[None]).max(axis=2).min(axis=1).max() < 1e-8
    # the same seed, the same figures; another seed, another sample
    assert np.array_equal(gather_report(run["dir"], map_rows=80, seed=3).projection.pool_xy, p.pool_xy)
    assert not np.array_equal(gather_report(run["dir"], map_rows=80, seed=4).projection.positions, p.positions)

    # histograms are exact: numpy over the whole column
    rds = run["rds"]
    h = streaming_histogram(rds.files, "score", 7, "t")
    scores = rds.to_table().column("score").to_numpy()
    counts, edges = np.histogram(scores, bins=7, range=(scores.min(), scores.max()))
    assert np.array_equal(h.counts, counts) and np.allclose(h.edges, edges) and h.n == len(scores)
    assert h.mean == pytest.approx(scores.mean())


def test_single_artefacts_spec_columns_and_runner_records(run, monkeypatch):
    out = run["dir"]
    # a curated output alone: one step, the pool's composition from the pool its manifest describes, no map
    page = Page(write_report(run["dedup"].path, run["tmp"] / "dedup.html").read_text(encoding="utf-8"))
    (step,) = page.table("steps")
    assert int(step["rows in"]) == run["store"].n_rows and int(step["rows out"]) == run["dedup"].n_rows
    assert "embedding store" in page.sections["map"] and page.section_images["map"] == 0
    assert {r["source"]: int(r["pool"]) for r in page.table("composition/source")} == Counter(r["source"] for r in run["rows"])
    assert len(page.tables["duplicates"]) > 1
    png_sizes(page)
    # an embedding store alone: the map without a selection, the pool's composition
    page = Page(write_report(run["store"].path, run["tmp"] / "store.html").read_text(encoding="utf-8"))
    assert page.section_images["map"] == 1 and "no selection" in page.sections["map"]
    assert "no selection steps" in page.sections["steps"] and "no semdedup step" in page.sections["duplicates"]
    # the spec's report.columns replace the auto-detected ones
    spec_run = run["tmp"] / "spec-run"
    shutil.copytree(out, spec_run)
    manifest = json.loads((spec_run / "manifest.json").read_text())
    write_manifest(spec_run, "run", fingerprint="x", body={**{k: manifest[k] for k in ("steps", "output")}, "spec": {"report": {"columns": ["topic"]}}})
    assert [c.column for c in gather_report(spec_run).compositions] == ["topic"]
    data = gather_report(out, columns=["category_id", "label"])  # a named column may hold up to 1,000 values
    assert [c.column for c in data.compositions] == ["category_id", "label"]
    assert data.compositions[0].counts["pool"] == {r["category_id"]: 1 for r in run["rows"]}
    monkeypatch.setattr(report_gather, "MAX_NAMED_DISTINCT", 100)
    data = gather_report(out, columns=["category_id", "label"])
    assert [c.column for c in data.compositions] == ["label"] and "['category_id']" in data.notes["composition"]
    # the runner reports before its manifest exists: it passes the steps itself
    smote = select_smote(run["store"].path, run["tmp"] / "run2/steps/01-smote", labels="label", executor=Executor.in_process(progress=False))
    records = [{"name": "smote", "step": "smote", "dir": "steps/01-smote", "rows_in": run["store"].n_rows, "rows_out": smote.n_rows}]
    shutil.copytree(run["store"].path, run["tmp"] / "run2/embeddings")
    page = Page(write_report(run["tmp"] / "run2", records=records).read_text(encoding="utf-8"))
    (step,) = page.table("steps")
    n_synthetic = smote.manifest["summary"]["n_synthetic"]
    assert int(step["added"]) == smote.n_rows - run["store"].n_rows and n_synthetic > 0
    label = {r["label"]: r for r in page.table("composition/label")}
    assert {v: int(r["smote"]) for v, r in label.items()} == smote.manifest["summary"]["class_counts_after"]
    texts = {r["id"]: r["text"] for r in run["rows"]}
    table = smote.to_table()
    synthetic = {i for i, flag in zip(table.column("id").to_pylist(), table.column("synthetic").to_pylist()) if flag}
    for r in page.table("sample"):  # synthetic rows have no text of their own
        assert r["text"] == ("(no text: a synthetic row)" if r["id"] in synthetic or not r["id"] else texts[r["id"]])
    projection = gather_report(run["tmp"] / "run2", records=records).projection  # the highlighted rows are pool rows only
    assert projection.n_selected == smote.manifest["summary"]["n_kept"] == len(projection.selected_xy)


def test_bad_inputs_and_the_cli(run, report, tmp_path):
    out = run["dir"]
    page = report[0]
    before = page.read_bytes()
    with pytest.raises(ParameterError, match="'nope'"):
        write_report(out, page, columns=["nope"])
    assert page.read_bytes() == before  # a failed report leaves the last good one
    with pytest.raises(ParameterError, match="map_rows"):
        write_report(out, page, map_rows=1)
    with pytest.raises(ArtifactError, match="kind 'index'"):
        write_report(out / "index", tmp_path / "x.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IncompleteArtifactError, match="no manifest.json"):
        write_report(tmp_path / "empty", tmp_path / "x.html")

    runner = CliRunner()
    result = runner.invoke(main, ["report", str(out), "--html", str(tmp_path / "cli.html"), "--column", "label", "--map-rows", "50"])
    assert result.exit_code == 0, result.output
    page = Page((tmp_path / "cli.html").read_text(encoding="utf-8"))
    assert [k for k in page.tables if k.startswith("composition/")] == ["composition/label"]
    result = runner.invoke(main, ["report", str(out), "--html", str(tmp_path / "bad.html"), "--column", "nope"])
    assert result.exit_code == 2 and "'nope'" in result.output and not (tmp_path / "bad.html").exists()


# Appended to a copy of the page: counts the report's images that did not decode; a deliberately broken
# control image shows the check can fail.
CHECK_IMAGES = """<img id="control" src="data:image/png;base64,iVBORw0KGgoAAAAN">
<script>
window.addEventListener("load", () => {
  const images = [...document.images].filter(i => i.id !== "control");
  const bad = images.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)).length;
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", bad);
  document.body.setAttribute("data-control-width", document.getElementById("control").naturalWidth);
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_page_renders_in_headless_chromium(report, tmp_path):
    html = report[1]
    page = Page(html)
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_IMAGES + "</body>"), encoding="utf-8")
    args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=10000"]
    dom = subprocess.run([*args, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    rendered = Page(dom)
    assert set(SECTIONS) <= set(rendered.sections)
    for name in SECTIONS:  # the browser kept every section's content (nothing swallowed by a stray tag)
        assert " ".join(rendered.sections[name].split()) == " ".join(page.sections[name].split())
    assert 'data-control-width="0"' in dom
    assert f'data-images="{len(page.images)}"' in dom and 'data-broken="0"' in dom and len(page.images) >= 7
