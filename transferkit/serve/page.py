"""The web page at ``/``: pick or drop images, see each with its top-k classes as bars.

Self-contained (no CDN, no external fonts: served machines are often offline). One ``fetch`` per image to
``v1/predict`` (relative, so the page also works behind a path prefix); the server batches them together.
Names and labels are inserted as text, never as HTML.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit serve</title>
<link rel="icon" href="data:,">
<style>
  :root { --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #2d6cdf; --bad: #b3261e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         background: #f6f7f9; }
  header { padding: 18px 28px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0 0 4px; font-size: 20px; }
  #model { margin: 0; color: var(--muted); }
  main { padding: 20px 28px; max-width: 1100px; }
  #drop { display: block; border: 2px dashed #aab3c3; border-radius: 10px; padding: 28px; text-align: center;
          background: #fff; cursor: pointer; }
  #drop.over { border-color: var(--accent); background: #eef3fd; }
  #drop input { display: none; }
  .button { color: #fff; background: var(--accent); border-radius: 6px; padding: 4px 10px; }
  .controls { margin: 12px 0; color: var(--muted); }
  #status { min-height: 1.4em; color: var(--muted); }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 10px; }
  .card img { width: 100%; height: 180px; object-fit: contain; background: #eceff3; border-radius: 6px; }
  .name { font-weight: 600; margin: 6px 0; overflow-wrap: anywhere; }
  .row { display: grid; grid-template-columns: 1fr 56px; gap: 6px; align-items: center; margin: 4px 0; }
  .label { font-size: 13px; }
  .bar { grid-column: 1 / 3; height: 8px; background: #e7eaf0; border-radius: 4px; overflow: hidden; }
  .fill { display: block; height: 100%; background: var(--accent); }
  .row.top .label { font-weight: 600; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; font-size: 13px; }
  .error { color: var(--bad); font-size: 13px; }
</style>
</head>
<body>
<header>
  <h1>transferkit</h1>
  <p id="model">loading the model's description&hellip;</p>
</header>
<main>
  <label id="drop" for="files">Drop images here or <span class="button">choose images</span>
    <input id="files" type="file" accept="image/*" multiple>
  </label>
  <div class="controls">
    <label for="topk">classes per image</label> <select id="topk"></select>
  </div>
  <p id="status" role="status"></p>
  <section id="results" aria-live="polite"></section>
</main>
<script>
"use strict";
(function () {
  var topk = document.getElementById("topk");
  var results = document.getElementById("results");
  var status = document.getElementById("status");
  var drop = document.getElementById("drop");
  var input = document.getElementById("files");
  var pending = 0;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function describe(meta) {
    var parts = [meta.backbone + ", " + meta.classes.length + " classes (" + meta.classes.join(", ") + ")",
                 meta.input_size + " px input"];
    var acc = meta.test_metrics && meta.test_metrics.accuracy;
    if (typeof acc === "number") {
      var ci = meta.test_ci95 && meta.test_ci95.accuracy;
      parts.push("test accuracy " + acc.toFixed(3) + (ci ? " [" + ci[0].toFixed(3) + ", " + ci[1].toFixed(3) + "]" : "") +
                 (meta.test_n ? " on " + meta.test_n + " images" : ""));
    }
    document.getElementById("model").textContent = parts.join(" \\u00b7 ");
    for (var k = 1; k <= meta.classes.length; k++) {
      var option = el("option", "", String(k));
      option.value = String(k);
      if (k === meta.serving.top_k) { option.selected = true; }
      topk.appendChild(option);
    }
  }

  function showPredictions(card, predictions) {
    predictions.forEach(function (p, i) {
      var row = el("div", i === 0 ? "row top" : "row");
      row.appendChild(el("span", "label", p.label));
      row.appendChild(el("span", "pct", (100 * p.probability).toFixed(1) + "%"));
      var bar = el("span", "bar"), fill = el("span", "fill");
      fill.style.width = (100 * p.probability).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      card.appendChild(row);
    });
    card.dataset.label = predictions[0].label;
    card.dataset.state = "done";
  }

  function showError(card, message) {
    card.appendChild(el("p", "error", message));
    card.dataset.state = "error";
  }

  function settle() {
    pending -= 1;
    status.textContent = pending ? pending + " image(s) in progress" : "";
  }

  function predict(file) {
    var card = el("article", "card");
    card.dataset.state = "pending";
    var img = el("img");
    img.alt = file.name;
    img.onerror = function () { img.style.display = "none"; };
    img.src = URL.createObjectURL(file);
    card.appendChild(img);
    card.appendChild(el("div", "name", file.name));
    results.insertBefore(card, results.firstChild);
    var body = new FormData();
    body.append("file", file, file.name);
    pending += 1;
    status.textContent = pending + " image(s) in progress";
    fetch("v1/predict?top_k=" + encodeURIComponent(topk.value || "3"), {method: "POST", body: body})
      .then(function (response) {
        return response.json().then(function (data) { return {ok: response.ok, status: response.status, data: data}; },
                                    function () { return {ok: false, status: response.status, data: {}}; });
      })
      .then(function (answer) {
        var row = answer.data.results && answer.data.results[0];
        if (answer.ok && row && row.predictions) { showPredictions(card, row.predictions); }
        else { showError(card, (row && row.error) || answer.data.error || ("the server answered " + answer.status)); }
      }, function (err) {
        showError(card, "the server could not be reached (" + err + "); is it still running?");
      })
      .then(settle);
  }

  function predictAll(files) {
    Array.prototype.forEach.call(files, predict);
  }

  input.addEventListener("change", function () { predictAll(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) { predictAll(e.dataTransfer.files); });

  fetch("v1/metadata").then(function (r) { return r.json(); }).then(describe, function (err) {
    document.getElementById("model").textContent = "the model's description could not be loaded (" + err + ")";
  });
}());
</script>
</body>
</html>
"""
