// bat review: the queue and the tube view. Data is inserted as text (textContent), never as markup.
// The basophil gate's corners are SVG circles over the density image: dragging one, adding one (double-click
// on an edge) or removing one (right-click) re-gates the tube; so does dragging a range's side, or an end of the
// time gate's kept span over its histogram.
"use strict";

const TOKEN = document.querySelector('meta[name="bat-token"]').content;
const SVG_NS = "http://www.w3.org/2000/svg";
const SIZE = 420;  // the density image's size in pixels (the server draws it so)

const state = { queue: [], current: null, tube: null, edited: null, editedGate: null, editedThreshold: null,
                reviewer: "" };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// A drag of `node` with the primary button: onMove(event) while it moves, then onEnd(event) once when released
// (or cancelled). The pointer is captured so the drag follows it outside the node.
function draggable(node, onMove, onEnd) {
  let dragging = false;
  node.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    dragging = true;
    node.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  });
  node.addEventListener("pointermove", (ev) => { if (dragging) onMove(ev); });
  const end = async (ev) => {
    if (!dragging) return;
    dragging = false;
    node.releasePointerCapture(ev.pointerId);
    await onEnd(ev);
  };
  node.addEventListener("pointerup", end);
  node.addEventListener("pointercancel", end);
}

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Bat-Token"] = TOKEN;
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

function say(text, bad) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = bad ? "bad" : "";
}

