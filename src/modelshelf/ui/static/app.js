/* modelshelf's web UI: sortable tables, filters, metric charts (uPlot) and the lineage graph
 * (Cytoscape.js with dagre). Everything shown comes from a shelf, which is untrusted input:
 * data is read from JSON blocks and put on the page as text (textContent), never as HTML. */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function readJson(id) {
    const block = document.getElementById(id);
    return block ? JSON.parse(block.textContent) : null;
  }

  // -- messages ----------------------------------------------------------------------------
  let toastTimer = null;
  function toast(text, bad) {
    const box = $("#toast");
    if (!box) return;
    box.textContent = text;
    box.className = "show" + (bad ? " bad" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.className = ""; }, bad ? 8000 : 4000);
  }
  const saved = sessionStorage.getItem("modelshelf-toast");
  if (saved) {
    sessionStorage.removeItem("modelshelf-toast");
    toast(saved, false);
  }

  // -- htmx: the CSRF token on every write, and what a write says ----------------------------
  const csrf = document.body.dataset.csrf || "";
  document.body.addEventListener("htmx:configRequest", (e) => {
    if (csrf) e.detail.headers["X-CSRF-Token"] = csrf;
  });
  document.body.addEventListener("htmx:beforeOnLoad", (e) => {
    const xhr = e.detail.xhr;
    if (xhr.status < 400 && e.detail.requestConfig.verb === "post") {
      // The page reloads after most writes: say what was done on the page that comes back.
      sessionStorage.setItem("modelshelf-toast", xhr.responseText);
    }
  });
  document.body.addEventListener("htmx:afterRequest", (e) => {
    const where = e.detail.elt.dataset ? e.detail.elt.dataset.result : null;
    if (where && e.detail.successful) {
      sessionStorage.removeItem("modelshelf-toast"); // this one stays on the page
      $(where).textContent = e.detail.xhr.responseText;
    }
  });
  document.body.addEventListener("htmx:responseError", (e) => {
    sessionStorage.removeItem("modelshelf-toast");
    toast(e.detail.xhr.responseText || "The request failed.", true);
  });

  // -- tables --------------------------------------------------------------------------------
  function sortKey(cell, numeric) {
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? null : Number(raw);
  }

  function sortBy(th) {
    const table = th.closest("table");
    const index = Array.from(th.parentNode.children).indexOf(th);
    const numeric = th.dataset.sort === "num";
    const dir = th.dataset.dir === "asc" ? "desc" : "asc";
    $$("th[data-dir]", table).forEach((h) => h.removeAttribute("data-dir"));
    th.dataset.dir = dir;
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = sortKey(a.cells[index], numeric);
      const y = sortKey(b.cells[index], numeric);
      if (x === null || y === null) return (x === null) - (y === null); // blanks last
      const order = x < y ? -1 : x > y ? 1 : 0;
      return dir === "asc" ? order : -order;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  $$("table.sortable th[data-sort]").forEach((th) => {
    th.tabIndex = 0;
    th.addEventListener("click", () => sortBy(th));
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(th); });
  });

  $$("input[data-filter]").forEach((input) => {
    input.addEventListener("input", () => {
      const q = input.value.trim().toLowerCase();
      $$(input.dataset.filter).forEach((row) => {
        const text = (row.dataset.name || row.textContent).toLowerCase();
        row.hidden = q !== "" && !text.includes(q);
      });
    });
  });

  // Side by side, rows equal in every version are hidden until asked for.
  $$("input[data-only-differences]").forEach((box) => {
    const table = document.getElementById(box.dataset.onlyDifferences);
    const apply = () => table.classList.toggle("only-differences", box.checked);
    box.addEventListener("change", apply);
    apply();
  });

  $$("select[data-autosubmit]").forEach((s) => s.addEventListener("change", () => s.form.submit()));

  // Compare needs two versions: say so instead of sending one.
  $$("form[action='/compare']").forEach((form) => {
    const boxes = $$("input[type=checkbox][name=ref]", form);
    if (!boxes.length) return;
    const button = $(".compare-button", form);
    const update = () => {
      const n = boxes.filter((b) => b.checked).length;
      if (button) {
        button.disabled = n < 2;
        button.textContent = n < 2 ? "Compare selected" : `Compare ${n} versions`;
      }
    };
    boxes.forEach((b) => b.addEventListener("change", update));
    update();
  });

  // -- charts --------------------------------------------------------------------------------
  const PALETTE = ["#2563eb", "#16a34a", "#db2777", "#ea580c", "#7c3aed", "#0891b2"];

  function drawChart(box, data, metric) {
    box.textContent = "";
    const values = data.series[metric] || [];
    const color = PALETTE[Object.keys(data.series).indexOf(metric) % PALETTE.length];
    const width = Math.max(320, box.clientWidth || 600);
    const opts = {
      width: width,
      height: 240,
      scales: { x: { time: false } },
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: data.xlabel || "version" },
        { label: metric, stroke: color, width: 2, spanGaps: true,
          points: { show: true, size: 6, fill: color } },
      ],
      axes: [
        { label: data.xlabel || "version", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000],
          values: (u, ticks) => ticks.map((t) => (data.xlabel ? String(t) : "v" + t)) },
        { label: metric, size: 70 },
      ],
    };
    return new uPlot(opts, [data.x, values.map((v) => (v === null ? null : Number(v)))], box);
  }

  $$("[data-chart]").forEach((box) => {
    const data = readJson(box.dataset.chart);
    if (!data || !window.uPlot) return;
    const metrics = Object.keys(data.series);
    if (!metrics.length) return;
    const picker = $(`select[data-chart-for="${box.id}"]`);
    // Start on a validation metric when there is one: it is what a reader looks for first.
    let current = metrics.find((m) => /^val/.test(m)) || metrics[0];
    if (picker) picker.value = current;
    let plot = drawChart(box, data, current);
    if (picker) {
      picker.addEventListener("change", () => {
        current = picker.value;
        plot.destroy();
        plot = drawChart(box, data, current);
      });
    }
    window.addEventListener("resize", () => plot.setSize({ width: Math.max(320, box.clientWidth), height: 240 }));
  });

  // -- lineage graph -------------------------------------------------------------------------
  const box = $("#graph");
  if (box && window.cytoscape) {
    if (window.cytoscapeDagre) window.cytoscape.use(window.cytoscapeDagre);
    const source = box.dataset.source;
    const load = source
      ? fetch(source, { headers: { Accept: "application/json" } }).then((r) =>
          r.ok ? r.json() : r.json().then((e) => Promise.reject(new Error(e.error))))
      : Promise.resolve(readJson(box.dataset.graph));
    load.then((data) => lineage(box, data)).catch((e) => {
      box.textContent = "The graph could not be loaded: " + e.message;
    });
  }

  // Node sizes from their labels (11px sans-serif is about 6.3px a character).
  const lines = (text) => String(text).split("\n").length;
  const textWidth = (text) =>
    Math.min(230, Math.max(48, ...String(text).split("\n").map((l) => l.length * 6.3 + 18)));

  const BIG_GRAPH = 80; // nodes
  const BIG_GROUP = 8; // members

  function groupOf(node) {
    return node.kind === "version" ? "artifact:" + node.name : "job:" + node.job_type;
  }

  function lineage(box, data) {
    const source = box.dataset.source; // none in a static report: nothing to fetch
    const nodes = new Map(data.nodes.map((n) => [n.id, n]));
    const edges = new Map(data.edges.map((e) => [`${e.from}|${e.to}|${e.kind}`, e]));
    const collapsed = new Set();
    const exploded = new Set();
    const root = data.root || box.dataset.root;
    const cy = window.cytoscape({
      container: box,
      minZoom: 0.05,
      style: [
        { selector: "node", style: {
          label: "data(label)", "text-wrap": "wrap", "text-valign": "center", "text-halign": "center",
          "font-size": 11, "font-family": "system-ui, sans-serif", color: "#0f172a",
          width: (n) => textWidth(n.data("label")), height: (n) => 16 * lines(n.data("label")) + 8,
          padding: "6px", "text-max-width": "220px" } },
        { selector: "node[kind='version']", style: {
          shape: "round-rectangle", "background-color": "#dbeafe", "border-width": 1.5, "border-color": "#3b82f6" } },
        { selector: "node[kind='run']", style: {
          shape: "ellipse", "background-color": "#dcfce7", "border-width": 1.5, "border-color": "#16a34a" } },
        { selector: "node[status='failed'], node[status='crashed']", style: {
          "background-color": "#fee2e2", "border-color": "#dc2626" } },
        { selector: "node[status='running']", style: { "background-color": "#fef9c3", "border-color": "#ca8a04" } },
        { selector: "node[kind='group']", style: {
          shape: "barrel", "background-color": "#e2e8f0", "border-width": 2, "border-color": "#475569",
          "border-style": "double", "font-weight": "bold" } },
        { selector: "node.root", style: { "border-width": 4, "border-color": "#1d4ed8", "font-weight": "bold" } },
        { selector: "node:selected", style: { "overlay-color": "#f59e0b", "overlay-opacity": 0.25, "overlay-padding": 6 } },
        { selector: "edge", style: {
          width: 1.5, "curve-style": "bezier", "target-arrow-shape": "triangle", "line-color": "#94a3b8",
          "target-arrow-color": "#94a3b8", label: "data(kind)", "font-size": 9, color: "#64748b",
          "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": 2 } },
        { selector: "edge[kind='resumed']", style: { "line-style": "dashed" } },
      ],
    });
    window.modelshelfGraph = cy; // for tests and the console

    function label(n) {
      if (n.kind === "version") {
        const aliases = (n.aliases || []).filter((a) => a !== "latest");
        return `${n.name}:v${n.version}` + (aliases.length ? `\n[${aliases.join(", ")}]` : "");
      }
      return `${n.job_type} run\n${n.run_id}`;
    }

    function visible() {
      // Each node, or the group node standing for it while its group is collapsed.
      const where = new Map();
      const out = [];
      const groups = new Map();
      for (const n of nodes.values()) {
        const g = groupOf(n);
        if (collapsed.has(g)) {
          const gid = "group:" + g;
          where.set(n.id, gid);
          if (!groups.has(gid)) {
            groups.set(gid, { id: gid, kind: "group", group: g, members: 0,
              title: n.kind === "version" ? n.name : n.job_type + " runs" });
          }
          groups.get(gid).members += 1;
        } else {
          where.set(n.id, n.id);
          out.push({ ...n, group: g, label: label(n) });
        }
      }
      for (const g of groups.values()) {
        out.push({ ...g, label: `${g.title}\n(${g.members} ${g.group.startsWith("job:") ? "runs" : "versions"})` });
      }
      const seen = new Set();
      const links = [];
      for (const e of edges.values()) {
        const a = where.get(e.from), b = where.get(e.to);
        if (!a || !b || a === b) continue;
        const key = `${a}|${b}|${e.kind}`;
        if (seen.has(key)) continue;
        seen.add(key);
        links.push({ id: key, source: a, target: b, kind: e.kind });
      }
      return { out, links };
    }

    function render() {
      const { out, links } = visible();
      cy.elements().remove();
      cy.add(out.map((d) => ({ group: "nodes", data: d, classes: d.id === root ? "root" : "" })));
      cy.add(links.map((d) => ({ group: "edges", data: d })));
      const big = out.length > 150;
      cy.layout({ name: window.cytoscapeDagre ? "dagre" : "breadthfirst", rankDir: "LR",
        nodeSep: big ? 8 : 24, rankSep: big ? 60 : 90, animate: false, fit: true, padding: 24 }).run();
      box.dataset.nodes = String(out.length);
      box.dataset.edges = String(links.length);
      const stats = $("#graph-stats");
      if (stats) {
        const folded = collapsed.size ? ` (${collapsed.size} group(s) folded: click one to expand)` : "";
        stats.textContent = `${out.length} nodes, ${links.length} edges${folded}`;
      }
    }

    function panel(d) {
      const side = $("#panel");
      if (!side) return;
      side.textContent = "";
      const rows = [];
      const add = (k, v) => rows.push(el("dt", {}, k), el("dd", {}, v));
      if (d.kind === "version") {
        side.append(el("h2", {}, `${d.name}:v${d.version}`));
        add("type", d.type);
        add("aliases", (d.aliases || []).join(", ") || "none");
      } else if (d.kind === "run") {
        side.append(el("h2", {}, `${d.job_type} run`));
        add("run", d.run_id);
        if (d.name) add("name", d.name);
        add("status", d.status);
      } else {
        side.append(el("h2", {}, d.title));
        add("collapsed", `${d.members} nodes`);
      }
      side.append(el("dl", { class: "panel-facts" }, ...rows));
      const actions = el("div", { class: "panel-actions" });
      if (d.kind === "version" && source) {
        actions.append(el("a", { class: "button", href: "/v/" + encodeURI(d.id) }, "Open version"));
      }
      if (d.kind === "run" && source) {
        actions.append(el("a", { class: "button", href: "/runs/" + encodeURIComponent(d.run_id) }, "Open run"));
      }
      const g = d.group;
      const what = g.startsWith("artifact:") ? "artifact" : "job type";
      if (d.kind === "group") {
        actions.append(el("button", { type: "button", onclick: () => expand(g) }, "Expand"));
      } else {
        if (source) {
          actions.append(el("button", { type: "button", class: "explode", onclick: () => explode(g) },
            `Explode ${what}`));
        }
        actions.append(el("button", { type: "button", class: "collapse", onclick: () => collapse(g) },
          `Collapse ${what}`));
      }
      side.append(actions);
    }

    function explode(g) {
      const [kind, value] = [g.slice(0, g.indexOf(":")), g.slice(g.indexOf(":") + 1)];
      const query = kind === "artifact" ? "artifact=" : "job_type=";
      return fetch(`/api/explode?${query}${encodeURIComponent(value)}`)
        .then((r) => (r.ok ? r.json() : r.json().then((e) => Promise.reject(new Error(e.error)))))
        .then((more) => {
          more.nodes.forEach((n) => { if (!nodes.has(n.id)) nodes.set(n.id, n); });
          more.edges.forEach((e) => edges.set(`${e.from}|${e.to}|${e.kind}`, e));
          exploded.add(g);
          collapsed.delete(g);
          render();
        })
        .catch((e) => toast("Explode failed: " + e.message, true));
    }
    function collapse(g) { collapsed.add(g); render(); }
    function expand(g) { collapsed.delete(g); render(); }

    // A large graph starts with its large groups folded (every run of a job type, every
    // version of an artifact), except the root's: a click on a group expands it.
    if (nodes.size > BIG_GRAPH) {
      const sizes = new Map();
      for (const n of nodes.values()) sizes.set(groupOf(n), (sizes.get(groupOf(n)) || 0) + 1);
      const mine = nodes.has(root) ? groupOf(nodes.get(root)) : null;
      for (const [g, size] of sizes) if (size > BIG_GROUP && g !== mine) collapsed.add(g);
    }

    cy.on("tap", "node", (e) => panel(e.target.data()));
    render();
    const start = cy.getElementById(root);
    if (start && start.length) { start.select(); panel(start.data()); }
  }
})();
