"""The explore page as one self-contained HTML file: the template, the embedded JSON, the hand-written script and style.

No server, no network: the script and style are inlined from ``assets/``
(hand-written, no library), the data is one ``<script type="application/json">``
block that the script parses. Row texts and every other value come from the
user's data and are untrusted:

* the template autoescapes everything it prints;
* the JSON is made safe to sit inside a script element: ``<``, ``>``, ``&``
  and the line separators U+2028/U+2029 are written as ``\\u`` escapes, so no
  data can close the element (``</script>``) or open a comment;
* the script puts data on the page with ``textContent`` only, never as HTML.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

from thresher.stores.output_guard import REPORT_MARKER

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{{ marker }}
<meta name="thresher-page" content="explore">
<title>{{ data.title }}</title>
<style>
{{ css }}
</style>
</head>
<body>
<h1>{{ data.title }}</h1>
<p>{{ data.kind }} at <code>{{ data.path }}</code>; page made {{ made }}.</p>
<p id="counts">This page embeds <b id="n-rows">{{ c.n_rows }}</b> rows:
{% if c.n_final %}<b id="n-table">{{ c.n_table }}</b> of the <b id="n-final">{{ c.n_final }}</b> rows of the final output
({% if c.n_final_pool > c.table_rows %}a seeded sample of its {{ c.n_final_pool }} pool rows{% else %}all its pool rows{% endif %}),
{% endif %}{% if c.n_synthetic %}<b id="n-synthetic-shown">{{ c.n_synthetic_shown }}</b> of the <b id="n-synthetic">{{ c.n_synthetic }}</b> synthetic rows SMOTE made, {% endif %}
<b id="n-map">{{ c.n_map_sample }}</b> of the <b id="n-pool">{{ c.n_pool }}</b> pool rows as a seeded sample on the map{% if c.n_refs %}, and the texts of {{ c.n_refs }} rows they refer to{% endif %}.
Texts are cut to {{ c.text_chars }} characters ({{ c.map_text_chars }} for rows only on the map).</p>
<p id="projection" data-method="{{ data.projection.method }}">Map: {{ data.projection.note }}</p>
{% if data.steps %}
<table class="steps"><thead><tr><th>step</th><th>kind</th><th>rows in</th><th>rows out</th></tr></thead><tbody>
{% for s in data.steps %}<tr><td>{{ s.name }}</td><td>{{ s.step }}</td><td class="n">{{ s.rows_in if s.rows_in is not none else "" }}</td><td class="n">{{ s.rows_out if s.rows_out is not none else "" }}</td></tr>
{% endfor %}</tbody></table>
{% endif %}
{% for key, note in data.notes.items() %}<p class="note">{{ key }}: {{ note }}</p>{% endfor %}
<div class="controls"><label>colour by <select id="colour"></select></label> <span id="legend"></span></div>
<div id="top">
<div id="map-box"><canvas id="map" width="760" height="560"></canvas><div id="tooltip"></div></div>
<div id="record"><p class="note">Hover over a point to see its row; click one (or a table row) to pin its record.</p></div>
</div>
<h2>Rows</h2>
<div class="controls"><label>search <input id="search" type="search" placeholder="id or text"></label><span id="filters"></span></div>
<div><button id="prev" type="button">&larr; previous</button> <button id="next" type="button">next &rarr;</button> <span id="table-status"></span></div>
<table id="rows"><thead></thead><tbody></tbody></table>
<script type="application/json" id="thresher-data">{{ payload }}</script>
<script>
{{ script }}
</script>
</body>
</html>
"""


def safe_json(payload: Any) -> str:
    """``payload`` as compact JSON that cannot end the ``<script>`` element it is placed in (nor open a comment or tag).

    >>> safe_json({"t": "</script><!--"})
    '{"t":"\\\\u003c/script\\\\u003e\\\\u003c!--"}'
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for character, escape in _ESCAPES.items():  # str.replace scans in C: megabytes of JSON, a few passes (a loop per character: seconds)
        text = text.replace(character, escape)
    return text


def _asset(name: str) -> str:
    return resources.files("thresher.explore").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(payload: dict[str, Any]) -> str:
    """The page for a gathered ``payload`` (see :func:`thresher.explore.gather.gather_explore`)."""
    import jinja2
    from markupsafe import Markup

    script, css = _asset("explore.js"), _asset("explore.css")
    for name, text in (("explore.js", script), ("explore.css", css)):
        if "</" in text:  # our own files: they must not close their element early
            raise RuntimeError(f"thresher/explore/assets/{name} contains '</', which would end its element in the page.")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # Markup: these three are inserted as they are; the JSON is escaped by safe_json, the assets are ours and checked above
    return env.from_string(_TEMPLATE).render(
        data=payload, c=payload["counts"], made=made, marker=Markup(REPORT_MARKER), css=Markup(css), script=Markup(script),
        payload=Markup(safe_json(payload)),
    )


def write_page(out: str | Path, payload: dict[str, Any]) -> Path:
    """Render ``payload`` and write it atomically to ``out``."""
    from thresher.stores.atomic import atomic_write_bytes

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render_page(payload).encode("utf-8"))
    return out