function fmt(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

// ------------------------------------------------------------------ queue
async function loadQueue() {
  const params = new URLSearchParams();
  for (const [id, key] of [["f-patient", "patient"], ["f-flag", "flag"], ["f-status", "status"]]) {
    const v = document.getElementById(id).value;
    if (v) params.set(key, v);
  }
  const q = await api("/api/queue?" + params.toString());
  state.queue = q.tubes;
  const c = q.counts;
  document.getElementById("counts").textContent =
    `${c.total} tubes · ${c.failed} failed · ${c.flagged} flagged · ${c.unreviewed} unreviewed · ` +
    `${c.reviewed} reviewed · ${c.left} left to review`;
  const list = document.getElementById("queue");
  list.replaceChildren(...q.tubes.map((t) => {
    const li = el("li", { class: `tube g-${t.group}` + (t.id === state.current ? " current" : ""), "data-id": String(t.id) },
      el("span", { class: "file", text: t.file }), " ",
      el("span", { class: "who", text: `${t.patient} · ${t.pretreatment} · ${t.condition}` }), " ",
      el("span", { class: "state", text: t.review === "unreviewed" ? t.group : t.review }));
    return li;
  }));
}

function step(delta) {
  if (!state.queue.length) return;
  const i = state.queue.findIndex((t) => t.id === state.current);
  const j = i < 0 ? 0 : Math.min(state.queue.length - 1, Math.max(0, i + delta));
  openTube(state.queue[j].id);
}

// ------------------------------------------------------------------ one tube
function showNumbers(n, label) {
  const box = document.getElementById("numbers");
  const flags = (n.flags || []).map((f) => `${f.code} (${f.severity})`).join(", ") || "none";
  box.replaceChildren(
    el("p", { class: "label", text: label }),
    el("table", {},
      el("tr", {}, el("th", { text: "Basophils" }), el("td", { id: "n-basophils", text: String(n.n_basophils) })),
      el("tr", {}, el("th", { text: "%CD63+" }), el("td", { id: "pct-cd63", text: fmt(n.pct_cd63, 1) })),
      el("tr", {}, el("th", { text: "CD63 threshold" }), el("td", { id: "threshold", text: fmt(n.threshold, 0) })),
      el("tr", {}, el("th", { text: "QC" }), el("td", { id: "qc", class: `qc-${n.qc}`, text: n.qc })),
      el("tr", {}, el("th", { text: "Flags" }), el("td", { text: flags }))));
}

function gateFigure(g) {
  const [x0, x1, y0, y1] = g.extent;
  const px = (x) => ((x - x0) / (x1 - x0)) * SIZE;
  const py = (y) => SIZE - ((y - y0) / (y1 - y0)) * SIZE;
  const dx = (p) => x0 + (p / SIZE) * (x1 - x0);
  const dy = (p) => y0 + ((SIZE - p) / SIZE) * (y1 - y0);
  const fig = el("figure", { class: "gate" + (g.editable ? " editable" : ""), "data-gate": g.name });
  const stage = el("div", { class: "stage" });
  const img = el("img", { src: `/api/tubes/${state.tube.id}/gates/${g.index}/density.png`, width: String(SIZE),
                          height: String(SIZE), alt: `density of ${g.parent || "all events"}` });
  const overlay = svg("svg", { viewBox: `0 0 ${SIZE} ${SIZE}`, width: String(SIZE), height: String(SIZE) });
  stage.append(img, overlay);
  fig.append(stage, el("figcaption", { text: `${g.name}: ${g.dims.join(" × ")} · ${g.count} of ${g.parent_count}` +
                                               ` · ${g.method}` }));
  const geo = g.geometry;
  if (geo.type === "range" && geo.mins.length === 2) {
    rangeOverlay(g, overlay, { px, py, dx, dy });
    return fig;
  }
  if (geo.type !== "polygon") return fig;
  const verts = geo.vertices.map((v) => [px(v[0]), py(v[1])]);
  const poly = svg("polygon", { class: "outline", points: verts.map((v) => v.join(",")).join(" ") });
  overlay.append(poly);
  if (!g.editable) return fig;
  const redraw = () => poly.setAttribute("points", verts.map((v) => v.join(",")).join(" "));
  const send = () => regate(g.name, { type: "polygon", vertices: verts.map((p) => [dx(p[0]), dy(p[1])]) });
  const local = (ev) => {
    const box = overlay.getBoundingClientRect();
    return [Math.max(-SIZE, Math.min(2 * SIZE, ((ev.clientX - box.left) / box.width) * SIZE)),
            Math.max(-SIZE, Math.min(2 * SIZE, ((ev.clientY - box.top) / box.height) * SIZE))];
  };
  const layer = svg("g", { class: "handles" });
  overlay.append(layer);
  // handles: an invisible wide line on each edge (double-click adds a corner there) and a circle on each
  // corner (drag moves it; right-click removes it, keeping at least three)
  const build = () => {
    layer.replaceChildren();
    verts.forEach((v, i) => {
      const w = verts[(i + 1) % verts.length];
      const edge = svg("line", { class: "edge", x1: v[0], y1: v[1], x2: w[0], y2: w[1], "data-index": String(i) });
      edge.addEventListener("dblclick", (ev) => {
        ev.preventDefault();
        verts.splice(i + 1, 0, local(ev));
        redraw();
        build();
        send();
      });
      layer.append(edge);
    });
    verts.forEach((v, i) => {
      const handle = svg("circle", { class: "vertex", cx: v[0], cy: v[1], r: 6, "data-index": String(i) });
      draggable(handle, (ev) => {
        [v[0], v[1]] = local(ev);
        handle.setAttribute("cx", v[0]);
        handle.setAttribute("cy", v[1]);
        redraw();
      }, async () => {
        build();
        await send();
      });
      handle.addEventListener("contextmenu", (ev) => {
        ev.preventDefault();
        if (verts.length <= 3) { say("A gate keeps at least three corners.", true); return; }
        verts.splice(i, 1);
        redraw();
        build();
        send();
      });
      layer.append(handle);
    });
  };
  build();
  return fig;
}

// a rectangle (a 2-D range gate): its finite sides are lines that can be dragged across (an open side is
// drawn at the plot's edge and stays open); the end of a drag re-gates the tube
function rangeOverlay(g, overlay, { px, py, dx, dy }) {
  const mins = g.geometry.mins.slice(), maxs = g.geometry.maxs.slice();
  const pos = { xmin: mins[0] === null ? -2 : px(mins[0]), xmax: maxs[0] === null ? SIZE + 2 : px(maxs[0]),
                ymin: mins[1] === null ? SIZE + 2 : py(mins[1]), ymax: maxs[1] === null ? -2 : py(maxs[1]) };
  const rect = svg("rect", { class: "outline" });
  overlay.append(rect);
  const redraw = () => {
    rect.setAttribute("x", Math.min(pos.xmin, pos.xmax));
    rect.setAttribute("y", Math.min(pos.ymin, pos.ymax));
    rect.setAttribute("width", Math.abs(pos.xmax - pos.xmin));
    rect.setAttribute("height", Math.abs(pos.ymin - pos.ymax));
  };
  redraw();
  if (!g.editable) return;
  const sides = [["xmin", mins, 0], ["xmax", maxs, 0], ["ymin", mins, 1], ["ymax", maxs, 1]];
  for (const [side, limits, axis] of sides) {
    if (limits[axis] === null) continue;
    const line = svg("line", { class: `side ${axis === 0 ? "vertical" : "horizontal"}`, "data-side": side });
    const place = () => {
      const at = pos[side];
      const [a0, a1] = axis === 0 ? [pos.ymax, pos.ymin] : [pos.xmin, pos.xmax];
      if (axis === 0) { line.setAttribute("x1", at); line.setAttribute("x2", at); line.setAttribute("y1", a0); line.setAttribute("y2", a1); }
      else { line.setAttribute("y1", at); line.setAttribute("y2", at); line.setAttribute("x1", a0); line.setAttribute("x2", a1); }
    };
    place();
    draggable(line, (ev) => {
      const box = overlay.getBoundingClientRect();
      const at = axis === 0 ? ((ev.clientX - box.left) / box.width) * SIZE : ((ev.clientY - box.top) / box.height) * SIZE;
      // a side stays within the plot and on its own side of the opposite one (the pixel y axis points down)
      const [lo, hi] = { xmin: [0, pos.xmax - 2], xmax: [pos.xmin + 2, SIZE], ymin: [pos.ymax + 2, SIZE],
                         ymax: [0, pos.ymin - 2] }[side];
      pos[side] = Math.max(Math.max(0, lo), Math.min(Math.min(SIZE, hi), at));
      place();
      redraw();
    }, async () => {
      limits[axis] = axis === 0 ? dx(pos[side]) : dy(pos[side]);
      for (const l of overlay.querySelectorAll("line.side")) l.dispatchEvent(new Event("replace"));
      await regate(g.name, { type: "range", mins: mins.slice(), maxs: maxs.slice() });
    });
    line.addEventListener("replace", place);
    overlay.append(line);
  }
}

// a 1-D gate (the acquisition-QC time gate) over its parent's histogram as the run stored it, its kept windows
// shaded; on an editable gate the ends of the kept span are lines that can be dragged across. The edit keeps
// one window, from the first end to the last: a gap the automated gate cut out inside it is kept as well.
function timeFigure(g) {
  const W = 600, H = 160, h = g.timeline;
  let lo = h.edges[0], hi = h.edges[h.edges.length - 1];
  for (const [a, b] of h.windows || []) {
    if (a !== null) { lo = Math.min(lo, a); hi = Math.max(hi, a); }
    if (b !== null) { lo = Math.min(lo, b); hi = Math.max(hi, b); }
  }
  if (!(hi > lo)) hi = lo + 1;
  const top = Math.max(1, ...h.counts);
  const px = (x) => ((x - lo) / (hi - lo)) * W;
  const dx = (p) => lo + (p / W) * (hi - lo);
  const overlay = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: String(W), height: String(H), class: "histogram timeline" });
  const steps = [`M${px(h.edges[0])} ${H}`];
  h.counts.forEach((c, i) => {
    const y = H - (c / top) * (H - 10);
    steps.push(`L${px(h.edges[i])} ${y}`, `L${px(h.edges[i + 1])} ${y}`);
  });
  steps.push(`L${px(h.edges[h.edges.length - 1])} ${H} Z`);
  overlay.append(svg("path", { class: "bars", d: steps.join(" ") }));
  const kept = svg("g", { class: "kept" });
  overlay.append(kept);
  const shade = (windows) => kept.replaceChildren(...windows.map(([a, b]) => svg("rect", {
    class: "window", x: a === null ? 0 : px(a), y: 0, height: H,
    width: Math.max(1, (b === null ? W : px(b)) - (a === null ? 0 : px(a))) })));
  shade(h.windows || []);
  const how = g.editable ? " · drag either end of the kept span (your edit keeps one window, gaps inside it included)" : "";
  const fig = el("figure", { class: "gate wide" + (g.editable ? " editable" : ""), "data-gate": g.name }, overlay,
    el("figcaption", { text: `${g.name}: events per ${g.dims[0]} bin · ${g.count} of ${g.parent_count} kept · ${g.method}${how}` }));
  if (!g.editable || !h.windows || !h.windows.length) return fig;
  // the kept span's ends in data units (null: open) and on the plot (an open end at the plot's edge)
  const ends = { min: h.windows[0][0], max: h.windows[h.windows.length - 1][1] };
  const at = { min: ends.min === null ? 0 : px(ends.min), max: ends.max === null ? W : px(ends.max) };
  for (const side of ["min", "max"]) {
    const line = svg("line", { class: "side vertical", "data-side": side, y1: 0, y2: H });
    const place = () => { line.setAttribute("x1", at[side]); line.setAttribute("x2", at[side]); };
    place();
    draggable(line, (ev) => {
      const box = overlay.getBoundingClientRect();
      const x = ((ev.clientX - box.left) / box.width) * W;
      at[side] = side === "min" ? Math.max(0, Math.min(at.max - 2, x)) : Math.min(W, Math.max(at.min + 2, x));
      place();
      shade([[dx(at.min), dx(at.max)]]);
    }, async () => {
      ends[side] = dx(at[side]);  // only the dragged end moves: the other keeps its value (or stays open)
      await regate(g.name, { type: "range", mins: [ends.min], maxs: [ends.max] });
    });
    overlay.append(line);
  }
  return fig;
}

