"""``thresher explore``: one self-contained, interactive HTML page of a selection — what was kept, what was dropped, and why.

``gather`` chooses the bounded set of rows the page embeds and reads the
per-row facts the steps stored (:mod:`thresher.explore.gather`),
``projection`` maps them to 2-D (UMAP or PCA), ``page`` writes the file
(template, escaped JSON, hand-written script and style from ``assets/``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from thresher.explore.gather import gather_explore
from thresher.explore.page import render_page, safe_json, write_page

#: the page's file name beside a run's report.html (the report links to it when it is there)
EXPLORE_NAME = "explore.html"

__all__ = ["EXPLORE_NAME", "explore", "gather_explore", "render_page", "safe_json", "write_page"]


def explore(path: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Write the explore page of the run (or a run's curated output, or an embedding store) at ``path``.

    Parameters
    ----------
    path : path
        A run directory (``thresher run``'s output), curated shards made by a
        run, or an embedding store.
    out : path, optional
        The page's file. Default for a run directory: ``<run>/explore.html``,
        beside ``report.html`` (whose page then links to it); required otherwise.
    **options
        Go to :func:`thresher.explore.gather.gather_explore`: ``map_rows``,
        ``table_rows``, ``text_chars``, ``map_text_chars`` bound what the page
        embeds (so its size), ``method`` chooses the map's projection, ``seed``
        seeds the samples, ``records`` stands for a run manifest not written yet.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    from thresher.exceptions import ParameterError
    from thresher.stores.manifest import read_manifest
    from thresher.stores.output_guard import check_output

    if out is None:
        if options.get("records") is None and read_manifest(path)["artifact"] != "run":
            raise ParameterError(f"explore needs an output file for {path} (--out explore.html): only a run directory has a default page.")
        out = Path(path) / EXPLORE_NAME
    # a new file or a page thresher wrote; never a directory, an input or a file of an artefact
    check_output(out, "report", inputs={"path": path}, name="out")
    return write_page(out, gather_explore(path, **options))


class _CallableModule(type(sys)):
    """``thresher.explore`` is this package (its modules) and also the function: ``thresher.explore(run, out)``.

    Importing a subpackage sets it as an attribute of its parent, so the
    package itself must be callable for ``thresher.explore(...)`` to mean the
    function whichever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return explore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
