// thresher explore: the map, the pinned record and the table of one selection, from the JSON embedded in this page.
// Everything that comes from data is put on the page with textContent (never innerHTML), so it shows as text.
(function () {
  "use strict";
  var started = performance.now();
  var data = JSON.parse(document.getElementById("thresher-data").textContent);
  var rows = data.rows, n = rows.id.length, dict = data.dictionaries;
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                 "#393b79", "#ad494a", "#8ca252", "#de9ed6", "#6b6ecf", "#e7ba52"];
  var NONE = "#cccccc";
  var state = { colour: "outcome", hovered: null, pinned: null, page: 0, pageSize: 25, sortKey: "rank", sortDir: 1, matching: [] };
  var byKey = {};
  for (var i = 0; i < n; i++) byKey[String(rows.id[i])] = i;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function label(field, i) {
    var codes = field === "outcome" || field === "task" ? rows[field] : rows.categories[field];
    var c = codes ? codes[i] : null;
    return c === null || c === undefined ? null : dict[field][c];
  }
  function textOf(id) {
    var key = String(id);
    if (byKey.hasOwnProperty(key)) return rows.text[byKey[key]];
    if (data.refs.hasOwnProperty(key)) return data.refs[key];
    return null;
  }
  function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : (v === null || v === undefined ? "" : String(v)); }
  function score(i) {
    for (var s = data.steps.length - 1; s >= 0; s--) {
      var f = data.steps[s].facts[String(i)];
      if (f && typeof f.score === "number") return f.score;
    }
    return null;
  }

  // ---- the map ---------------------------------------------------------------------------------
  var canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var W = canvas.width, H = canvas.height, PAD = 12;
  var ratio = window.devicePixelRatio || 1;
  canvas.style.width = W + "px"; canvas.style.height = H + "px";
  canvas.width = W * ratio; canvas.height = H * ratio;
  ctx.scale(ratio, ratio);
  function pointXY(i) {
    if (rows.x[i] === null) return null;
    return [PAD + rows.x[i] * (W - 2 * PAD), H - PAD - rows.y[i] * (H - 2 * PAD)];
  }
  function colourOf(i) {
    var field = state.colour;
    var codes = field === "outcome" || field === "task" ? rows[field] : rows.categories[field];
    var c = codes[i];
    return c === null || c === undefined ? NONE : PALETTE[c % PALETTE.length];
  }
  function draw() {
    ctx.clearRect(0, 0, W, H);
    for (var pass = 0; pass < 2; pass++) {  // rows of the table on top of the pool sample
      for (var i = 0; i < n; i++) {
        if ((rows.in_table[i] === 1) !== (pass === 1)) continue;
        var p = pointXY(i);
        if (!p) continue;
        ctx.fillStyle = colourOf(i);
        ctx.beginPath();
        ctx.arc(p[0], p[1], pass ? 3 : 2, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    var marks = [[state.hovered, "#000"], [state.pinned, "#e00"]];
    for (var m = 0; m < marks.length; m++) {
      if (marks[m][0] === null) continue;
      var q = pointXY(marks[m][0]);
      if (!q) continue;
      ctx.strokeStyle = marks[m][1]; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(q[0], q[1], 6, 0, 2 * Math.PI); ctx.stroke();
    }
    legend();
  }
  function legend() {
    var box = document.getElementById("legend");
    clear(box);
    var field = state.colour, names = dict[field] || [];
    for (var c = 0; c < names.length; c++) {
      var sw = el("span", null, "swatch"); sw.style.background = PALETTE[c % PALETTE.length];
      box.appendChild(sw); box.appendChild(el("span", names[c]));
    }
    var none = el("span", null, "swatch"); none.style.background = NONE;
    box.appendChild(none); box.appendChild(el("span", "(none)"));
  }
  function nearest(x, y, radius) {
    var best = null, bestD = radius * radius;
    for (var i = 0; i < n; i++) {
      var p = pointXY(i);
      if (!p) continue;
      var d = (p[0] - x) * (p[0] - x) + (p[1] - y) * (p[1] - y);
      if (d <= bestD) { bestD = d; best = i; }
    }
    return best;
  }
  var tooltip = document.getElementById("tooltip");
  function scoresLine(i) {
    var parts = [];
    var s = score(i);
    if (s !== null) parts.push("score " + fmt(s));
    data.steps.forEach(function (step) {
      var f = step.facts[String(i)];
      if (!f) return;
      if (step.kind === "rds" && f.task_scores) {
        step.tasks.forEach(function (t, k) { parts.push(t + " " + fmt(f.task_scores[k])); });
      }
      if (f.removed) parts.push("similarity " + fmt(f.similarity) + " to " + fmt(f.duplicate_of));
      if (typeof f.gap === "number") parts.push("gap " + fmt(f.gap));
    });
    return parts.join("  ");
  }
  canvas.addEventListener("mousemove", function (ev) {
    var r = canvas.getBoundingClientRect();
    var i = nearest(ev.clientX - r.left, ev.clientY - r.top, 8);
    if (i !== state.hovered) { state.hovered = i; draw(); }
    if (i === null) { tooltip.style.display = "none"; return; }
    clear(tooltip);
    tooltip.appendChild(el("b", String(rows.id[i]), "tip-id"));
    tooltip.appendChild(el("div", label("outcome", i), "tip-outcome"));
    var sl = scoresLine(i);
    if (sl) tooltip.appendChild(el("div", sl, "tip-scores"));
    tooltip.appendChild(el("div", rows.text[i], "tip-text"));
    tooltip.style.left = (ev.clientX - r.left + 14) + "px";
    tooltip.style.top = (ev.clientY - r.top + 14) + "px";
    tooltip.style.display = "block";
  });
  canvas.addEventListener("mouseleave", function () { tooltip.style.display = "none"; state.hovered = null; draw(); });
  canvas.addEventListener("click", function (ev) {
    var r = canvas.getBoundingClientRect();
    var i = nearest(ev.clientX - r.left, ev.clientY - r.top, 8);
    if (i !== null) pin(i);
  });

  // ---- the pinned record -----------------------------------------------------------------------
  function kv(parent, key, value) {
    var row = el("div"); row.appendChild(el("b", key + ": ")); row.appendChild(el("span", fmt(value)));
    parent.appendChild(row);
    return row;
  }
  function quoted(parent, id, what) {
    var box = el("div", null, "ref");
    box.appendChild(el("b", what + " " + String(id)));
    var t = textOf(id);
    box.appendChild(el("div", t === null ? "(text not embedded in this page)" : t, "text"));
    parent.appendChild(box);
  }
  function pin(i) {
    state.pinned = i;
    var box = document.getElementById("record");
    clear(box);
    box.appendChild(el("h2", "Row " + String(rows.id[i])));
    box.setAttribute("data-row", String(i));
    kv(box, "outcome", label("outcome", i));
    if (rows.rank[i] !== null) kv(box, "rank in the output", rows.rank[i]);
    data.category_columns.forEach(function (c) { if (label(c, i) !== null) kv(box, c, label(c, i)); });
    box.appendChild(el("div", rows.text[i], "text record-text"));
    data.steps.forEach(function (step) {
      var f = step.facts[String(i)];
      var sec = el("section"); sec.setAttribute("data-step", step.name);
      sec.appendChild(el("h3", step.name + " (" + step.step + ")"));
      if (!f) { sec.appendChild(el("div", "not in this step's output", "note")); box.appendChild(sec); return; }
      var shown = {};
      if (step.kind === "rds" && f.task_scores) {
        var t = el("table", null, "rds"), head = el("tr");
        ["task", "score", "closest target example"].forEach(function (h) { head.appendChild(el("th", h)); });
        t.appendChild(head);
        step.tasks.forEach(function (task, k) {
          var tr = el("tr");
          tr.appendChild(el("td", task + (f.task === task ? " (picked it)" : "")));
          tr.appendChild(el("td", fmt(f.task_scores[k]), "n"));
          var pos = f.nearest_target ? f.nearest_target[k] : null;
          var texts = data.targets[task] || {};
          var txt = pos === null ? "" : "#" + pos + (texts.hasOwnProperty(String(pos)) ? ": " + texts[String(pos)] : "");
          tr.appendChild(el("td", txt, "text"));
          t.appendChild(tr);
        });
        sec.appendChild(t);
        shown = { task_scores: 1, nearest_target: 1 };
      }
      if (f.removed) {
        sec.appendChild(el("div", "removed as a near-duplicate of " + String(f.duplicate_of) + " (cosine similarity " + fmt(f.similarity) + ")", "dup"));
        quoted(sec, f.duplicate_of, "kept twin");
        shown = { removed: 1, duplicate_of: 1, similarity: 1 };
      }
      if (f.parents) {
        sec.appendChild(el("div", "synthetic: interpolated between its parents with gap " + fmt(f.gap), "smote"));
        f.parents.forEach(function (p, k) { quoted(sec, p, k === 0 ? "parent (base)" : "parent (neighbour)"); });
        shown = { parents: 1, gap: 1, synthetic: 1 };
      }
      if (step.kind === "batches" && f.community !== undefined && f.community !== null) {
        var members = (step.members[String(f.community)] || []).filter(function (m) { return String(m) !== String(rows.id[i]); });
        sec.appendChild(el("div", "batch " + fmt(f.batch) + ", community " + fmt(f.community) + ", position " + fmt(f.position), "b3"));
        sec.appendChild(el("div", "other members of its community (" + members.length + " shown):"));
        members.forEach(function (m) { quoted(sec, m, "member"); });
        shown = { batch: 1, community: 1, position: 1 };
      }
      Object.keys(f).forEach(function (k) { if (!shown[k] && k !== "removed") kv(sec, k, Array.isArray(f[k]) ? f[k].map(fmt).join(", ") : f[k]); });
      box.appendChild(sec);
    });
    draw();
    renderTable();
  }

  // ---- the table -------------------------------------------------------------------------------
  var search = document.getElementById("search");
  var filterFields = ["outcome", "task"].concat(data.category_columns);
  var filters = {};
  var controls = document.getElementById("filters");
  filterFields.forEach(function (field) {
    if (!dict[field] || dict[field].length === 0) return;
    var lab = el("label", field + " ");
    var sel = el("select"); sel.id = "filter-" + field; sel.setAttribute("data-field", field);
    var all = el("option", "all"); all.value = ""; sel.appendChild(all);
    dict[field].forEach(function (v, c) { var o = el("option", v); o.value = String(c); sel.appendChild(o); });
    sel.addEventListener("change", function () { filters[field] = sel.value === "" ? null : Number(sel.value); state.page = 0; renderTable(); });
    lab.appendChild(sel); controls.appendChild(lab);
  });
  var colourSel = document.getElementById("colour");
  ["outcome", "task"].concat(data.category_columns).forEach(function (field) {
    if (!dict[field] || dict[field].length === 0) return;
    var o = el("option", field); o.value = field; colourSel.appendChild(o);
  });
  colourSel.addEventListener("change", function () { state.colour = colourSel.value; draw(); });
  search.addEventListener("input", function () { state.page = 0; renderTable(); });

  var COLUMNS = [["id", "id"], ["outcome", "outcome"], ["task", "task"], ["score", "score"], ["rank", "rank"]]
    .concat(data.category_columns.map(function (c) { return [c, c]; })).concat([["text", "text"]]);
  var thead = document.querySelector("#rows thead");
  var hr = el("tr");
  COLUMNS.forEach(function (c) {
    var th = el("th", c[1]); th.setAttribute("data-key", c[0]);
    th.addEventListener("click", function () {
      state.sortDir = state.sortKey === c[0] ? -state.sortDir : 1; state.sortKey = c[0]; state.page = 0; renderTable();
    });
    hr.appendChild(th);
  });
  thead.appendChild(hr);
  function cell(key, i) {
    if (key === "id") return rows.id[i];
    if (key === "text") return rows.text[i];
    if (key === "rank") return rows.rank[i];
    if (key === "score") return score(i);
    return label(key, i);
  }
  function matches(i, q) {
    for (var f in filters) {
      if (filters[f] === null || filters[f] === undefined) continue;
      var codes = f === "outcome" || f === "task" ? rows[f] : rows.categories[f];
      if (codes[i] !== filters[f]) return false;
    }
    if (!q) return true;
    return String(rows.id[i]).toLowerCase().indexOf(q) >= 0 || rows.text[i].toLowerCase().indexOf(q) >= 0;
  }
  function compare(a, b) {
    var x = cell(state.sortKey, a), y = cell(state.sortKey, b);
    if (x === null || x === undefined) return (y === null || y === undefined) ? a - b : 1;
    if (y === null || y === undefined) return -1;
    if (x < y) return -state.sortDir;
    if (x > y) return state.sortDir;
    return a - b;
  }
  function renderTable() {
    var q = search.value.trim().toLowerCase();
    var list = [];
    for (var i = 0; i < n; i++) if (matches(i, q)) list.push(i);
    list.sort(compare);
    state.matching = list;
    var pages = Math.max(1, Math.ceil(list.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var tbody = document.querySelector("#rows tbody");
    clear(tbody);
    var lo = state.page * state.pageSize, hi = Math.min(list.length, lo + state.pageSize);
    for (var k = lo; k < hi; k++) {
      var idx = list[k], tr = el("tr");
      tr.setAttribute("data-row", String(idx));
      if (idx === state.pinned) tr.className = "pinned";
      COLUMNS.forEach(function (c) {
        var v = cell(c[0], idx);
        tr.appendChild(el("td", fmt(v), c[0] === "text" ? "text" : (typeof v === "number" ? "n" : "")));
      });
      (function (j) { tr.addEventListener("click", function () { pin(j); }); })(idx);
      tbody.appendChild(tr);
    }
    document.getElementById("table-status").textContent = list.length === 0 ? "no row matches." :
      "rows " + (lo + 1) + "–" + hi + " of " + list.length + " matching (page " + (state.page + 1) + " of " + pages + ")";
  }
  document.getElementById("prev").addEventListener("click", function () { if (state.page > 0) { state.page--; renderTable(); } });
  document.getElementById("next").addEventListener("click", function () { state.page++; renderTable(); });

  draw();
  renderTable();
  window.thresherExplore = {
    data: data, state: state, pointXY: pointXY, nearest: nearest, pin: pin,
    scriptMs: performance.now() - started,  // parsing the data, drawing the map and the first page of the table
    readyMs: performance.now()              // since navigation began: the page is usable
  };
  document.body.setAttribute("data-ready-ms", String(Math.round(window.thresherExplore.readyMs)));
})();