function classText(row) {
  const inh = row.auc_inhibition_pct === null ? "" : ` · AUC inhibition ${fmt(row.auc_inhibition_pct, 0)}%`;
  return `${row.allergen}: ${row.class}${row.confidence ? " (" + row.confidence + ")" : ""}${inh}`;
}

// the patient's dose responses, one plot per allergen: % activated basophils against the concentration
// (log axis), the measured points (hollow: left out of the fit) and the fitted 4PL, per arm; the curve as
// stored drawn dashed beneath. Drawn from the numbers the server returns; every text is set as text.
const ARM_CLASS = { none: "arm-none", omalizumab: "arm-oma" };
const ARM_NAME = { none: "no pretreatment", omalizumab: "omalizumab" };

function curvePlot(c, row, was) {
  const W = 380, H = 230, L = 44, R = 10, T = 10, B = 34;
  const all = [];
  for (const a of c.arms) for (const k of ["now", "stored"]) if (a[k]) {
    for (const p of a[k].points) if (p.pct !== null) all.push([p.conc, p.pct]);
    for (const q of a[k].curve) all.push(q);
  }
  const fig = el("figure", { class: "curves", "data-allergen": c.allergen });
  const cls = row ? `${row.class}${row.confidence ? " (" + row.confidence + ")" : ""}` : "–";
  const changed = was && row && was.class !== row.class ? ` (was ${was.class})` : "";
  const inh = row && row.auc_inhibition_pct !== null ? ` · AUC inhibition ${fmt(row.auc_inhibition_pct, 0)}%` : "";
  const caption = el("figcaption", { class: "class-line" + (changed ? " changed" : ""),
                                     text: `${c.allergen}: ${cls}${inh}${changed}` });
  if (row && row.reason) caption.setAttribute("title", row.reason);
  if (!all.length) { fig.append(el("p", { class: "muted", text: "no dose-response points" }), caption); return fig; }
  const lx = all.map((q) => Math.log10(q[0]));
  let x0 = Math.min(...lx), x1 = Math.max(...lx);
  if (x1 - x0 < 1e-9) { x0 -= 0.5; x1 += 0.5; }
  const y1 = Math.max(10, ...all.map((q) => q[1])) * 1.08, y0 = Math.min(0, ...all.map((q) => q[1]));
  const px = (c0) => L + ((Math.log10(c0) - x0) / (x1 - x0)) * (W - L - R);
  const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: String(W), height: String(H), class: "dose-response" });
  plot.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
              svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  const label = (x, y, text, anchor) => {
    const t = svg("text", { x, y, "text-anchor": anchor, class: "tick" });
    t.textContent = text;
    return t;
  };
  for (let d = Math.ceil(x0); d <= Math.floor(x1); d++) {
    plot.append(svg("line", { class: "tickmark", x1: px(10 ** d), x2: px(10 ** d), y1: H - B, y2: H - B + 4 }),
                label(px(10 ** d), H - B + 15, String(Number((10 ** d).toPrecision(3))), "middle"));
  }
  const step = y1 > 60 ? 20 : y1 > 25 ? 10 : 5;
  for (let v = Math.ceil(y0 / step) * step; v <= y1; v += step) {
    plot.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: py(v), y2: py(v) }), label(L - 4, py(v) + 4, String(v), "end"));
  }
  const unit = (c.arms.find((a) => a.now) || c.arms[0]).now?.unit || "";
  plot.append(label((L + W - R) / 2, H - 4, `concentration${unit ? " (" + unit + ")" : ""}`, "middle"));
  const yl = label(12, (T + H - B) / 2, "% activated", "middle");
  yl.setAttribute("transform", `rotate(-90 12 ${(T + H - B) / 2})`);
  plot.append(yl);
  const legend = el("ul", { class: "legend" });
  for (const a of c.arms) {
    const k = ARM_CLASS[a.arm] || "arm-other";
    const line = (d, cls) => d.curve.length &&
      plot.append(svg("polyline", { class: `fit ${k} ${cls}`, points: d.curve.map((q) => `${px(q[0])},${py(q[1])}`).join(" ") }));
    if (a.stored) line(a.stored, "stored");
    if (!a.now) continue;
    line(a.now, "now");
    for (const p of a.now.points) {
      if (p.pct === null) continue;
      const dot = svg("circle", { class: `point ${k}` + (p.used ? "" : " unused"), cx: px(p.conc), cy: py(p.pct), r: 3.5 });
      const tip = svg("title", {});
      tip.textContent = `${p.file}: ${fmt(p.pct, 1)}% at ${p.conc} ${a.now.unit}`;
      dot.append(tip);
      plot.append(dot);
    }
    const why = a.now.reason ? ` (${a.now.reason})` : "";
    const ec = a.now.ec50 !== null ? ` · EC50 ${Number(a.now.ec50).toPrecision(3)} ${a.now.unit}`
      : ` · EC50 ${a.now.status.replace("_", " ")}${why}`;
    legend.append(el("li", { class: k, text: `${ARM_NAME[a.arm] || a.arm}: ${a.now.points.length} points${ec}` }));
  }
  fig.append(caption, plot, legend);
  return fig;
}

