// The ops dashboard (/admin/ops/): polls its JSON endpoints and draws moves, alerts and charts.
// No framework, no CDN: inline SVG. The page's CSP allows only scripts and styles from 'self',
// so nothing here sets inline style attributes in markup.
(function () {
  "use strict";
  const root = document.getElementById("ops");
  if (!root) return;
  const COLORS = ["#417690", "#ba2121", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#795548"];
  const SVG = "http://www.w3.org/2000/svg";
  const csrf = () => (document.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || "";

  async function getJSON(url) {
    const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || ("HTTP " + response.status));
    return body;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ----- moves
  function moveRow(job, canOperate) {
    const row = el("div", {"class": "ops-move", "data-job": job.id, "data-state": job.state});
    row.append(el("strong", {}, job.tenant), " " + job.source + " → " + job.target + " ");
    row.append(el("span", {"class": "ops-phase"}, job.state.replace("_", " ")), " ");
    const bar = el("progress", {max: String(Math.max(job.rows_total, 1)), value: String(job.rows_copied)});
    row.append(bar, " " + job.rows_copied + "/" + job.rows_total + " rows");
    if (job.lag_bytes) row.append(", " + job.lag_bytes + " bytes behind");
    if (canOperate) {
      const form = el("form", {method: "post", action: root.dataset.abortUrl + job.id + "/",
                               "data-confirm": "Abort the move of " + job.tenant + "? It stays on " + job.source + "."});
      form.append(el("input", {type: "hidden", name: "csrfmiddlewaretoken", value: csrf()}));
      form.append(el("input", {type: "submit", value: "Abort", "class": "button"}));
      row.append(form);
    }
    return row;
  }

  async function refreshMoves() {
    const box = document.getElementById("ops-moves");
    try {
      const data = await getJSON(root.dataset.movesUrl);
      box.replaceChildren(...(data.active.length ? data.active.map((j) => moveRow(j, data.can_operate))
                                                 : [el("p", {"class": "ops-none"}, "No move in progress.")]));
      const body = document.querySelector("#ops-recent tbody");
      const none = el("tr", {});
      none.append(el("td", {colspan: "7", "class": "ops-none"}, "No finished move yet."));
      body.replaceChildren(...(data.recent.length ? [] : [none]), ...data.recent.map((j) => {
        const tr = el("tr", {"data-job": j.id, "data-state": j.state});
        [String(j.id), j.tenant, j.source + " → " + j.target, j.state,
         j.verified === null ? "-" : (j.verified ? "yes" : "NO"),
         j.write_pause_ms === null ? "-" : j.write_pause_ms.toFixed(1) + " ms",
         j.finished ? new Date(j.finished).toLocaleString() : "-"].forEach((t) => tr.append(el("td", {}, t)));
        return tr;
      }));
    } catch (err) {
      box.replaceChildren(el("p", {"class": "errornote"}, "moves: " + err.message));
    }
  }

  // ----- alerts
  async function refreshAlerts() {
    const list = document.getElementById("ops-alerts");
    try {
      const data = await getJSON(root.dataset.alertsUrl);
      list.replaceChildren(...(data.alerts.length
        ? data.alerts.map((a) => el("li", {"class": a.severity}, a.name + ": " + a.summary))
        : [el("li", {"class": "ops-none"}, "No alert firing.")]));
    } catch (err) {
      list.replaceChildren(el("li", {"class": "critical"}, "alerts: " + err.message));
    }
  }

  // ----- charts
  function draw(svg, legend, data) {
    const W = 640, H = 180, PAD = 34;
    const points = data.series.flatMap((s) => s.points);
    svg.replaceChildren();
    legend.replaceChildren();
    // The longest line's points: what a reader (and the browser test) sees as a line.
    svg.setAttribute("data-points", String(Math.max(0, ...data.series.map((s) => s.points.length))));
    if (!points.length) {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", "20"); t.setAttribute("y", "90"); t.textContent = "no data yet";
      svg.append(t);
      return;
    }
    // The whole window on the x axis: a series that began a minute ago sits at the right.
    const ys = points.map((p) => p[1]);
    const x0 = data.start, x1 = Math.max(data.end, x0 + 1);
    const y1 = Math.max(...ys, 1e-9);
    const sx = (x) => PAD + (x - x0) / (x1 - x0) * (W - PAD - 6);
    const sy = (y) => H - 18 - y / y1 * (H - 30);
    [[y1, sy(y1)], [0, sy(0)]].forEach(([v, y]) => {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", "2"); t.setAttribute("y", String(y + 4));
      t.textContent = v >= 100 ? v.toFixed(0) : v.toPrecision(2);
      svg.append(t);
    });
    data.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", color);
      line.setAttribute("stroke-width", "1.5");
      line.setAttribute("points", s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "));
      line.setAttribute("data-series", s.label);
      svg.append(line);
      if (s.points.length) {  // the latest value, visible even while the line is one point
        const last = s.points[s.points.length - 1];
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", sx(last[0]).toFixed(1));
        dot.setAttribute("cy", sy(last[1]).toFixed(1));
        dot.setAttribute("r", "2.5");
        dot.setAttribute("fill", color);
        svg.append(dot);
      }
      const item = el("li", {});
      const swatch = document.createElementNS(SVG, "svg");
      swatch.setAttribute("width", "10"); swatch.setAttribute("height", "10");
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("width", "10"); rect.setAttribute("height", "10"); rect.setAttribute("fill", color);
      swatch.append(rect);
      item.append(swatch, " " + s.label + (data.unit ? " (" + data.unit + ")" : ""));
      legend.append(item);
    });
  }

  async function refreshCharts() {
    const note = document.getElementById("ops-charts-error");
    for (const svg of root.querySelectorAll("svg[data-chart]")) {
      const name = svg.dataset.chart;
      try {
        draw(svg, document.getElementById("legend-" + name),
             await getJSON(root.dataset.seriesUrl + "?chart=" + encodeURIComponent(name)));
        note.hidden = true;
      } catch (err) {
        note.textContent = "charts: " + err.message;
        note.hidden = false;
      }
    }
  }

  // ----- Patroni clusters: members, switchover button and outcome, failover history
  const when = (iso) => iso ? new Date(iso).toLocaleString() : "-";

  function memberText(m) {
    return m.name + ": " + m.role + ", " + m.state + ", timeline " + m.timeline +
      (m.lag === null ? "" : ", lag " + m.lag);
  }

  function switchoverForm(cluster) {
    const form = el("form", {method: "post", action: root.dataset.switchoverUrl,
                             "class": "ops-switchover-form", "data-cluster": cluster.name,
                             "data-leader": cluster.leader || ""});
    form.append(el("input", {type: "hidden", name: "csrfmiddlewaretoken", value: csrf()}));
    form.append(el("input", {type: "hidden", name: "cluster", value: cluster.name}));
    const select = el("select", {name: "to", "aria-label": "new leader of " + cluster.name});
    select.append(el("option", {value: ""}, "Patroni picks"));
    cluster.members.filter((m) => !m.leader).forEach((m) => select.append(el("option", {value: m.name}, m.name)));
    form.append(select, " ", el("input", {type: "submit", value: "Switch over", "class": "button"}));
    return form;
  }

  function switchoverStatus(cluster) {
    const run = cluster.last_switchover;
    if (cluster.running && (!run || run.state !== "running"))
      return ["running", "A switchover of " + cluster.name + " is running (started outside the dashboard)."];
    if (!run) return ["none", ""];
    const started = "started " + when(run.started) + (run.by ? " by " + run.by : "");
    if (run.state === "running") return ["running", "Switchover running (" + started + ")…"];
    if (run.state === "done") return ["done", "Last switchover (" + started + "): " + run.outcome];
    return ["failed", "Last switchover failed (" + started + "): " + run.outcome];
  }

  function showCluster(cluster, canOperate) {
    const row = document.querySelector("#ops-shards tr[data-cluster='" + cluster.name + "']");
    if (!row) return;
    row.querySelector(".ops-members").replaceChildren(...cluster.members.map((m) =>
      el("li", {"class": ["running", "streaming"].includes(m.state) ? "up" : "down",
                "data-member": m.name, "data-role": m.role}, memberText(m))));
    const note = row.querySelector(".ops-patroni-error");
    if (note) { note.textContent = cluster.error; note.hidden = !cluster.error; }
    const cell = row.querySelector(".ops-switchover");
    const status = cell.querySelector(".ops-switchover-status");
    const [state, text] = switchoverStatus(cluster);
    status.dataset.state = state;
    status.textContent = text;
    status.classList.toggle("errornote", state === "failed");
    if (!canOperate) return;
    // Rebuilt only when the leader or the members change: a choice being made survives polls.
    const signature = (cluster.leader || "") + "|" + cluster.members.map((m) => m.name).join(",");
    let form = cell.querySelector("form");
    if (!form || form.dataset.signature !== signature) {
      const chosen = form ? form.querySelector("select").value : "";
      const fresh = switchoverForm(cluster);
      fresh.dataset.signature = signature;
      if ([...fresh.querySelector("select").options].some((o) => o.value === chosen))
        fresh.querySelector("select").value = chosen;
      if (form) form.replaceWith(fresh); else cell.prepend(fresh);
      form = fresh;
    }
    form.querySelector("input[type=submit]").disabled = cluster.running || !cluster.leader;
  }

  function historyRow(h) {
    const tr = el("tr", {"data-cluster": h.cluster, "data-timeline": h.timeline});
    [h.cluster, h.timeline, when(h.at), (h.old_leader || "?") + " → " + (h.new_leader || "?"),
     h.reason].forEach((t) => tr.append(el("td", {}, t)));
    return tr;
  }

  async function refreshPatroni() {
    if (!document.querySelector("#ops-shards tr[data-patroni]")) return;
    try {
      const data = await getJSON(root.dataset.patroniUrl);
      data.clusters.forEach((c) => showCluster(c, data.can_operate));
      const rows = data.clusters.flatMap((c) => c.history)
        .sort((a, b) => (b.at || "").localeCompare(a.at || ""));
      const none = el("tr", {});
      none.append(el("td", {colspan: "5", "class": "ops-none"}, "No failover yet."));
      document.querySelector("#ops-failovers tbody").replaceChildren(...(rows.length ? rows.map(historyRow) : [none]));
    } catch (err) {
      document.querySelectorAll("#ops-shards tr[data-patroni] .ops-switchover-status").forEach((p) => {
        p.textContent = "Patroni: " + err.message; p.dataset.state = "error";
      });
    }
  }

  function confirmSwitchover(form) {
    const target = form.querySelector("select").value;
    return "Switch over " + form.dataset.cluster + "? Its leader " + (form.dataset.leader || "(none)") +
      " hands over to " + (target || "a member Patroni picks") +
      "; writes pause for a few seconds.";
  }

  // The switchover posts from here and shows the answer beside its button (the start, or the
  // refusal: a 4xx with a message) until the next post; the poll shows how the command went.
  async function postSwitchover(form) {
    const notice = form.parentElement.querySelector(".ops-switchover-notice");
    form.querySelector("input[type=submit]").disabled = true;
    let ok = false, text;
    try {
      const response = await fetch(form.action, {method: "POST", body: new FormData(form),
                                                 credentials: "same-origin",
                                                 headers: {Accept: "application/json"}});
      const body = await response.json().catch(() => ({}));
      ok = response.ok;
      text = body.message || ("HTTP " + response.status);
    } catch (err) {
      text = err.message;
    }
    notice.dataset.state = ok ? "started" : "refused";
    notice.textContent = ok ? text : "Not started: " + text;
    notice.classList.toggle("errornote", !ok);
    notice.hidden = false;
    refreshPatroni();
  }

  // Every button that changes something asks first (forms added later included).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.classList && form.classList.contains("ops-switchover-form")) {
      event.preventDefault();
      if (window.confirm(confirmSwitchover(form))) postSwitchover(form);
      return;
    }
    const message = form.dataset && form.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  refreshMoves(); refreshAlerts(); refreshCharts(); refreshPatroni();
  setInterval(refreshMoves, 1000);
  setInterval(refreshAlerts, 5000);
  setInterval(refreshCharts, 5000);
  setInterval(refreshPatroni, 2000);
})();
