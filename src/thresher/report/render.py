"""The report as one static HTML file: a jinja2 template, figures embedded as base64 PNGs.

Row texts come from the user's data and are untrusted: the environment
autoescapes everything and nothing is marked safe (the base64 figures hold no
character that escaping changes). The page carries no script and
loads nothing, so it opens from disk or a mail attachment as it is.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from thresher.exceptions import ParameterError
from thresher.report import plots
from thresher.report.gather import ReportData
from thresher.stores.atomic import atomic_write_bytes

#: Section ids, in page order; every page has all of them (with a note where one does not apply).
SECTIONS = ("steps", "scores", "composition", "map", "duplicates", "sample")

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="thresher report">
<title>{{ data.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-style: italic; }
.figures img { max-width: 100%; margin: 0.4em 0.8em 0.4em 0; }
.pair td { width: 45%; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.82em; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.82em; max-width: 40em; }
</style>
</head>
<body>
<h1>{{ data.title }}</h1>
<p>{{ data.kind }} artefact at <code>{{ data.path }}</code>; report made {{ made }}.
{% if data.n_pool is not none %}Pool rows: <b id="n-pool">{{ data.n_pool }}</b>. {% endif %}
{% if data.n_final is not none %}Rows in the final output: <b id="n-final">{{ data.n_final }}</b>.{% endif %}
</p>
{% if explore %}<p><a id="explore-link" href="{{ explore }}">Explore this selection</a>: an interactive map of the pool, each row's record (why it was kept or dropped) and a searchable table, in one page.</p>
{% elif data.kind == "run" %}<p class="note">An interactive page of this selection: <code>thresher report {{ data.path }} --explore</code> writes it beside this report and links it (a run writes it unless its spec sets <code>report.explore: false</code>).</p>{% endif %}

<section id="steps">
<h2>Steps</h2>
{% if data.steps %}
<table class="steps">
<thead><tr><th>step</th><th>kind</th><th>rows in</th><th>rows out</th><th>dropped</th><th>added</th><th>seconds</th><th>cached</th></tr></thead>
<tbody>
{% for s in data.steps %}
<tr data-step="{{ s.name }}"><td>{{ s.name }}</td><td>{{ s.step }}</td><td class="n rows-in">{{ s.rows_in if s.rows_in is not none else "" }}</td>
<td class="n rows-out">{{ s.rows_out if s.rows_out is not none else "" }}</td><td class="n dropped">{{ s.dropped if s.dropped is not none else "" }}</td>
<td class="n added">{{ s.added if s.added is not none else "" }}</td>
<td class="n">{{ "%.1f"|format(s.seconds) if s.seconds is not none else "" }}</td><td>{{ "yes" if s.cached else ("no" if s.cached is not none else "") }}</td></tr>
{% endfor %}
</tbody></table>
<div class="figures"><img alt="rows kept and dropped per step" src="data:image/png;base64,{{ figures.steps }}"></div>
{% for s in data.steps if s.summary %}
<details><summary>{{ s.name }}: summary</summary><pre>{{ s.summary | tojson(indent=1) }}</pre></details>
{% endfor %}
{% else %}<p class="note">{{ data.notes.get("steps", "no steps.") }}</p>{% endif %}
</section>

<section id="scores">
<h2>Score histograms</h2>
{% if data.histograms %}
<div class="figures">
{% for h in data.histograms %}<img alt="{{ h.title }}" title="{{ h.n }} rows, mean {{ '%.4g'|format(h.mean) }}" src="data:image/png;base64,{{ figures.histograms[loop.index0] }}">{% endfor %}
</div>
{% else %}<p class="note">{{ data.notes.get("scores", "no scores.") }}</p>{% endif %}
</section>

<section id="composition">
<h2>Composition before and after</h2>
{% if data.compositions %}
{% for c in data.compositions %}
<h3>{{ c.column }}</h3>
<div class="figures"><img alt="composition by {{ c.column }}" src="data:image/png;base64,{{ figures.compositions[loop.index0] }}"></div>
<table class="composition" data-column="{{ c.column }}">
<thead><tr><th>{{ c.column }}</th>{% for stage in c.stages %}<th>{{ stage }}</th>{% endfor %}</tr></thead>
<tbody>
{% for value in c.values() %}
<tr><td>{{ value }}</td>{% for stage in c.stages %}<td class="n">{% if c.counts[stage] is not none %}{{ c.counts[stage].get(value, 0) }}{% else %}&ndash;{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table>
{% endfor %}
{% if data.notes.get("composition") %}<p class="note">{{ data.notes["composition"] }}</p>{% endif %}
{% else %}<p class="note">{{ data.notes.get("composition", "no composition columns.") }}</p>{% endif %}
</section>

<section id="map">
<h2>Map of the pool</h2>
{% if data.projection %}
<p>PCA (fitted on a seeded sample of {{ data.projection.pool_xy|length }} of {{ data.projection.n_pool }} pool rows);
{% if data.projection.selected_xy is not none %}highlighted: a seeded sample of {{ data.projection.selected_xy|length }} of the {{ data.projection.n_selected }} selected pool rows.{% else %}no selection.{% endif %}</p>
<div class="figures"><img alt="PCA map of the pool" src="data:image/png;base64,{{ figures.map }}"></div>
{% else %}<p class="note">{{ data.notes.get("map", "no embedding store to map.") }}</p>{% endif %}
</section>

<section id="duplicates">
<h2>Duplicates removed</h2>
{% if data.n_removed is not none %}
<p>{{ data.n_removed }} rows removed as near-duplicates; {{ data.duplicates|length }} pairs shown (a seeded sample, most similar first).</p>
{% if data.notes.get("duplicates") %}<p class="note">{{ data.notes["duplicates"] }}</p>{% endif %}
<table class="duplicates">
<thead><tr><th>removed row</th><th>kept row it duplicates</th><th>similarity</th><th>cluster</th></tr></thead>
<tbody>
{% for d in data.duplicates %}
<tr class="pair"><td><b>{{ d.removed_id }}</b>
{{ d.removed_text }}</td><td><b>{{ d.kept_id }}</b>
{{ d.kept_text }}</td><td class="n">{{ "%.4f"|format(d.similarity) if d.similarity is not none else "" }}</td><td>{{ d.cluster if d.cluster is not none else "" }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="note">{{ data.notes.get("duplicates", "no duplicates.") }}</p>{% endif %}
</section>

<section id="sample">
<h2>Sample of selected rows</h2>
{% if data.sample_rows %}
<p>{{ data.sample_rows|length }} of {{ data.n_sample_from }} rows of the final output (a seeded sample, in rank order).</p>
<table class="sample">
<thead><tr>{% for c in data.sample_columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in data.sample_rows %}
<tr>{% for c in data.sample_columns %}<td{% if c == "text" %} class="text"{% endif %}>{{ row.get(c) if row.get(c) is not none else "" }}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table>
{% else %}<p class="note">{{ data.notes.get("sample", "the output is empty.") }}</p>{% endif %}
</section>
</body>
</html>
"""


