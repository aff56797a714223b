"""``thresher explore`` on a real run (semdedup → RDS+ → SMOTE and B3 on RDS+'s rows), checked against the artefacts, and
driven in headless Chromium: hover, click, search, escaping, load time, screenshot."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import thresher
from thresher.cli import main
from thresher.pipeline.dedup import read_removed
from thresher.pipeline.runner import run_pipeline
from thresher.stores import open_curated, open_embedding_store
from thresher.stores.arrow_io import read_stream_shard

SCRIPT_ROW = "<script>window.pwned=1</script>"
IMG_ROW = '<img src=x onerror="window.pwned=1">'
SEARCH_WORD = "zanzibar"  # planted in a few rows' text, nowhere else in the pool


def _pool(path: Path) -> Path:
    """230 rows of the bundled demo pool, three with a planted word, plus two rows whose whole text is hostile HTML."""
    from thresher.pipeline.spec import bundled_path

    with gzip.open(bundled_path("demo_pool.jsonl.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    openings = [json.loads(x) for x in lines if '"chitchat/opening"' in x][:170]
    continuations = [json.loads(x) for x in lines if '"chitchat/continuation"' in x][:60]
    rows = openings + continuations
    for i in (3, 50, 120):
        rows[i]["messages"][0]["content"] += f" I dream of a trip to {SEARCH_WORD.capitalize()} one day."
    for i, text in enumerate((SCRIPT_ROW, IMG_ROW)):
        rows.append({"id": f"hostile-{i}", "source": "chitchat/opening", "label": "low", "messages": [{"role": "user", "content": text}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, minilm_path, dask_client):
    root = tmp_path_factory.mktemp("explore")
    pool = _pool(root / "pool.jsonl")
    spec = {
        "name": "explore-test",
        "pool": {"path": str(pool), "id_column": "id", "messages_column": "messages", "partition_rows": 100},
        "embedding": {"model": minilm_path, "max_length": 64},
        "index": {"type": "flat"},
        "steps": [
            {"step": "semdedup", "name": "dedup", "n_clusters": 6, "eps": 0.12},
            {"step": "rds", "budget": 96, "targets": "bundled:demo_targets.jsonl", "target_task_column": "task"},
            {"step": "smote", "name": "balanced", "input": "rds", "labels": "label", "k_neighbors": 2},
            {"step": "batches", "input": "rds", "batch_size": 32, "community_size": 8, "rank_window": [1, 9]},
        ],
        "report": {"html": True, "columns": ["source", "label"]},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = run_pipeline(root / "spec.yaml", out=root / "run", client=dask_client, progress=False, echo=lambda *_: None)
    steps = {s.name: result.path / s.dir for s in result.steps}
    # the pages the run wrote (report.explore is on by default), kept before the tests below write them again
    pages = {name: (result.path / name).read_text(encoding="utf-8") for name in ("report.html", "explore.html")}
    return {"dir": result.path, "root": root, "steps": steps, "pool": pool, "pages": pages}


def _payload(html: str) -> dict:
    start = html.index('<script type="application/json" id="thresher-data">') + len('<script type="application/json" id="thresher-data">')
    return json.loads(html[start : html.index("</script>", start)])


def _explore_link(report_html: str) -> str | None:
    """The href of the report's link to the explore page, or None."""
    import re

    found = re.search(r'<a id="explore-link" href="([^"]*)">', report_html)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def page(run):
    """The page written by the CLI at its default place, and the JSON it embeds."""
    out = CliRunner().invoke(main, ["explore", str(run["dir"]), "--method", "pca"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    path = run["dir"] / "explore.html"
    assert f"explore page written to {path}" in out.output
    html = path.read_text(encoding="utf-8")
    return path, html, _payload(html)


def test_rds_stores_each_rows_nearest_target_example(run, minilm_path):
    """nearest_target is the argmax of the exact cosine between the row and the task's examples, embedded here again."""
    from thresher.pipeline.targets import load_targets

    rds = open_curated(run["steps"]["rds"])
    store = open_embedding_store(run["dir"] / "embeddings")
    table = rds.to_table()
    tasks = rds.manifest["params"]["targets"]
    assert tasks == ["food", "travel"] and "nearest_target" in rds.manifest["selection_columns"]
    split = sorted((run["dir"] / "targets").rglob("task-*.jsonl"))
    arrays, _ = load_targets(dict(zip(tasks, map(str, split))), store)
    x = store.take(store.positions_of(table.column("id").to_pylist()), dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nearest = np.array(table.column("nearest_target").to_pylist())
    scores = np.array(table.column("task_scores").to_pylist())
    for t, task in enumerate(tasks):
        q = arrays[task].astype(np.float64)
        cos = x @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T
        np.testing.assert_array_equal(nearest[:, t], cos.argmax(axis=1))
        np.testing.assert_allclose(scores[:, t], cos.max(axis=1), atol=1e-9)
    # targets.arrow: every target example with its text, by task and position
    targets = read_stream_shard(run["steps"]["rds"] / "targets.arrow").to_pylist()
    demo = [json.loads(line) for line in (Path(thresher.__file__).parent / "data" / "demo_targets.jsonl").read_text().splitlines()]
    for task in tasks:
        mine = [r for r in targets if r["task"] == task]
        expected = [r["messages"] for r in demo if r["task"] == task]
        assert [r["position"] for r in mine] == list(range(len(expected)))
        assert all(m["content"] in r["text"] for r, msgs in zip(mine, expected) for m in msgs)


def test_inspect_shows_the_per_row_facts(run):
    out = CliRunner().invoke(main, ["inspect", str(run["steps"]["rds"]), "--rows", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "per-row facts" in out.output and "nearest_target" in out.output and "targets.arrow" in out.output
    first = open_curated(run["steps"]["rds"]).to_table().slice(0, 1).to_pylist()[0]
    assert f"closest food example #{first['nearest_target'][0]}" in out.output
    dedup = CliRunner().invoke(main, ["inspect", str(run["steps"]["dedup"])], catch_exceptions=False)
    removed = read_removed(run["steps"]["dedup"]).slice(0, 1).to_pylist()
    assert removed, "the fixture must remove at least one duplicate"
    assert f"{removed[0]['id']} duplicates {removed[0]['duplicate_of']}" in dedup.output


def test_page_embeds_every_row_with_the_outcome_the_artefacts_give(run, page):
    _, html, payload = page
    rows = payload["rows"]
    store = open_embedding_store(run["dir"] / "embeddings")
    assert payload["counts"]["n_pool"] == store.n_rows and payload["counts"]["n_map_sample"] == store.n_rows  # small: all on the map
    assert payload["projection"]["method"] == "pca" and 'data-method="pca"' in html
    removed = set(read_removed(run["steps"]["dedup"]).column("id").to_pylist())
    kept = set(open_curated(run["steps"]["dedup"]).to_table().column("id").to_pylist())
    rds = {r["id"]: r for r in open_curated(run["steps"]["rds"]).to_table().select(["id", "task"]).to_pylist()}
    final = set(x for x in open_curated(run["steps"]["batches"]).to_table().column("id").to_pylist())
    smote_rows = open_curated(run["steps"]["balanced"]).to_table().select(["id", "synthetic", "label"]).to_pylist()
    synthetic = {r["id"] for r in smote_rows if r["synthetic"]}
    outcome_of = {rid: payload["dictionaries"]["outcome"][code] for rid, code in zip(rows["id"], rows["outcome"])}
    for rid in store.ids().tolist():
        if rid in removed:
            want = "removed as duplicate (dedup)"
        elif rid not in rds:
            assert rid in kept
            want = "dropped by rds"
        elif rid not in final:
            want = "dropped by batches"
        else:
            want = f"selected for {rds[rid]['task']}"
        assert outcome_of[rid] == want, rid
    assert {rid for rid, o in outcome_of.items() if o == "synthetic (balanced)"} == synthetic & set(rows["id"]) and synthetic
    assert sum(rows["in_table"]) == len(final) + len(synthetic)  # small: the whole output and every synthetic row
    label_of = {r["id"]: r["label"] for r in smote_rows}
    labels = payload["dictionaries"]["label"]
    for j, rid in enumerate(rows["id"]):  # a synthetic row's class comes from SMOTE's output (it has no pool row)
        if rid in synthetic:
            assert labels[rows["categories"]["label"][j]] == label_of[rid] and rows["text"][j].startswith("(synthetic row made by balanced")
    assert all(x is not None and 0 <= x <= 1 for x in rows["x"])  # every row mapped, synthetic ones from their stored vectors
    assert all("id" not in f for step in payload["steps"] for f in step["facts"].values())  # facts, not the row again
    # facts: a removed row names its kept twin, whose text the page carries
    dedup = next(s for s in payload["steps"] if s["kind"] == "semdedup")
    twin_rows = [(int(i), f) for i, f in dedup["facts"].items() if f.get("removed")]
    assert len(twin_rows) == len(removed)
    index = {str(r): i for i, r in enumerate(rows["id"])}
    for i, f in twin_rows:
        assert f["duplicate_of"] in kept and f["max_similarity"] >= 1 - 0.12 - 1e-9  # (similarity to the twin may be lower: a chain)
        assert rows["text"][index[str(f["duplicate_of"])]]


def test_report_links_to_the_explore_page_beside_it(run, page):
    from thresher.report import write_report

    report = write_report(run["dir"], run["dir"] / "report.html")
    text = report.read_text(encoding="utf-8")
    assert '<a id="explore-link" href="explore.html">' in text
    other = write_report(run["steps"]["rds"], run["root"] / "alone.html")
    assert 'id="explore-link"' not in other.read_text(encoding="utf-8")


def test_a_run_writes_the_explore_page_beside_its_report_and_links_it(run):
    """report.explore defaults to true: the run's report links explore.html, which is the explore page of this run."""
    assert _explore_link(run["pages"]["report.html"]) == "explore.html"
    explore_html = run["pages"]["explore.html"]
    assert '<meta name="thresher-page" content="explore">' in explore_html
    payload = _payload(explore_html)
    final = open_curated(run["steps"]["batches"])
    assert payload["path"] == str(run["dir"]) and payload["counts"]["n_pool"] == open_embedding_store(run["dir"] / "embeddings").n_rows
    assert payload["counts"]["n_final"] == final.n_rows and [s["name"] for s in payload["steps"]] == ["dedup", "rds", "balanced", "batches"]
    # its rows carry the outcomes the run's artefacts give (the same page `thresher explore` makes, checked in detail below)
    kept = set(final.to_table().column("id").to_pylist())
    outcomes = payload["dictionaries"]["outcome"]
    assert {rid for rid, code in zip(payload["rows"]["id"], payload["rows"]["outcome"]) if outcomes[code].startswith("selected for")} == kept
    events = [json.loads(line) for line in (run["dir"] / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    report_events = [e for e in events if e["event"] == "report"]
    assert report_events[-1]["explore"] == str(run["dir"] / "explore.html")


def test_report_explore_flag_writes_the_page_beside_the_report_and_links_it(run, tmp_path):
    from thresher.exceptions import ParameterError
    from thresher.report import write_report

    def report(*args: str) -> Path:
        out = CliRunner().invoke(main, ["report", *args, "--map-rows", "50"], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return Path(out.output.split("report written to ", 1)[1].strip())

    # --explore: explore.html beside the report wherever it goes, linked relative to it
    page = report(str(run["dir"]), "--html", str(tmp_path / "a" / "report.html"), "--explore")
    href = _explore_link(page.read_text(encoding="utf-8"))
    assert href == "explore.html" and (page.parent / href).is_file()
    linked = _payload((page.parent / href).read_text(encoding="utf-8"))
    assert linked["path"] == str(run["dir"]) and linked["counts"]["n_final"] == open_curated(run["steps"]["batches"]).n_rows
    # --no-explore: no page, no link
    page = report(str(run["dir"]), "--html", str(tmp_path / "b" / "report.html"), "--no-explore")
    assert not (tmp_path / "b" / "explore.html").exists() and _explore_link(page.read_text(encoding="utf-8")) is None
    # neither: a run directory follows its spec's report.explore (true by default)
    page = report(str(run["dir"]), "--html", str(tmp_path / "c" / "report.html"))
    assert _explore_link(page.read_text(encoding="utf-8")) == "explore.html" and (tmp_path / "c" / "explore.html").is_file()
    # curated shards made by the run: off by default, --explore gives the page of the run up to that step
    page = report(str(run["steps"]["rds"]), "--html", str(tmp_path / "d" / "report.html"))
    assert not (tmp_path / "d" / "explore.html").exists()
    page = report(str(run["steps"]["rds"]), "--html", str(tmp_path / "d" / "report.html"), "--explore")
    assert [s["name"] for s in _payload((tmp_path / "d" / "explore.html").read_text(encoding="utf-8"))["steps"]] == ["dedup", "rds"]
    assert _explore_link(page.read_text(encoding="utf-8")) == "explore.html"
    with pytest.raises(ParameterError, match="'explore' parameter of write_report"):
        write_report(run["dir"], tmp_path / "e.html", explore="yes")


def test_a_run_whose_spec_turns_explore_off_gets_no_page_and_a_bad_value_is_named(run, tmp_path):
    """A copy of the run whose manifest's spec says report.explore: false (or a value that is not a bool)."""
    from thresher.exceptions import ParameterError
    from thresher.report import write_report

    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy, ignore=shutil.ignore_patterns("explore.html", "report.html"))
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    for value, expected in ((False, None), ("yes", ParameterError)):
        manifest["spec"]["report"]["explore"] = value
        (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        if expected is None:
            html = write_report(copy, map_rows=50).read_text(encoding="utf-8")
            assert not (copy / "explore.html").exists() and _explore_link(html) is None
            assert "--explore</code> writes it beside this report" in html
        else:
            with pytest.raises(expected, match=r"report\.explore in the spec of .* must be true or false; got 'yes'"):
                write_report(copy, map_rows=50)


def test_explore_refuses_a_file_it_did_not_write_and_a_bad_parameter(run, tmp_path):
    mine = tmp_path / "notes.html"
    mine.write_text("my notes", encoding="utf-8")
    out = CliRunner().invoke(main, ["explore", str(run["dir"]), "--out", str(mine), "--method", "pca"])
    assert out.exit_code != 0 and "not a report thresher wrote" in out.output and mine.read_text() == "my notes"
    with pytest.raises(thresher.exceptions.ParameterError, match="'map_rows' parameter of explore"):
        thresher.explore(run["dir"], tmp_path / "x.html", map_rows=1)
    with pytest.raises(thresher.exceptions.ParameterError, match="needs an output file"):
        thresher.explore(run["steps"]["rds"])


# -- in a real browser ----------------------------------------------------------------------------


def _driver(tmp_path):
    """Headless Chromium through chromedriver; skips, giving the reason, only when either cannot be found or started."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except WebDriverException as exc:
        pytest.skip(f"chromium could not be started: {exc.msg}")


def _isolated_point(driver) -> int:
    """A row whose point is at least 12 px from every other point (so hovering it can only mean it)."""
    return driver.execute_script("""
      const api = window.thresherExplore, n = api.data.rows.id.length;
      const pts = []; for (let i = 0; i < n; i++) pts.push(api.pointXY(i));
      for (let i = 0; i < n; i++) {
        if (!pts[i]) continue;
        let ok = true;
        for (let j = 0; j < n && ok; j++) if (j !== i && pts[j] && Math.hypot(pts[i][0]-pts[j][0], pts[i][1]-pts[j][1]) < 12) ok = false;
        if (ok) return i;
      }
      return -1;""")


def _move_to(driver, canvas, i: int, click: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    x, y = driver.execute_script("return window.thresherExplore.pointXY(arguments[0]);", i)
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    chain = ActionChains(driver).move_to_element_with_offset(canvas, round(x - rect[0] / 2), round(y - rect[1] / 2))
    (chain.click() if click else chain).perform()


def test_the_page_works_in_headless_chromium(run, page, tmp_path):
    from selenium.webdriver.common.by import By

    path, _, payload = page
    rows = payload["rows"]
    driver = _driver(tmp_path)
    try:
        started = time.perf_counter()
        driver.get(path.as_uri())
        loaded = time.perf_counter() - started
        timing = driver.execute_script("const t = performance.getEntriesByType('navigation')[0]; return [t.loadEventEnd, window.thresherExplore.readyMs];")
        assert loaded < 3 and timing[0] < 3000, (loaded, timing)
        assert driver.execute_script("return typeof window.pwned") == "undefined"
        canvas = driver.find_element(By.ID, "map")

        # hover: the tooltip shows that row's id and text
        i = _isolated_point(driver)
        assert i >= 0
        _move_to(driver, canvas, i)
        tooltip = driver.find_element(By.ID, "tooltip")
        assert tooltip.is_displayed()
        assert tooltip.find_element(By.CLASS_NAME, "tip-id").text == str(rows["id"][i])
        assert tooltip.find_element(By.CLASS_NAME, "tip-text").text == " ".join(rows["text"][i].split()) or \
            tooltip.find_element(By.CLASS_NAME, "tip-text").get_attribute("textContent") == rows["text"][i]

        # click a removed row: its record names the kept twin with its text and the similarity
        dedup = next(s for s in payload["steps"] if s["kind"] == "semdedup")
        removed_i = next(int(k) for k, f in dedup["facts"].items() if f.get("removed"))
        driver.execute_script("window.scrollTo(0, 0);")
        _move_to(driver, canvas, removed_i, click=True)
        pinned = int(driver.find_element(By.ID, "record").get_attribute("data-row"))
        f = dedup["facts"].get(str(pinned))
        record = driver.find_element(By.ID, "record").get_attribute("textContent")
        assert str(rows["id"][pinned]) in record
        if f and f.get("removed"):  # the click landed on that row (or on one at the same place)
            assert f"near-duplicate of {f['duplicate_of']}" in record and f"{f['similarity']:.4f}" in record

        # an RDS+ row: per-task scores and the closest target example's text
        rds = next(s for s in payload["steps"] if s["kind"] == "rds")
        sel_i, facts = next((int(k), f) for k, f in rds["facts"].items())
        driver.execute_script("window.thresherExplore.pin(arguments[0]);", sel_i)
        record = driver.find_element(By.ID, "record").get_attribute("textContent")
        for t, task in enumerate(rds["tasks"]):
            assert f"{facts['task_scores'][t]:.4f}" in record
            target = payload["targets"][task][str(facts["nearest_target"][t])]
            assert target[:60] in record
        # a synthetic row: its parents and gap
        smote = next(s for s in payload["steps"] if s["kind"] == "smote")
        syn_i, syn = next((int(k), f) for k, f in smote["facts"].items() if f.get("parents"))
        driver.execute_script("window.thresherExplore.pin(arguments[0]);", syn_i)
        record = driver.find_element(By.ID, "record").get_attribute("textContent")
        assert f"gap {syn['gap']:.4f}" in record and all(str(p) in record for p in syn["parents"])
        # a B3 row: batch, community and the community's other members
        b3 = next(s for s in payload["steps"] if s["kind"] == "batches")
        b3_i, b3f = next((int(k), f) for k, f in b3["facts"].items())
        driver.execute_script("window.thresherExplore.pin(arguments[0]);", b3_i)
        record = driver.find_element(By.ID, "record").get_attribute("textContent")
        others = [m for m in b3["members"][str(b3f["community"])] if str(m) != str(rows["id"][b3_i])]
        assert f"batch {b3f['batch']}, community {b3f['community']}" in record and others and all(str(m) in record for m in others)

        # search: the table shows exactly the rows whose id or text holds the word
        box = driver.find_element(By.ID, "search")
        box.send_keys(SEARCH_WORD)
        shown = driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
        expected = [j for j, text in enumerate(rows["text"]) if SEARCH_WORD in text.lower() or SEARCH_WORD in str(rows["id"][j]).lower()]
        assert len(expected) == 3
        assert sorted(int(tr.get_attribute("data-row")) for tr in shown) == expected
        assert all(SEARCH_WORD in tr.text.lower() for tr in shown)

        # escaping: the hostile rows show literally, and nothing ran
        box.clear()
        box.send_keys("pwned")
        cells = [td.get_attribute("textContent") for td in driver.find_elements(By.CSS_SELECTOR, "#rows tbody td.text")]
        assert SCRIPT_ROW in " ".join(cells) and IMG_ROW in " ".join(cells)
        hostile = rows["id"].index("hostile-1")
        driver.execute_script("window.thresherExplore.pin(arguments[0]);", hostile)
        assert IMG_ROW in driver.find_element(By.ID, "record").get_attribute("textContent")
        assert driver.find_elements(By.CSS_SELECTOR, "#record img, #rows img, #tooltip img") == []
        assert driver.execute_script("return typeof window.pwned") == "undefined"

        shot = tmp_path / "explore.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("THRESHER_TEST_ARTIFACTS"):
            keep = Path(os.environ["THRESHER_TEST_ARTIFACTS"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, keep / "explore.png")
    finally:
        driver.quit()


def test_the_reports_link_opens_the_explore_page_from_disk_in_chromium(run, tmp_path):
    """file:// all the way: the report written with --explore, its link clicked, the explore page drawn (its ready marker set)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = CliRunner().invoke(main, ["report", str(run["dir"]), "--html", str(tmp_path / "pages" / "report.html"), "--explore",
                                    "--map-rows", "50"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    driver = _driver(tmp_path)
    try:
        driver.get((tmp_path / "pages" / "report.html").as_uri())
        link = driver.find_element(By.ID, "explore-link")
        assert link.is_displayed() and link.text == "Explore this selection"
        link.click()
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready-ms"))
        assert driver.current_url == (tmp_path / "pages" / "explore.html").as_uri()
        assert driver.execute_script("return window.thresherExplore.data.path") == str(run["dir"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 25  # the table's first page is drawn
    finally:
        driver.quit()


def test_an_explore_page_written_into_an_artefact_is_cleared_with_it_and_a_foreign_one_is_not(run, tmp_path):
    """`thresher report CURATED --explore` writes explore.html into the artefact: --overwrite may remove it, never a user's file of that name."""
    from thresher.exceptions import ArtifactError
    from thresher.stores.output_guard import clear_output

    copy = tmp_path / "rds"
    shutil.copytree(run["steps"]["rds"], copy)
    out = CliRunner().invoke(main, ["report", str(copy), "--explore", "--map-rows", "50"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert (copy / "explore.html").is_file() and _explore_link((copy / "report.html").read_text(encoding="utf-8")) == "explore.html"
    clear_output(copy, "curated")
    assert not (copy / "explore.html").exists() and not (copy / "report.html").exists()

    shutil.rmtree(copy)
    shutil.copytree(run["steps"]["rds"], copy)
    (copy / "explore.html").write_text("<html>my own notes</html>", encoding="utf-8")
    with pytest.raises(ArtifactError, match="explore.html"):
        clear_output(copy, "curated")
    assert (copy / "explore.html").read_text(encoding="utf-8") == "<html>my own notes</html>"
