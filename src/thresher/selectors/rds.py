"""RDS+: task-targeted data selection by cosine similarity (Ivison et al. 2025, arXiv 2503.01807).

Pool and target-task (query) examples are embedded with the model that will
be finetuned, position-weighted mean pooling; each pool example is scored by
its cosine similarity to the task's query examples:

    score_t(x) = max_{q in Q_t} cos(x, q)        (aggregation="max", the paper's)
    score_t(x) = mean_{q in Q_t} cos(x, q)       (aggregation="mean")

One task: the top ``budget`` by score. Several tasks: each task ranks the
pool by its score, then tasks take turns (task 1's best remaining, task 2's
best remaining, …) until ``budget`` unique examples are chosen; an example
already chosen spends that task's turn. Ties go to the lower pool position.

Exactness at scale. The pool is streamed in blocks; each block is scored
against all queries with one float32 matrix product, and a per-task top-k
(k = budget, enough for any round-robin) is kept and merged as a reduction,
so memory is bounded by the block size and never N x Q. Float32 BLAS results
depend on block shape and thread count, which would make the selection
depend on the partitioning; so the score of record is exact: for each row,
only the queries whose float32 score lies within 2δ of the row's float32
maximum (δ a rigorous bound on the float32 error, (dim + 2)·2^-24 with a
safety factor) are re-scored in float64 with a fixed summation order, and
the maximum of those is the row's score. The true argmax is always among
them, so the score equals the float64 brute-force definition and is the same
whatever the blocks, partitions, workers or threads. The mean needs one
float64 dot product with the mean query direction.

Why a row was picked. For every selected row the selection also records, per
task, which target example it is closest to (``nearest_target``: the
example's position among the task's queries, the argmax of the exact cosine,
ties to the lower position) — the "why" a curator reads beside the score. It
is computed over the selected rows only, in blocks, with the same exact
re-scoring of the float32 candidates.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError
from thresher.params import Interval, StrOptions, check_param
from thresher.selectors._base import BLOCK_ROWS, SEED, BlockwiseSelector, PoolLike, Selection
from thresher.selectors.topk import TopK

Aggregation = Literal["max", "mean"]

#: bytes of float32 scores (block rows x queries) held at once when the block size is chosen automatically
SCORE_BLOCK_BYTES = 64 << 20


def exact_dot_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (n, d) float64 arrays with a fixed summation order (deterministic)."""
    return np.multiply(np.ascontiguousarray(a), np.ascontiguousarray(b)).sum(axis=1)


def exact_cosine_rows(x: np.ndarray, unit_q: np.ndarray) -> np.ndarray:
    """The score of record: cos(x_i, q_i) = (x_i . q_i) / |x_i| in float64, fixed summation order.

    ``x`` rows are pool vectors as stored (float32 or float16, any norm);
    ``unit_q`` rows are float64 unit query directions.
    """
    x64 = np.asarray(x, dtype=np.float64)
    return exact_dot_rows(x64, unit_q) / np.sqrt(exact_dot_rows(x64, x64))