async function loadPatient(body, label) {
  const id = state.tube.id;
  const seq = (state.patientSeq = (state.patientSeq || 0) + 1);
  const box = document.getElementById("patient");
  let head = box.querySelector(".label");
  if (!head) { head = el("p", { class: "label" }); box.replaceChildren(head); }
  head.textContent = "Patient: scoring…";  // the curves shown stay until the new ones come
  try {
    const p = await api(`/api/tubes/${id}/patient`, body);
    if (!state.tube || state.tube.id !== id || seq !== state.patientSeq) return;  // a newer edit is on its way
    const stored = new Map(p.stored.map((r) => [r.allergen, r]));
    const now = new Map(p.now.map((r) => [r.allergen, r]));
    box.replaceChildren(el("p", { class: "label", text: `Patient ${p.patient}, ${label}` }),
      el("ul", { id: "patient-classes" }, ...p.now.map((r) => {
        const was = stored.get(r.allergen);
        const changed = was && was.class !== r.class ? ` (was ${was.class})` : "";
        return el("li", { title: r.reason, class: changed ? "changed" : "", text: classText(r) + changed });
      })),
      el("div", { id: "curves" }, ...p.curves.map((c) => curvePlot(c, now.get(c.allergen), stored.get(c.allergen)))));
  } catch (err) {
    box.replaceChildren(el("p", { class: "bad", text: `Patient: ${err.message}` }));
  }
}

