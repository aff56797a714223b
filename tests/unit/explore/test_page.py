"""The explore page's escaping: data can never end the script element that carries it, nor become markup."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from thresher.explore.page import render_page, safe_json

HOSTILE = ["</script><script>window.pwned=1</script>", "<img src=x onerror=\"window.pwned=1\">", "<!-- open", "a\u2028b\u2029c",
           "</SCRIPT >", "&lt;already&gt;", "]]>", "\\u003c/script>"]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_json_cannot_close_the_script_and_round_trips(text):
    payload = {"text": [text], text: {"nested": text}, "n": 1.5}
    out = safe_json(payload)
    assert "<" not in out and ">" not in out and "&" not in out and "\u2028" not in out and "\u2029" not in out
    assert json.loads(out) == payload  # \u escapes are plain JSON: the script reads back exactly the data


def _payload(text: str) -> dict:
    return {
        "version": 1, "title": f"thresher explore: {text}", "path": text, "kind": "run",
        "projection": {"method": "pca", "note": text},
        "counts": {"n_rows": 1, "n_table": 1, "n_final": 1, "n_final_pool": 1, "n_synthetic": 0, "n_synthetic_shown": 0, "table_rows": 5,
                   "n_map_sample": 1, "n_pool": 1, "n_refs": 0, "text_chars": 500, "map_text_chars": 200},
        "dictionaries": {"outcome": [text], "task": []}, "category_columns": [],
        "rows": {"id": [text], "text": [text], "x": [0.5], "y": [0.5], "rank": [0], "in_table": [1], "synthetic": [0], "outcome": [0],
                 "task": [None], "categories": {}},
        "steps": [{"name": text, "step": "rds", "kind": "rds", "rows_in": 1, "rows_out": 1, "columns": [], "tasks": [], "facts": {}, "members": {}}],
        "refs": {}, "targets": {}, "notes": {text: text},
    }


class _Scripts(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.scripts: list[dict] = []
        self.tags: list[str] = []
        self._in = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self._in = {"attrs": dict(attrs), "text": ""}
            self.scripts.append(self._in)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in is not None:
            self._in["text"] += data


@pytest.mark.parametrize("text", HOSTILE[:3])
def test_the_page_holds_exactly_its_two_scripts_and_the_data_reads_back(text):
    payload = _payload(text)
    html = render_page(payload)
    page = _Scripts(html)
    assert len(page.scripts) == 2 and page.scripts[0]["attrs"] == {"type": "application/json", "id": "thresher-data"}
    assert json.loads(page.scripts[0]["text"]) == payload
    assert "img" not in page.tags  # the hostile text became no element anywhere (title, notes, steps table)
    assert html.count("<script") == 2 and html.lower().count("</script") == 2
    assert "http://" not in html and "https://" not in html  # loads nothing from anywhere
