// The dashboard: fetches /api/status every refresh_seconds and draws it. Read-only.
// Every text from the document goes in through textContent, never as markup.
"use strict";

const STATES = ["pending", "dispatching", "dialing", "completed", "failed", "invalid",
  "suppressed", "duplicate", "cancelled"];
const PARKED_SHOWN = 5;
const REASONS_SHOWN = 12;
const SVG = "http://www.w3.org/2000/svg";

let refreshSeconds = 5;
let lastGood = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

const number = (n) => Number(n).toLocaleString("en-GB");
const rate = (r) => (r >= 10 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r.toFixed(2));

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toISOString().slice(11, 19) + " UTC";
}

function when(iso) {
  if (!iso) return "";
  return new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function age(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}

function figure(name, text, extraClass) {
  return [el("dt", {}, name), el("dd", { "data-figure": name.replace(/ /g, "_"), class: extraClass || "" }, text)];
}

// --- account --------------------------------------------------------------------------------

function drawAccount(doc) {
  const a = doc.account;
  const pacing = a.pacing;
  let aculab;
  if (a.aculab_reachable === null) aculab = [el("span", { class: "dot unknown" }), "Aculab: no daemon to ask"];
  else if (a.aculab_reachable) aculab = [el("span", { class: "dot ok" }), "Aculab reachable"];
  else {
    const down = a.daemons.filter((d) => !d.aculab_reachable);
    aculab = [el("span", { class: "dot bad" }),
      `Aculab unreachable from ${down.length} of ${a.daemons.length} daemon${a.daemons.length === 1 ? "" : "s"}`
      + (down[0] && down[0].aculab_error ? `: ${down[0].aculab_error}` : "")];
  }
  const atCap = pacing.granted > 0 && pacing.rate >= 0.9 * pacing.cap;
  document.getElementById("account").replaceChildren(
    el("span", { class: "item", "data-field": "account-pacing" },
      "account pacing ", el("b", { class: atCap ? "at-cap" : "" }, `${rate(pacing.rate)}/s`),
      ` of ${rate(pacing.cap)}/s (last ${pacing.window_seconds}s)`),
    el("span", { class: "item", "data-field": "aculab" }, ...aculab),
    el("span", { class: "item", "data-field": "daemons" },
      "daemons alive ", el("b", {}, number(a.daemons_alive))),
  );
}

// --- one campaign ---------------------------------------------------------------------------

function progress(c) {
  const total = c.contacts_total || 0;
  const bar = el("div", { class: "progress", role: "img", "aria-label": "contacts by state" });
  const legend = el("ul", { class: "legend" });
  for (const state of STATES) {
    const n = c.contacts[state] || 0;
    if (!n) continue;
    const part = el("span", { class: `s-${state}`, title: `${state}: ${number(n)}` });
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
    legend.append(el("li", { "data-state": state }, el("i", { class: `s-${state}` }), `${state} `, el("b", {}, number(n))));
  }
  return [bar, legend];
}

function chart(c) {
  const minutes = c.calls_per_minute;
  const width = 900, height = 80, top = 4, bottom = 1, left = 0;
  const peak = Math.max(0, ...minutes.map((m) => m.calls));
  const most = Math.max(1, peak);
  const step = (width - left) / minutes.length;
  const plot = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "calls started per minute over the last hour" });
  minutes.forEach((m, i) => {
    const h = ((height - top - bottom) * m.calls) / most;
    const bar = svg("rect", { class: i === minutes.length - 1 ? "bar now" : "bar",
      x: left + i * step + 1, y: height - bottom - h, width: Math.max(1, step - 2), height: h });
    const tip = svg("title");
    tip.textContent = `${when(m.minute)}: ${number(m.calls)} calls`;
    bar.append(tip);
    plot.append(bar);
  });
  // Labels in HTML, under the chart: the SVG stretches to the card's width.
  return el("figure", {}, plot,
    el("div", { class: "axis-labels" }, el("span", {}, "−60 min"), el("span", {}, `peak ${number(peak)}/min`), el("span", {}, "now")),
    el("figcaption", {}, "calls started per minute, last hour: ",
      el("b", { "data-figure": "calls_last_hour" }, number(c.calls_last_hour))));
}

