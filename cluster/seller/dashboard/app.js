// The seller's dashboard: /api/state every 5 s, drawn as tiles, tables and SVG bars.
"use strict";
const MICROS = 1e6;
const $ = (id) => document.getElementById(id);
const money = (micros) => "$" + (micros / MICROS).toFixed(4);
const day = (epoch) => new Date(epoch * 1000).toISOString().slice(5, 10);
let price = null;

function rows(table, pairs) {
  table.replaceChildren(...pairs.map(([k, v]) => {
    const tr = document.createElement("tr");
    for (const text of [k, v]) {
      const td = document.createElement("td");
      td.textContent = text == null ? "-" : String(text);
      tr.append(td);
    }
    return tr;
  }));
}

// Bars of `values` (one per day), scaled to `top`; an optional dashed line at `line`.
function bars(svg, values, labels, top, line, title) {
  const ns = "http://www.w3.org/2000/svg", w = 600, h = 150, pad = 20;
  svg.setAttribute("viewBox", `0 0 ${w} ${h + pad}`);
  const peak = Math.max(top, line || 0, 1e-9), step = (w - 40) / values.length;
  const parts = values.map((v, i) => {
    const rect = document.createElementNS(ns, "rect");
    const height = (v / peak) * h;
    rect.setAttribute("x", 40 + i * step + 1);
    rect.setAttribute("y", h - height);
    rect.setAttribute("width", Math.max(1, step - 2));
    rect.setAttribute("height", height);
    rect.setAttribute("fill", "#3b6fd8");
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${labels[i]}: ${title(v)}`;
    rect.append(tip);
    return rect;
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", 0); axis.setAttribute("y", 12); axis.setAttribute("font-size", 11);
  axis.textContent = title(peak);
  parts.push(axis);
  for (const i of [0, values.length - 1]) {
    const t = document.createElementNS(ns, "text");
    const last = i === values.length - 1;  // anchored at its end: it stays inside the chart
    t.setAttribute("x", last ? w : 40 + i * step); t.setAttribute("y", h + 15);
    t.setAttribute("font-size", 11); t.setAttribute("text-anchor", last ? "end" : "start");
    t.textContent = labels[i];
    parts.push(t);
  }
  if (line) {
    const l = document.createElementNS(ns, "line");
    const y = h - (line / peak) * h;
    for (const [k, v] of [["x1", 40], ["x2", w], ["y1", y], ["y2", y]]) l.setAttribute(k, v);
    l.setAttribute("stroke", "#11823b"); l.setAttribute("stroke-dasharray", "6 4");
    l.setAttribute("id", "predicted-line");
    parts.push(l);
  }
  svg.replaceChildren(...parts);
}

function draw(s) {
  const box = s.box;
  $("name").textContent = `${box.name} (${box.seller_id})`;
  const state = s.seller ? s.seller.state : box.state;
  $("state").textContent = state || "unknown";
  $("state").className = state === "online" || state === "leased" ? "ok" : "bad";
  $("error").textContent = s.coordinator_error || box.error || "";
  rows($("box"), [
    ["agent", box.agent_running ? "running" : "not running"],
    ["tunnel", `${box.interface} (${box.backend}), overlay ${box.address}`],
    ["round trip to the hub", box.rtt_ms == null ? null : `${box.rtt_ms} ms`],
    ["bandwidth to the hub", box.bandwidth_mbps == null ? null : `${box.bandwidth_mbps} Mbit/s`],
    ["last heartbeat", s.seller && s.seller.last_heartbeat
      ? `${Math.round(s.now - s.seller.last_heartbeat)} s ago` : null],
  ]);
  rows($("gpus"), s.gpus.map((g, i) => [`GPU ${i}`, `${g.model} ${g.vram_gb} GB${g.simulated ? " (simulated)" : ""}`]));
  const offer = s.seller && s.seller.offer;
  price = offer ? offer.price_per_gpu_hour : s.price_per_gpu_hour;
  $("price").textContent = "$" + price;
  const up = s.uptime;
  bars($("uptime-chart"), up.map((d) => d.uptime * 100), up.map((d) => day(d.day)), 100, null,
       (v) => `${v.toFixed(1)} %`);
  const e = s.earnings;
  if (!e) return;
  $("released-24h").textContent = money(e.released_24h_micros);
  $("released-7d").textContent = money(e.released_7d_micros);
  $("released-30d").textContent = money(e.released_30d_micros);
  $("released-total").textContent = money(e.released_micros);
  $("pending").textContent = money(e.pending_micros);
  $("rate").textContent = money(e.rate_micros_per_hour);
  $("predicted-day").textContent = money(e.predicted_day_micros);
  $("predicted-month").textContent = money(e.predicted_month_micros);
  const values = e.daily.map((d) => d.released_micros / MICROS);
  bars($("earnings-chart"), values, e.daily.map((d) => day(d.day)), Math.max(...values),
       e.predicted_day_micros / MICROS, (v) => `$${v.toFixed(4)}`);
  const lease = $("lease");
  if (e.current.length) {
    lease.className = "";
    lease.textContent = e.current.map((c) =>
      `lease ${c.lease_id}: ${c.gpus} GPU(s) at $${(c.ask_micros / MICROS).toFixed(2)}/GPU-hour ` +
      `for ${Math.round((s.now - c.since) / 60)} min, accrued ${money(c.accrued_micros)}`).join("\n");
  } else {
    lease.className = "muted";
    lease.textContent = "none";
  }
}

async function refresh() {
  try {
    const response = await fetch("/api/state");
    if (!response.ok) throw new Error((await response.json()).error);
    draw(await response.json());
  } catch (err) {
    $("error").textContent = String(err.message || err);
  }
}

$("price-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const wanted = $("new-price").value.trim();
  if (!wanted || !confirm(`Offer this box at $${wanted} per GPU-hour instead of $${price}?`)) return;
  const response = await fetch("/api/price", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({price: wanted}),
  });
  const body = await response.json();
  $("price-status").textContent = response.ok
    ? `Now offered at $${body.offer.price_per_gpu_hour} per GPU-hour.` : `Not changed: ${body.error}`;
  refresh();
});

refresh();
setInterval(refresh, 5000);
