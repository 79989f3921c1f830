/* onnxshrink HTML report: draws the charts described in #report-data with Chart.js and makes the
   tables sortable. Text from the report reaches the page only through textContent and canvas text,
   never as HTML. When done, #render-status holds JSON {expected, drawn, blank, errors} for tests. */
(function () {
  "use strict";
  var status = { expected: 0, drawn: 0, blank: [], errors: window.__reportErrors || [] };
  var COLORS = { before: "#9aa5b1", after: "#0f9d8a", baseline: "#9aa5b1", candidate: "#0f9d8a" };

  function human(bytes) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], v = Math.abs(bytes), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (bytes < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function fmt(unit, v) {
    if (v === null || v === undefined) return "—";
    if (unit === "bytes") return human(v);
    if (unit === "ms") return +v.toPrecision(4) + " ms";
    return String(+v.toPrecision(5));
  }
  // Cosine → colour: red (low) through amber to teal (high), over the range the trials span.
  function cosineColor(c, lo, hi) {
    if (c === null || c === undefined) return "#bbbbbb";
    var t = hi > lo ? (c - lo) / (hi - lo) : 1;
    t = Math.max(0, Math.min(1, t));
    var stops = [[214, 69, 65], [240, 173, 78], [15, 157, 138]];
    var k = t < 0.5 ? 0 : 1, u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
    var a = stops[k], b = stops[k + 1];
    return "rgb(" + [0, 1, 2].map(function (j) { return Math.round(a[j] + (b[j] - a[j]) * u); }).join(",") + ")";
  }

  function barChart(spec) {
    var horizontal = !!spec.horizontal;
    var valueAxis = horizontal ? "x" : "y", categoryAxis = horizontal ? "y" : "x";
    var scales = {};
    scales[valueAxis] = {
      beginAtZero: true,
      title: { display: !!spec.value_title, text: spec.value_title || "" },
      ticks: { callback: function (v) { return fmt(spec.unit, v); } },
    };
    scales[categoryAxis] = {
      title: { display: !!spec.category_title, text: spec.category_title || "" },
      ticks: { autoSkip: !horizontal, callback: function (v) {
        var label = this.getLabelForValue(v);
        return label.length > 42 ? "…" + label.slice(-41) : label;
      } },
    };
    return {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.series.map(function (s) {
          return { label: s.label, data: s.values, backgroundColor: COLORS[s.role] || s.color || "#4e79a7", borderRadius: 2, categoryPercentage: 0.8, barPercentage: 0.9 };
        }),
      },
      options: {
        indexAxis: horizontal ? "y" : "x",
        maintainAspectRatio: false,
        scales: scales,
        plugins: {
          legend: { position: "top", align: "end" },
          tooltip: { callbacks: { label: function (ctx) { return ctx.dataset.label + ": " + fmt(spec.unit, horizontal ? ctx.parsed.x : ctx.parsed.y); } } },
        },
      },
    };
  }

  function paretoChart(spec) {
    var cosines = spec.points.map(function (p) { return p.cosine; }).filter(function (c) { return c !== null && c !== undefined; });
    var lo = Math.min.apply(null, cosines.concat([1])), hi = Math.max.apply(null, cosines.concat([0]));
    function dataset(label, points, style) {
      return Object.assign({
        label: label,
        data: points.map(function (p) { return { x: p.x, y: p.y, trial: p.trial, cosine: p.cosine, chain: p.chain }; }),
        backgroundColor: points.map(function (p) { return cosineColor(p.cosine, lo, hi); }),
        borderColor: "#333",
      }, style);
    }
    var front = spec.points.filter(function (p) { return p.pareto && !p.chosen; });
    var others = spec.points.filter(function (p) { return !p.pareto && !p.chosen; });
    var chosen = spec.points.filter(function (p) { return p.chosen; });
    var frontLine = spec.points.filter(function (p) { return p.pareto; }).slice().sort(function (a, b) { return a.x - b.x; });
    return {
      type: "scatter",
      data: {
        datasets: [
          dataset("chosen", chosen, { pointStyle: "rectRot", pointRadius: 12, borderWidth: 2.5, borderColor: "#111" }),
          dataset("Pareto front", front, { pointRadius: 8, borderWidth: 2 }),
          { label: "front", type: "line", data: frontLine.map(function (p) { return { x: p.x, y: p.y }; }), borderColor: "rgba(60,60,60,0.35)", borderDash: [4, 4], pointRadius: 0, fill: false, showLine: true },
          dataset("other trials", others, { pointRadius: 5, borderWidth: 0.5 }),
        ],
      },
      options: {
        maintainAspectRatio: false,
        scales: {
          x: { title: { display: true, text: spec.x_title } },
          y: { title: { display: true, text: spec.y_title } },
        },
        plugins: {
          legend: { labels: {
            usePointStyle: true,
            filter: function (item) { return item.text !== "front"; },
            generateLabels: function (chart) {
              return Chart.defaults.plugins.legend.labels.generateLabels(chart).map(function (item) {
                item.fillStyle = "#e3e7ec"; item.strokeStyle = "#333"; return item;
              });
            },
          } },
          subtitle: { display: cosines.length > 0, text: "cosine: red " + lo.toFixed(6) + " … amber … teal " + hi.toFixed(6), color: "#5d6975", padding: { bottom: 6 } },
          tooltip: { callbacks: { label: function (ctx) {
            var r = ctx.raw;
            if (r.trial === undefined) return "";
            return "trial " + r.trial + ": " + spec.x_title + " " + fmt("", r.x) + ", " + spec.y_title + " " + fmt("", r.y) +
              ", cosine " + (r.cosine === null || r.cosine === undefined ? "—" : r.cosine.toFixed(6)) + (r.chain ? " — " + r.chain : "");
          } } },
        },
      },
    };
  }

  function canvasHasInk(canvas) {
    try {
      var ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
      if (!w || !h) return false;
      var pixels = ctx.getImageData(0, 0, w, h).data;
      for (var i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
    } catch (e) { status.errors.push("canvas check: " + e); }
    return false;
  }

  function drawCharts(specs) {
    if (typeof Chart === "undefined") { status.errors.push("Chart.js did not load"); return; }
    Chart.defaults.animation = false;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#3b4450";
    specs.forEach(function (spec) {
      var canvas = document.getElementById(spec.id);
      if (!canvas) { status.errors.push("no canvas " + spec.id); return; }
      var config = spec.kind === "pareto" ? paretoChart(spec) : barChart(spec);
      var chart = new Chart(canvas, config);
      chart.draw();
      if (canvasHasInk(canvas)) status.drawn += 1; else status.blank.push(spec.id);
    });
  }

  function sortableTables() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
        th.tabIndex = 0;
        th.title = "sort";
        function sort() {
          var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
          var descending = th.getAttribute("aria-sort") !== "descending";
          Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", descending ? "descending" : "ascending");
          function key(row) {
            var cell = row.cells[column], v = cell.getAttribute("data-v");
            return v !== null ? (v === "" ? -Infinity : parseFloat(v)) : cell.textContent.toLowerCase();
          }
          rows.sort(function (a, b) {
            var x = key(a), y = key(b), r = x < y ? -1 : x > y ? 1 : 0;
            return descending ? -r : r;
          });
          rows.forEach(function (row) { body.appendChild(row); });
        }
        th.addEventListener("click", sort);
        th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
      });
    });
  }

  try {
    var specs = JSON.parse(document.getElementById("report-data").textContent).charts;
    status.expected = specs.length;
    drawCharts(specs);
    sortableTables();
  } catch (e) {
    status.errors.push(String(e && e.stack || e));
  }
  document.getElementById("render-status").textContent = JSON.stringify(status);
  document.body.setAttribute("data-render", status.errors.length || status.drawn !== status.expected ? "failed" : "done");
})();