function figures(c) {
  const out = [];
  out.push(...figure("calls started", number(c.calls_started)));
  if (c.pacing) {
    const p = c.pacing;
    const atCap = (b) => b.granted > 0 && b.rate >= 0.9 * b.cap;
    out.push(...figure("calls/s",
      `${rate(p.campaign.rate)}/s of ${rate(p.campaign.cap)}/s campaign · account ${rate(p.account.rate)}/s of ${rate(p.account.cap)}/s`,
      atCap(p.campaign) || atCap(p.account) ? "at-cap" : ""));
  }
  if (c.concurrency) {
    const k = c.concurrency;
    out.push(...figure("concurrency",
      `${number(k.open_calls)} calls + ${number(k.dispatching)} dispatching, cap ${number(k.cap)}`,
      k.at_cap ? "at-cap" : ""));
  }
  out.push(...figure("ETA", c.eta.finish_at ? `${c.eta.text} → ${when(c.eta.finish_at)}` : c.eta.text));
  if (c.calling_window_now) out.push(...figure("calling window", c.calling_window_now.text));
  out.push(...figure("window", c.window.text));
  out.push(...figure("batches", `${number(c.batches_in_flight)} in flight, ${number(c.parked_batches.length)} parked, ${number(c.released_batches)} released`));
  return el("dl", { class: "figures" }, ...out);
}

function outcomes(c) {
  const entries = Object.entries(c.outcomes).sort((a, b) => b[1] - a[1]);
  if (!entries.length) return el("p", { class: "reason" }, "no calls yet");
  const most = Math.max(...entries.map((e) => e[1]));
  const table = el("table", { class: "outcomes" });
  for (const [cause, n] of entries) {
    const bar = el("div", { class: "hbar" });
    bar.style.width = `${(100 * n) / most}%`;
    table.append(el("tr", { "data-cause": cause }, el("td", {}, cause), el("td", { class: "n" }, number(n)),
      el("td", { class: "barcell" }, bar)));
  }
  return table;
}

function reasons(c) {
  if (!c.why_text || !c.why_text.length) return null;
  const shown = c.why_text.slice(0, REASONS_SHOWN);
  const list = el("ul", { class: "why" }, ...shown.map((line) => el("li", {}, line.trim())));
  if (c.why_text.length > shown.length) list.append(el("li", {}, `… ${c.why_text.length - shown.length} more lines: campaign why ${c.name}`));
  return [el("h3", {}, "why (campaign why)"), list];
}

function parked(c) {
  if (!c.parked_batches.length) return null;
  const list = el("ul", { class: "parked" });
  for (const b of c.parked_batches.slice(0, PARKED_SHOWN)) {
    list.append(el("li", { "data-batch": b.id },
      `batch ${b.id}: ${number(b.contacts)} contact${b.contacts === 1 ? "" : "s"}, age ${age(b.age_seconds)}, `
      + `${b.in_doubt ? "in doubt" : "not in doubt"}: ${b.reason || "no reason recorded"}`));
  }
  if (c.parked_batches.length > PARKED_SHOWN) list.append(el("li", {}, `… and ${c.parked_batches.length - PARKED_SHOWN} more: campaign batches --parked`));
  return [el("h3", {}, `parked batches (${c.parked_batches.length}): campaign resolve BATCH_ID`), list];
}

function card(c) {
  const [bar, legend] = progress(c);
  const node = el("article", { class: "card", "data-campaign": c.name },
    el("h2", {}, el("span", { "data-field": "name" }, c.name), el("span", { class: `badge ${c.state}`, "data-field": "state" }, c.state)),
    c.state_reason ? el("p", { class: "reason" }, c.state_reason) : null,
    el("p", { class: "reason" }, `${number(c.contacts_total)} contacts`),
    bar, legend,
    chart(c), figures(c),
    el("h3", {}, "outcomes by cause"), outcomes(c),
  );
  for (const part of [reasons(c), parked(c)]) if (part) node.append(...part);
  return node;
}

// --- refresh --------------------------------------------------------------------------------

function draw(doc) {
  drawAccount(doc);
  const main = document.getElementById("campaigns");
  if (!doc.campaigns.length) {
    main.replaceChildren(el("p", { class: "empty" }, "no campaigns yet: campaign create NAME --service SERVICE"));
  } else {
    main.replaceChildren(...doc.campaigns.map(card));
  }
  const fresh = document.getElementById("freshness");
  fresh.className = "";
  fresh.textContent = `as of ${clock(doc.as_of)} · every ${doc.refresh_seconds}s`;
}

function showProblem(text) {
  const fresh = document.getElementById("freshness");
  fresh.className = "stale";
  fresh.textContent = lastGood ? `${text}; showing ${clock(lastGood.as_of)}` : text;
}

async function refresh() {
  try {
    const response = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
    const doc = await response.json();
    if (!response.ok) {
      showProblem(doc.error || `HTTP ${response.status}`);
    } else {
      lastGood = doc;
      refreshSeconds = doc.refresh_seconds || refreshSeconds;
      draw(doc);
    }
  } catch (err) {
    showProblem(`cannot reach the dashboard (${err.message})`);
  }
  window.setTimeout(refresh, refreshSeconds * 1000);
}

refresh();
