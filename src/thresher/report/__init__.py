"""The static HTML report of a run or an artefact (``thresher report``).

``gather`` reads what the page shows from artefacts (streaming, sampled),
``plots`` draws the figures, ``render`` writes the self-contained page (and,
with ``explore``, the interactive page beside it, linked). ``reading`` holds
the streaming reads this page and ``thresher explore``'s share.
"""

from thresher.report.gather import ReportData, gather_report
from thresher.report.render import SECTIONS, render_html, write_report

__all__ = ["SECTIONS", "ReportData", "gather_report", "render_html", "write_report"]