// the activation marker's histogram of this tube, the threshold a vertical line (draggable on a negative
// control: it sets the threshold of the patient and arm)
async function loadHistogram() {
  const id = state.tube.id;
  const box = document.getElementById("histogram");
  const h = await api(`/api/tubes/${id}/histogram`);
  if (!state.tube || state.tube.id !== id) return;
  document.getElementById("save-threshold").hidden = !(h && h.editable);
  if (!h) { box.replaceChildren(); return; }
  const W = 600, H = 160;
  const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
  const top = Math.max(1, ...h.counts);
  const px = (x) => ((x - lo) / (hi - lo)) * W;
  const overlay = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: String(W), height: String(H), class: "histogram" });
  h.counts.forEach((c, i) => {
    const x0 = px(h.edges[i]), x1 = px(h.edges[i + 1]), y = H - (c / top) * (H - 10);
    overlay.append(svg("rect", { class: "bar", x: x0, y, width: Math.max(0.5, x1 - x0), height: H - y }));
  });
  const fig = el("figure", { class: "gate" + (h.editable ? " editable" : "") }, overlay,
    el("figcaption", { text: `${h.marker} of the basophils · threshold ${fmt(h.threshold, 0)}` +
                             (h.editable ? " · drag the line to set it for this patient and arm" : "") }));
  box.replaceChildren(fig);
  if (h.threshold_scale === null) return;
  let x = px(h.threshold_scale);
  const line = svg("line", { class: "threshold" + (h.editable ? " draggable" : ""), x1: x, x2: x, y1: 0, y2: H });
  overlay.append(line);
  if (!h.editable) return;
  draggable(line, (ev) => {
    const b = overlay.getBoundingClientRect();
    x = Math.max(0, Math.min(W, ((ev.clientX - b.left) / b.width) * W));
    line.setAttribute("x1", x);
    line.setAttribute("x2", x);
  }, async () => {
    const scale = lo + (x / W) * (hi - lo);
    try {
      const t = await api(`/api/tubes/${id}/threshold`, { threshold: scale });
      state.editedThreshold = scale;
      document.getElementById("pct-cd63").textContent = fmt(t.pct_cd63, 1);
      document.getElementById("threshold").textContent = `${fmt(t.threshold, 0)} (was ${fmt(t.before, 0)})`;
      say("threshold moved; give a reason and Save threshold to keep it");
      loadPatient({ threshold: scale }, "with your threshold");
    } catch (err) {
      say(err.message, true);
    }
  });
}