def normalize_rows(x: np.ndarray, *, what: str, positions: np.ndarray | None = None) -> np.ndarray:
    """Float64 rows scaled to unit length; a non-finite or zero row is refused, naming it."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(exact_dot_rows(x, x))
    _check_norms(norms, what, positions)
    return x / norms[:, None]


def _check_norms(norms: np.ndarray, what: str, positions: np.ndarray | None) -> None:
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        where = row if positions is None else int(positions[row])
        kind = "a zero vector" if np.isfinite(norms[row]) else "not finite (NaN or inf)"
        raise InputDataError(f"Row {where} of {what} is {kind}: cosine similarity is undefined for it.")


class RDSScorer:
    """Exact per-task scores of pool blocks against target-task query embeddings.

    Parameters
    ----------
    targets : mapping of task name to array of shape (n_queries_t, dim)
        Query embeddings per task, in the order tasks take turns.
    aggregation : "max" or "mean"
    """

    def __init__(self, targets: Mapping[str, Any], *, aggregation: Aggregation = "max"):
        check_param("RDSPlus", "aggregation", aggregation, RDSPlus._parameter_constraints["aggregation"])
        if not isinstance(targets, Mapping) or len(targets) == 0:
            raise ParameterError("RDSPlus needs at least one target task: pass targets={'task': query_embeddings}.")
        self.tasks = [str(t) for t in targets]
        self.aggregation = aggregation
        queries = []
        for task, q in targets.items():
            q = np.asarray(q)
            if q.ndim == 1:
                q = q[None, :]
            if q.ndim != 2 or q.shape[0] == 0:
                raise InputDataError(f"Target task {task!r} has no query examples (got an array of shape {q.shape}).")
            queries.append(normalize_rows(q, what=f"the queries of task {task!r}"))
        dims = {q.shape[1] for q in queries}
        if len(dims) != 1:
            widths = {task: q.shape[1] for task, q in zip(self.tasks, queries)}
            raise DimensionMismatchError(f"Target tasks have queries of different widths: {widths}.")
        self.dim = dims.pop()
        if aggregation == "max":
            directions = queries
        else:
            # mean_q cos(x, q) = (x / |x|) . mean_q(q): one direction per task, not of unit length
            directions = [q.mean(axis=0, keepdims=True) for q in queries]
        self.n_queries = sum(len(q) for q in queries)
        self.q64 = np.ascontiguousarray(np.concatenate(directions))
        self.q32 = self.q64.astype(np.float32)
        self.all_q64 = np.ascontiguousarray(np.concatenate(queries))
        self.all_q32 = self.all_q64.astype(np.float32)
        self.slices = _slices([len(d) for d in directions])
        self.all_slices = _slices([len(self.all_q64)])
        self.query_slices = _slices([len(q) for q in queries])  # each task's own examples within all_q64
        # Float32 scores x32n.q32 (x normalised in float32) differ from the float64 cosine by at most
        # (1.5 d + 4) u for unit vectors (norm, division and input rounding, then a length-d dot product);
        # twice that is the margin, so a row's true best query is always among its re-scored candidates.
        unit = 2.0**-24
        self.delta = float(2 * (1.5 * self.dim + 4) * unit)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def check_dim(self, dim: int, where: str) -> None:
        if dim != self.dim:
            raise DimensionMismatchError(f"The pool ({where}) has vectors of width {dim} but the target queries have width {self.dim}: embed both with the same model.")

    def _prepare(self, vectors: np.ndarray, positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(vectors, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        _check_norms(norms, "the pool", positions)
        return x, x / norms.astype(np.float32)[:, None]

    def approx_block(
        self, vectors: np.ndarray, positions: np.ndarray | None = None, *, eligible: np.ndarray | None = None, decontaminate: float | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Float32 scores of a block (within ``delta`` of the exact ones), and the decontamination flags.

        Returns
        -------
        approx : ndarray of float64, shape (n_rows, n_tasks)
            -inf for rows that are not eligible or are contaminated.
        contaminated : ndarray of bool, shape (n_rows,), or None
            Rows whose exact cosine to some query of some task is >= ``decontaminate``.
        """
        x, x32n = self._prepare(vectors, positions)
        s32t = self.q32 @ x32n.T  # (n_queries, n_rows): each task's scores are contiguous rows
        eligible = np.ones(len(x), dtype=bool) if eligible is None else eligible.copy()
        contaminated = None
        if decontaminate is not None:
            s_all = s32t if self.aggregation == "max" else self.all_q32 @ x32n.T
            contaminated = (self._exact_max(s_all, x, self.all_q64, decontaminate, eligible) >= decontaminate) & eligible
            eligible &= ~contaminated
        approx = np.stack([s32t[sl].max(axis=0) for sl in self.slices], axis=1).astype(np.float64)
        approx[~eligible] = -np.inf
        return approx, contaminated

    def exact_scores(self, vectors: np.ndarray, positions: np.ndarray | None = None, *, task: int | None = None) -> np.ndarray:
        """The scores of record: exact float64 cosines, max (or mean) per task.

        Returns shape (n_rows, n_tasks), or (n_rows,) for one ``task``.
        """
        x, x32n = self._prepare(vectors, positions)
        everyone = np.ones(len(x), dtype=bool)
        tasks = range(self.n_tasks) if task is None else [task]
        columns = [self._exact_max(self.q32[self.slices[t]] @ x32n.T, x, self.q64[self.slices[t]], -np.inf, everyone) for t in tasks]
        return np.stack(columns, axis=1) if task is None else columns[0]

    def nearest_targets(self, vectors: np.ndarray, positions: np.ndarray | None = None, *,
                        block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per row and task, the target example the row is closest to and their exact cosine.

        Streams ``vectors`` in blocks of ``block_rows`` (default: the scoring
        block size), so only block x queries float32 scores exist at once.

        Returns
        -------
        nearest : ndarray of int64, shape (n_rows, n_tasks)
            Position of the closest example among the task's queries (ties: the lower position).
        cosine : ndarray of float64, shape (n_rows, n_tasks)
            Its exact cosine; with aggregation="max" this is the task's score.
        """
        vectors = np.asarray(vectors)
        n = len(vectors)
        nearest = np.zeros((n, self.n_tasks), dtype=np.int64)
        cosine = np.full((n, self.n_tasks), -np.inf)
        step = block_rows or self.default_block_rows()
        everyone = np.ones(min(step, n), dtype=bool)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            x, x32n = self._prepare(vectors[lo:hi], None if positions is None else positions[lo:hi])
            for t, sl in enumerate(self.query_slices):
                value, arg = self._exact_argmax(self.all_q32[sl] @ x32n.T, x, self.all_q64[sl], everyone[: hi - lo])
                cosine[lo:hi, t], nearest[lo:hi, t] = value, arg
        return nearest, cosine

    def _exact_argmax(self, s32t: np.ndarray, x: np.ndarray, q64: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_exact_max` (floor -inf) that also says which query reached the maximum (the lowest on ties)."""
        rows, cols = self._candidates(s32t, eligible, -np.inf)
        exact = exact_cosine_rows(x[rows], q64[cols])
        best = np.full(len(x), -np.inf)
        arg = np.zeros(len(x), dtype=np.int64)
        if len(rows):
            order = np.lexsort((cols, -exact, rows))  # per row: highest cosine first, then the lowest query
            first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
            best[rows[first]], arg[rows[first]] = exact[first], cols[first]
        return best, arg

    def _candidates(self, s32t: np.ndarray, eligible: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """(pool row, query) pairs whose float32 score is within 2 delta of the row's float32 maximum, for
        eligible rows that can reach ``floor``: the true maximum is always among them."""
        approx = s32t.max(axis=0)
        live = np.flatnonzero(eligible & (approx >= floor - 2 * self.delta))
        if len(live) == 0 or s32t.shape[0] == 1:
            return live, np.zeros(len(live), dtype=np.int64)
        cols, r = np.nonzero(s32t[:, live] >= approx[live] - np.float32(2 * self.delta))
        return live[r], cols

    def _exact_max(self, s32t: np.ndarray, x: np.ndarray, q64: np.ndarray, floor: float, eligible: np.ndarray) -> np.ndarray:
        """Exact max cosine over the queries behind ``s32t``'s rows (float32 scores, queries x pool rows),
        for eligible pool rows that can reach ``floor``.

        Only queries whose float32 score is within 2 delta of the row's float32
        maximum are re-scored: the true maximum is always among them.
        """
        out = np.full(len(x), -np.inf)
        rows, cols = self._candidates(s32t, eligible, floor)
        if len(rows) == 0:
            return out
        exact = exact_cosine_rows(x[rows], q64[cols])
        np.maximum.at(out, rows, exact)
        return out

    def default_block_rows(self) -> int:
        return int(max(256, min(65_536, SCORE_BLOCK_BYTES // (4 * max(1, len(self.q32))))))


def _slices(lengths: Sequence[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def round_robin(rankings: Sequence[np.ndarray], budget: int, quotas: Sequence[int] | None = None, *,
                groups: np.ndarray | None = None, group_caps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-task rankings (positions, best first) by taking turns until ``budget`` unique picks.

    An already chosen example spends the task's turn. With ``quotas``, a task
    stops taking turns once it has picked its quota. With ``groups`` (a group
    index per position, e.g. the pool row's source) and ``group_caps`` (the most
    rows each group may give), a row of a full group is passed over without
    spending the turn: the task proposes its next row instead.

    Returns
    -------
    positions : ndarray of int64, shape (n_picked,)
    task : ndarray of int64, shape (n_picked,)
        Index of the task that picked each row.
    """
    positions, task, _ = _round_robin(rankings, budget, quotas, groups, group_caps)
    return positions, task


def _round_robin(rankings, budget, quotas, groups, group_caps) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """:func:`round_robin`, also saying which tasks ran out of their ranking while still taking turns."""
    n_tasks = len(rankings)
    depth = max((len(r) for r in rankings), default=0)
    if quotas is None and groups is None:
        # proposals in turn order (round 0: task 0, task 1, …; round 1: …); a proposal is a pick iff it is the
        # first occurrence of that position, since every earlier occurrence was itself picked or a repeat
        proposals = np.full((depth, n_tasks), -1, dtype=np.int64)
        for t, r in enumerate(rankings):
            proposals[: len(r), t] = r
        flat = proposals.reshape(-1)
        valid = np.flatnonzero(flat >= 0)
        _, first = np.unique(flat[valid], return_index=True)
        picks = np.sort(valid[first])[:budget]
        return flat[picks], picks % n_tasks, [False] * n_tasks  # (ran_out matters only with group caps)
    quota_of = list(quotas) if quotas is not None else [budget] * n_tasks
    taken: set[int] = set()
    picked, by = [], []
    counts = [0] * n_tasks
    group_counts = np.zeros(len(group_caps), dtype=np.int64) if group_caps is not None else None
    pointer = [0] * n_tasks
    ran_out = [False] * n_tasks
    while len(picked) < budget:
        active = False
        for t in range(n_tasks):
            if len(picked) == budget:
                break
            if counts[t] >= quota_of[t] or ran_out[t]:
                continue
            ranking = rankings[t]
            if groups is not None:
                while pointer[t] < len(ranking) and group_counts[groups[ranking[pointer[t]]]] >= group_caps[groups[ranking[pointer[t]]]]:
                    pointer[t] += 1
            if pointer[t] >= len(ranking):
                ran_out[t] = True
                continue
            active = True
            p = int(ranking[pointer[t]])
            pointer[t] += 1
            if p not in taken:
                taken.add(p)
                picked.append(p)
                by.append(t)
                counts[t] += 1
                if groups is not None:
                    group_counts[groups[p]] += 1
        if not active:
            break
    return np.asarray(picked, dtype=np.int64), np.asarray(by, dtype=np.int64), ran_out


class NeedDeeperRankings(Exception):
    """Group caps passed over so many rows that a task ran out of its top-k: score again with a larger k.

    ``state`` is the :class:`RDSState` to score again with (twice the depth).
    """

    def __init__(self, state: RDSState):
        super().__init__(state.k)
        self.state = state


@dataclass(frozen=True)
class RDSState:
    """What every block of RDS+ needs: the queries' ``scorer``, the ranking depth ``k`` per task, and the
    sorted pool positions to ``exclude`` (or None)."""

    scorer: RDSScorer
    k: int
    exclude: np.ndarray | None = None

    def deeper(self, n_rows: int) -> RDSState:
        """The same state with twice the ranking depth (at most the pool)."""
        return dataclasses.replace(self, k=min(2 * self.k, n_rows))


@dataclass(frozen=True)
class RDSPartial:
    """A partition's result: each task's exact best ``k`` rows (``top``) and the row counts (scored, excluded, …)."""

    top: TopK
    counts: Mapping[str, int]


def _in_sorted(positions: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    hit = np.searchsorted(sorted_values, positions)
    return (hit < len(sorted_values)) & (sorted_values[np.minimum(hit, len(sorted_values) - 1)] == positions)


class RDSPlus(BlockwiseSelector):
    """Task-targeted selection by max cosine similarity, round-robin across tasks (Ivison et al. 2025).

    Parameters
    ----------
    aggregation : "max" or "mean", default "max"
        How a pool example's similarities to one task's queries combine.
    decontaminate : float or None, default None
        Exclude pool examples whose cosine to any target example is at least
        this (near-copies of the evaluation data).
    block_rows : int or None
        Pool rows scored at once (default: sized so one block's float32 scores take 64 MiB).
    seed : int, default 0
        Recorded for provenance; RDS+ itself is deterministic.

    Distributed protocol (:class:`~thresher.selectors._base.BlockwiseSelector`):
    ``prepare`` builds the :class:`RDSState`; ``partial`` keeps each task's
    exact top ``k`` of its blocks; ``merge`` merges the top-k lists; ``finish``
    runs the round-robin, raising :class:`NeedDeeperRankings` when group caps
    exhaust a ranking (score again with ``exc.state``).

    Examples
    --------
    >>> sel = RDSPlus().select(pool, budget=10_000, targets={"gsm8k": q1, "mmlu": q2})  # doctest: +SKIP
    >>> sel.ids, sel.score, sel.columns["task"]                                          # doctest: +SKIP
    """

    name = "rds_plus"
    _parameter_constraints = {
        "aggregation": [StrOptions("max", "mean")],
        "decontaminate": [None, Interval(float, -1, 1, note="a cosine threshold")],
        "block_rows": BLOCK_ROWS,
        "seed": SEED,
    }

    def __init__(self, *, aggregation: Aggregation = "max", decontaminate: float | None = None, block_rows: int | None = None, seed: int = 0):
        self.aggregation = aggregation
        self.decontaminate = decontaminate
        self.block_rows = block_rows
        self.seed = seed

    def scorer(self, targets: Mapping[str, Any]) -> RDSScorer:
        return RDSScorer(targets, aggregation=self.aggregation)

    def prepare(self, pool: PoolLike, *, budget: int, rng: np.random.Generator | None = None, targets: Mapping[str, Any] | None = None,
                exclude: Sequence[int] | np.ndarray | None = None) -> RDSState:
        """The scorer of ``targets`` (checked against the pool's width) and a ranking depth of ``budget``."""
        if targets is None:
            raise ParameterError("RDSPlus.select needs targets={'task': query_embeddings, …}.")
        scorer = self.scorer(targets)
        scorer.check_dim(pool.dim, str(getattr(pool, "path", "its embeddings")))
        excluded = None if exclude is None else np.unique(np.asarray(exclude, dtype=np.int64))
        return RDSState(scorer, int(budget), excluded)

    def block_rows_for(self, state: RDSState) -> int:
        return self.block_rows or state.scorer.default_block_rows()

    def partial(self, state: RDSState, blocks: Iterable[Any], pool: Any) -> RDSPartial:
        """Each task's exact best ``k`` rows of ``blocks``. Jobs map this over partitions.

        Streams ``blocks`` keeping, per task, every row whose float32 score is
        within 2 delta of the running k-th best (a superset of the exact top k),
        then re-scores only those rows exactly (``pool.take(positions)`` fetches
        their vectors, positions within ``blocks``) and keeps the exact best k.
        """
        scorer, k, exclude = state.scorer, state.k, state.exclude
        approx_top = TopK(k, scorer.n_tasks, margin=2 * scorer.delta)
        counts = {"n_scored": 0, "n_excluded": 0, "n_decontaminated": 0}
        for block in blocks:
            positions = np.arange(block.start, block.start + len(block.ids), dtype=np.int64)
            eligible = np.ones(len(positions), dtype=bool)
            if exclude is not None and len(exclude):
                eligible &= ~_in_sorted(positions, exclude)
                counts["n_excluded"] += int((~eligible).sum())
            approx, contaminated = scorer.approx_block(block.vectors, positions, eligible=eligible, decontaminate=self.decontaminate)
            if contaminated is not None:
                counts["n_decontaminated"] += int(contaminated.sum())
            approx_top.update(approx, positions)
            counts["n_scored"] += len(positions)
        exact_top = TopK(k, scorer.n_tasks)
        chunk = scorer.default_block_rows()
        for t in range(scorer.n_tasks):
            candidates = approx_top.candidates(t)
            for lo in range(0, len(candidates), chunk):
                positions = candidates[lo : lo + chunk]
                scores = np.full((len(positions), scorer.n_tasks), -np.inf)
                scores[:, t] = scorer.exact_scores(pool.take(positions), positions, task=t)
                exact_top.update(scores, positions)
        return RDSPartial(exact_top, counts)

    def score_partition(self, blocks: Iterable[Any], scorer: RDSScorer, k: int, take: Any,
                        exclude: np.ndarray | None = None) -> tuple[TopK, dict[str, int]]:
        """Deprecated: ``partial(RDSState(scorer, k, exclude), blocks, pool)`` (``pool.take`` fetches vectors)."""
        warnings.warn("RDSPlus.score_partition(blocks, scorer, k, take, exclude) is deprecated; use "
                      "RDSPlus.partial(RDSState(scorer, k, exclude), blocks, pool), where pool.take fetches vectors.",
                      DeprecationWarning, stacklevel=2)
        part = self.partial(RDSState(scorer, k, exclude), blocks, SimpleNamespace(take=take))
        return part.top, dict(part.counts)

    def merge(self, partials: Sequence[RDSPartial]) -> RDSPartial:
        """Merge top-k lists (exact, deterministic ties) and add up the counts."""
        top, counts = partials[0].top, dict(partials[0].counts)
        for part in partials[1:]:
            top = top.merge(part.top)
            for key, value in part.counts.items():
                counts[key] = counts.get(key, 0) + value
        return RDSPartial(top, counts)

    def finish(self, state: RDSState, merged: RDSPartial, pool: PoolLike, *, budget: int | None = None,
               quotas: Mapping[str, int] | None = None, groups: np.ndarray | None = None,
               group_quotas: Mapping[Any, int] | None = None) -> Selection:
        """The driver's step: round-robin over the merged per-task rankings, then per-task scores of the picks.

        ``budget`` defaults to the depth the state was prepared with. ``groups``
        (a value per pool row, e.g. its source) with ``group_quotas`` (value →
        most rows) caps what each group may give; rows of a full group are
        passed over. When caps make a task run out of a ranking as long as the
        state's depth, :class:`NeedDeeperRankings` is raised so the caller
        scores again with ``exc.state`` (the result is then the same as with
        rankings of the whole pool).
        """
        scorer, depth = state.scorer, state.k
        budget = depth if budget is None else budget
        rankings = merged.top.finish()
        codes, caps = _group_caps(groups, group_quotas, pool.n_rows, budget)
        quota_list = None
        if quotas is not None:
            unknown = sorted(set(quotas) - set(scorer.tasks))
            if unknown:
                raise ParameterError(f"The 'quotas' parameter of RDSPlus names tasks that are not targets: {unknown}; the targets are {scorer.tasks}.")
            quota_list = [int(quotas.get(t, 0)) for t in scorer.tasks]
            if any(q < 0 for q in quota_list) or sum(quota_list) < budget:
                raise ParameterError(f"The 'quotas' of RDSPlus must be >= 0 and add up to at least the budget ({budget}); got {dict(quotas)}.")
        available = len(np.unique(np.concatenate([p for _, p in rankings]))) if rankings else 0
        if available < budget:
            raise ParameterError(
                f"RDSPlus can pick only {available} rows after exclusions but the budget is {budget}: lower the budget."
            )
        positions, task_index, ran_out = _round_robin([p for _, p in rankings], budget, quota_list, codes, caps)
        # a task that ran out of a full-length ranking might have proposed rows beyond it
        truncated = any(out and len(p) >= depth for out, (_, p) in zip(ran_out, rankings))
        if codes is not None and truncated and depth < pool.n_rows:
            raise NeedDeeperRankings(state.deeper(pool.n_rows))
        if codes is not None and len(positions) < budget:
            raise ParameterError(
                f"RDSPlus can pick only {len(positions)} rows within the group quotas {dict(group_quotas)} but the budget is {budget}: "
                "raise the quotas or lower the budget."
            )
        picked_vectors = pool.take(positions)
        nearest, nearest_cosine = scorer.nearest_targets(picked_vectors, positions)
        # with "max" the task's score is the cosine to its nearest example (the same exact computation)
        task_scores = nearest_cosine if scorer.aggregation == "max" else scorer.exact_scores(picked_vectors, positions)
        del picked_vectors
        picked_score = task_scores[np.arange(len(positions)), task_index]
        all_ids = pool.ids()
        ids = all_ids[positions] if len(positions) else all_ids[:0]
        tasks = np.asarray(scorer.tasks, dtype=object)[task_index]
        summary = {
            "tasks": scorer.tasks,
            "per_task_selected": {t: int((task_index == i).sum()) for i, t in enumerate(scorer.tasks)},
            **({"ranking_depth": int(depth)} if codes is not None else {}),
            **({"per_group_selected": {str(k): int(v) for k, v in zip(*np.unique(np.asarray(groups, dtype=object)[positions].astype(str), return_counts=True))}}
               if codes is not None else {}),
            "score_quantiles": _quantiles(picked_score),
            "per_task_score_quantiles": {t: _quantiles(picked_score[task_index == i]) for i, t in enumerate(scorer.tasks)},
            **{k: int(v) for k, v in merged.counts.items()},
        }
        return Selection(
            positions=positions,
            ids=ids,
            selector=self.name,
            params={**self.get_params(), "tasks": scorer.tasks, "quotas": dict(quotas) if quotas else None,
                    **({"group_quotas": {str(k): int(v) for k, v in group_quotas.items()}} if group_quotas else {})},
            score=picked_score,
            columns={"task": tasks, "task_scores": task_scores, "nearest_target": nearest},
            seed=self.seed,
            summary=summary,
        )

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, targets: Mapping[str, Any] | None = None,
                quotas: Mapping[str, int] | None = None, exclude: Sequence[int] | np.ndarray | None = None,
                groups: Sequence[Any] | np.ndarray | None = None, group_quotas: Mapping[Any, int] | None = None) -> Selection:
        state = self.prepare(pool, budget=budget, rng=rng, targets=targets, exclude=exclude)
        while True:
            try:
                return self.finish(state, self.run_blocks(state, pool), pool, budget=budget, quotas=quotas, groups=groups,
                                   group_quotas=group_quotas)
            except NeedDeeperRankings as deeper:
                state = deeper.state


def brute_force_rds(pool: np.ndarray, targets: Mapping[str, np.ndarray], budget: int, *, aggregation: Aggregation = "max",
                    groups: Any = None, group_quotas: Mapping[Any, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The definition, in memory: every pool × query cosine in float64 (fixed summation order), per-task
    max (or mean), per-task ranking of the whole pool by score then position, round-robin (with group caps).
    For tests and small pools only."""
    x = np.asarray(pool)
    normalize_rows(x, what="the pool")  # the same refusals as the selector
    rankings = []
    for q in targets.values():
        qn = normalize_rows(np.atleast_2d(q), what="queries")
        directions = qn if aggregation == "max" else qn.mean(axis=0, keepdims=True)
        sims = np.stack([exact_cosine_rows(x, np.broadcast_to(v, x.shape)) for v in directions], axis=1)
        s = sims.max(axis=1)
        rankings.append(np.lexsort((np.arange(len(x)), -s)))
    codes, caps = _group_caps(groups, group_quotas, len(x), budget)
    return round_robin(rankings, budget, groups=codes, group_caps=caps)


def _group_caps(groups: Any, group_quotas: Mapping[Any, int] | None, n_rows: int, budget: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Group codes per row and the cap of each code (groups without a quota are not capped)."""
    if group_quotas is None and groups is None:
        return None, None
    if group_quotas is None or groups is None:
        raise ParameterError("RDSPlus takes groups and group_quotas together (a value per pool row, and value → most rows).")
    values = np.asarray(groups, dtype=object)
    if values.shape != (n_rows,):
        raise ParameterError(f"The 'groups' of RDSPlus must hold one value per pool row ({n_rows}); got shape {values.shape}.")
    keys = values.astype(str)
    present, codes = np.unique(keys, return_inverse=True)
    unknown = sorted(str(g) for g in group_quotas if str(g) not in set(present.tolist()))
    if unknown:
        raise ParameterError(f"The 'group_quotas' of RDSPlus name groups no row has: {unknown}; the rows' groups are {present.tolist()[:20]}.")
    caps = np.full(len(present), budget, dtype=np.int64)
    for g, q in group_quotas.items():
        if not Interval(int, 0, None).accepts(q):
            raise ParameterError(f"The 'group_quotas' of RDSPlus must be counts >= 0; got {g!r}: {q!r}.")
        caps[int(np.searchsorted(present, str(g)))] = int(q)
    return codes.astype(np.int64), caps


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    return {k: round(float(v), 6) for k, v in zip(("min", "p25", "median", "p75", "max"), q)}