def render_html(data: ReportData, *, explore: str | None = None) -> str:
    """The report page for gathered ``data`` (figures drawn here); ``explore`` is the relative link to an explore page, if any."""
    import jinja2

    figures: dict[str, Any] = {
        "steps": plots.step_counts(data.steps) if data.steps else None,
        "histograms": [plots.histogram(h) for h in data.histograms],
        "compositions": [plots.composition(c) for c in data.compositions],
        "map": plots.projection(data.projection) if data.projection is not None else None,
    }
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return env.from_string(_TEMPLATE).render(data=data, figures=figures, made=made, explore=explore)


def write_report(path: str | Path, html_path: str | Path | None = None, *, explore: bool | None = None, **options: Any) -> Path:
    """Gather the artefact at ``path``, render the page and write it atomically to ``html_path``.

    ``html_path`` defaults to ``<path>/report.html``; ``options`` go to
    :func:`thresher.report.gather.gather_report` (``columns``, ``map_rows``, ``seed``, ``records``, …).

    ``explore``: also write the interactive page (:func:`thresher.explore.explore`)
    as ``explore.html`` beside the report, first, and link it from the report
    (a relative link, so both open from disk). Default (None): what the run
    spec's ``report.explore`` says for a run directory (true unless set
    false), no page for any other artefact. Without a new page the report
    still links an explore page thresher wrote beside it earlier.
    Returns the report's path.
    """
    from thresher.report.gather import gather_report
    from thresher.stores.output_guard import check_output

    if explore is not None and not isinstance(explore, bool):
        raise ParameterError(f"The 'explore' parameter of write_report must be True, False or None; got {explore!r}.")
    out = Path(html_path) if html_path is not None else Path(path) / "report.html"
    # a new file or a page thresher wrote; never a directory, an input or a file of an artefact
    check_output(out, "report", inputs={"path": path}, name="html_path")
    if explore is None:
        explore = options.get("records") is None and _spec_wants_explore(Path(path))
    if explore:
        from thresher.explore import EXPLORE_NAME
        from thresher.explore import explore as write_explore

        write_explore(path, out.parent / EXPLORE_NAME, seed=options.get("seed", 0), records=options.get("records"))
    data = gather_report(path, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render_html(data, explore=_explore_beside(out)).encode("utf-8"))
    return out


def _spec_wants_explore(path: Path) -> bool:
    """A run directory's ``report.explore`` (true when its spec does not say); false for any other artefact."""
    from thresher.stores.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest["artifact"] != "run":
        return False
    wanted = ((manifest.get("spec") or {}).get("report") or {}).get("explore", True)
    if not isinstance(wanted, bool):
        raise ParameterError(f"report.explore in the spec of {path} must be true or false; got {wanted!r}.")
    return wanted


def _explore_beside(page: Path) -> str | None:
    """``explore.html`` when an explore page thresher wrote sits beside the report (``thresher explore RUN`` puts it there)."""
    from thresher.explore import EXPLORE_NAME

    candidate = page.parent / EXPLORE_NAME
    try:
        with candidate.open("r", encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return None
    return candidate.name if '<meta name="thresher-page" content="explore">' in head else None