async function regate(gate, geometry) {
  say("re-gating…");
  const t0 = performance.now();
  try {
    const n = await api(`/api/tubes/${state.tube.id}/regate`, { gate, geometry });
    state.edited = n.geometry;
    state.editedGate = gate;
    showNumbers(n, "With your edit (not saved yet)");
    say(`re-gated in ${Math.round(performance.now() - t0)} ms; give a reason and Save to keep it`);
    loadPatient({ gate, geometry: n.geometry }, "with your edit");
  } catch (err) {
    say(err.message, true);
  }
}

async function openTube(id) {
  state.current = id;
  state.edited = null;
  state.editedGate = null;
  for (const li of document.querySelectorAll("#queue li")) li.classList.toggle("current", li.dataset.id === String(id));
  const t = await api(`/api/tubes/${id}`);
  if (state.current !== id) return;  // another tube was chosen meanwhile
  state.tube = t;
  const history = document.getElementById("history");
  history.replaceChildren();  // the previous tube's decisions are never shown under this tube's name
  delete history.dataset.tube;
  document.getElementById("tube-title").textContent = t.file;
  const meta = `${t.patient} · ${t.pretreatment} · ${t.condition}` + (t.allergen ? ` · ${t.allergen}` : "") +
    (t.concentration !== null ? ` ${t.concentration} ${t.unit || ""}` : "") +
    ` · review: ${t.review}` + (t.corrected_gates.length ? ` (corrected: ${t.corrected_gates.join(", ")})` : "") +
    (t.error ? ` · not gated: ${t.error}` : "") + (t.signoff ? ` · patient ${t.signoff}` : "");
  document.getElementById("tube-meta").textContent = meta;
  showNumbers(t, "As stored");
  document.getElementById("gates").replaceChildren(
    ...t.gates.filter((g) => g.has_density || g.timeline).map((g) => (g.timeline ? timeFigure(g) : gateFigure(g))));
  document.getElementById("decide").hidden = false;
  state.editedThreshold = null;
  loadPatient({}, "as it stands");
  loadHistogram().catch((err) => say(err.message, true));
  document.getElementById("reason").value = "";
  say("");
  await loadHistory();
}

async function loadHistory() {
  const id = state.tube.id;
  const h = await api(`/api/tubes/${id}/history`);
  if (!state.tube || state.tube.id !== id) return;  // another tube was opened meanwhile
  const history = document.getElementById("history");
  history.replaceChildren(...h.map((e) => el("li", {
    text: `${e.decided_at} · ${e.reviewer} · ${e.action}${e.gate ? " " + e.gate : ""} · ${e.reason}` })));
  history.dataset.tube = String(id);  // whose decisions the list shows
}

async function decide(action) {
  if (!state.tube) return;
  if (!state.reviewer) { say("Enter your name (top right) first.", true); return; }
  const body = { action, reason: document.getElementById("reason").value };
  if (action === "threshold") {
    if (state.editedThreshold === null) { say("Drag the threshold line first.", true); return; }
    body.threshold = state.editedThreshold;
  }
  if (action === "correct") {
    if (!state.edited) { say("Nothing edited: drag a corner or a side of a gate first (or Accept).", true); return; }
    body.gate = state.editedGate;
    body.geometry = state.edited;
  }
  try {
    await api(`/api/tubes/${state.tube.id}/decision`, body);
    const id = state.tube.id;
    await loadQueue();
    await openTube(id);
    say(`${action} saved`);
  } catch (err) {
    say(err.message, true);
  }
}

async function signOff() {
  if (!state.tube) return;
  if (!state.reviewer) { say("Enter your name (top right) first.", true); return; }
  try {
    await api("/api/patients/signoff", { patient: state.tube.patient, reason: document.getElementById("reason").value });
    await openTube(state.tube.id);
    say(`patient ${state.tube.patient} signed off`);
  } catch (err) {
    say(err.message, true);
  }
}

// ------------------------------------------------------------------ reviewer
async function loadReviewer() {
  const r = await api("/api/reviewer");
  showReviewer(r);
}

function showReviewer(r) {
  state.reviewer = r.reviewer;
  document.getElementById("reviewer").textContent = r.reviewer || "(not set)";
  document.getElementById("reviewer-name").hidden = r.fixed;
  document.getElementById("reviewer-set").hidden = r.fixed;
}

async function setReviewer() {
  try {
    showReviewer(await api("/api/reviewer", { name: document.getElementById("reviewer-name").value }));
  } catch (err) {
    say(err.message, true);
  }
}

// ------------------------------------------------------------------ start
document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["f-patient", "f-flag", "f-status"]) document.getElementById(id).addEventListener("change", loadQueue);
  document.getElementById("save").addEventListener("click", () => decide("correct"));
  document.getElementById("accept").addEventListener("click", () => decide("accept"));
  document.getElementById("exclude").addEventListener("click", () => decide("exclude"));
  document.getElementById("revert").addEventListener("click", () => decide("revert"));
  document.getElementById("signoff").addEventListener("click", signOff);
  document.getElementById("save-threshold").addEventListener("click", () => decide("threshold"));
  document.getElementById("reviewer-set").addEventListener("click", setReviewer);
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "n") step(1);
    else if (ev.key === "p") step(-1);
    else if (ev.key === "a") decide("accept");
  });
  loadReviewer();
  // one listener for the queue's rows, those the server wrote into the page included: a row clicked before
  // the queue is read opens, and the first tube is opened only when none was chosen meanwhile
  document.getElementById("queue").addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-id]");
    if (li) openTube(Number(li.dataset.id));
  });
  loadQueue().then(() => { if (state.queue.length && state.current === null) openTube(state.queue[0].id); });
  document.body.dataset.ready = "1";  // the page answers clicks and keys from here on
});
