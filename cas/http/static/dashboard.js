// deltacas operator dashboard: renders the JSON views under /v1/admin/dashboard/ and calls
// the server's existing action endpoints.  No build step, no libraries.  Every piece of
// server data is put in the page with textContent (never as HTML).
"use strict";

(function () {
  const TOKEN_KEY = "deltacas.dashboard.token";
  const VIEWS = ["releases", "deltas", "rollouts", "health"];
  const API = "/v1/admin/dashboard/";
  const SVGNS = "http://www.w3.org/2000/svg";
  let timer = null;
  let current = null;

  // ------------------------------------------------------------------ helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  const nf = new Intl.NumberFormat("en-US");
  function num(n) { return n === null || n === undefined ? "–" : nf.format(n); }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)) + " " + units[i];
  }

  // A byte figure: human text, exact value in data-value and the tooltip.
  function B(n, testid) {
    return h("span", {"data-value": n, "data-testid": testid, title: n === null ? "" : num(n) + " bytes"}, bytes(n));
  }

  function N(n, testid) { return h("span", {"data-value": n, "data-testid": testid}, num(n)); }

  function badge(text) { return h("span", {class: "badge " + text, "data-testid": "badge"}, text); }

  function card(label, value, testid) {
    return h("div", {class: "card", "data-testid": testid}, h("div", {class: "label"}, label),
      h("div", {class: "value"}, value));
  }

  function td(content, cls, attrs) { return h("td", Object.assign({class: cls || null}, attrs || {}), content); }
  function th(text, cls) { return h("th", {class: cls || null}, text); }

  function short(d) { return d ? d.slice(0, 12) : "(compress)"; }

  function banner(kind, text) {
    const el = document.getElementById("banner");
    el.className = kind;
    el.textContent = text;
    el.hidden = false;
  }

  function clearBanner() { document.getElementById("banner").hidden = true; }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body, token) {
    const headers = {"Authorization": "Bearer " + (token || sessionStorage.getItem(TOKEN_KEY) || "")};
    const init = {method, headers, cache: "no-store"};
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    let response;
    try { response = await fetch(path, init); }
    catch (e) { throw new ApiError(0, "network", "cannot reach the server: " + e.message); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(response.status, err.code || "http_" + response.status, err.message || response.statusText);
    }
    return data;
  }

  function describeError(e) {
    const what = e.status === 403 ? "Refused" : e.status === 401 ? "Not signed in" : "Failed";
    return `${what} (${e.status} ${e.code}): ${e.message}`;
  }

  // An action on an existing endpoint, after the operator confirms it.
  async function act(question, method, path, body) {
    if (!window.confirm(question)) return;
    try {
      await api(method, path, body);
      banner("ok", "Done: " + question.replace(/\?$/, ""));
    } catch (e) {
      banner("error", describeError(e));
      if (e.status === 401) { logout("Your token is no longer accepted."); return; }
    }
    await show(current, true);
  }

  const enc = encodeURIComponent;

  // ------------------------------------------------------------------ views

  function releasesView(data) {
    const st = data.stats;
    const out = [h("div", {class: "cards", "data-testid": "store-stats"},
      card("releases", N(st.releases, "stat-releases")),
      card("objects", N(st.objects, "stat-objects")),
      card("logical bytes", B(st.logical_bytes, "stat-logical")),
      card("unique bytes", B(st.unique_referenced_bytes, "stat-unique")),
      card("stored bytes", B(st.stored_bytes, "stat-stored")),
      card("dedup ratio", h("span", {"data-testid": "stat-dedup"}, st.dedup_ratio === null ? "n/a" : st.dedup_ratio + "×")))];
    if (!data.products.length) out.push(h("p", {class: "muted"}, "No products yet: publish a release with `cas publish`."));
    for (const p of data.products) {
      const channelNames = p.channels.map(c => c.channel);
      const listId = "channels-" + p.name;
      out.push(h("h2", {}, "Product ", h("code", {}, p.name)),
        h("datalist", {id: listId}, channelNames.map(c => h("option", {value: c}))),
        h("p", {class: "muted"}, "channels: ",
          p.channels.length ? p.channels.map((c, i) => [i ? ", " : "", `${c.channel} → ${c.release}`,
            c.candidate ? ` (rolling out ${c.candidate})` : ""]) : "none"));
      const rows = p.releases.slice().reverse().map(r => {
        const moves = r.moves.map(to => h("button", {type: "button", "data-testid": `move-${r.version}-${to}`,
          class: to === "deprecated" || to === "draft" ? "danger" : null,
          onclick: () => act(`Move ${p.name} ${r.version} from ${r.status} to ${to}?`, "POST",
            `/v1/products/${enc(p.name)}/releases/${enc(r.version)}/status`,
            {status: to, reason: "dashboard"})}, "→ " + to));
        const input = h("input", {list: listId, size: 8, placeholder: "channel", value: channelNames[0] || "",
          "aria-label": "channel", "data-testid": `point-channel-${r.version}`});
        const point = h("button", {type: "button", "data-testid": `point-${r.version}`, onclick: () => {
          const ch = input.value.trim();
          if (!ch) { banner("error", "Name a channel to point at " + r.version); return; }
          act(`Point channel ${p.name}/${ch} at ${r.version}?`, "PUT",
            `/v1/products/${enc(p.name)}/channels/${enc(ch)}`, {release: r.version});
        }}, "point");
        const history = h("ol", {class: "history"}, r.history.map(e =>
          h("li", {}, `${e.at} ${e.from || "—"} → ${e.to} by ${e.actor}${e.reason ? " (" + e.reason + ")" : ""}`)));
        return h("tr", {"data-testid": `release-${p.name}-${r.version}`, "data-status": r.status},
          td(h("b", {}, r.version)), td([badge(r.status), r.critical ? " critical" : ""]),
          td(N(r.files, "files"), "num"), td(B(r.logical_bytes, "logical"), "num"),
          td(B(r.unique_bytes, "unique"), "num"), td(B(r.new_bytes, "new"), "num"),
          td(B(r.deduplicated_bytes, "saved"), "num"),
          td([r.channels.join(", "), r.rollouts.length ? ` (rollout on ${r.rollouts.join(", ")})` : ""]),
          td(history), td(h("div", {class: "actions"}, moves, input, point)));
      });
      out.push(h("table", {"data-testid": `releases-${p.name}`},
        h("thead", {}, h("tr", {}, th("version"), th("status"), th("files", "num"), th("logical", "num"),
          th("unique", "num"), th("new in store", "num"), th("deduplicated", "num"), th("channels"),
          th("lifecycle (when, who, why)"), th("actions"))),
        h("tbody", {}, rows)));
    }
    return out;
  }

  function deltasView(data) {
    const q = data.queue;
    const out = [h("div", {class: "cards", "data-testid": "delta-queue"},
      ...["queued", "running", "done", "failed"].map(k => card(k + " builds", N(q.counts[k], "queue-" + k))))];
    if (q.running.length || q.failed.length) {
      out.push(h("h3", {}, "Builds running or failed"), h("table", {"data-testid": "delta-jobs"},
        h("thead", {}, h("tr", {}, th("state"), th("base"), th("target"), th("attempts", "num"), th("when"), th("error"))),
        h("tbody", {}, [...q.running, ...q.failed].map(j => h("tr", {},
          td(badge(j.state)), td(h("code", {}, short(j.base))), td(h("code", {}, short(j.target))),
          td(num(j.attempts), "num"), td(j.finished || j.started || j.queued), td(j.error || "", "error"))))));
    }
    for (const p of data.products) {
      out.push(h("h2", {}, "Product ", h("code", {}, p.name)));
      const rows = [];
      for (const r of p.releases.slice().reverse()) {
        if (!r.bases.length) {
          rows.push(h("tr", {"data-testid": `delta-${p.name}-${r.version}-none`}, td(h("b", {}, r.version)),
            td(badge(r.status)), h("td", {colspan: 8, class: "muted"}, "no deltas planned (built when a release reaches testing or released)")));
          continue;
        }
        for (const b of r.bases) {
          const kinds = Object.entries(b.bytes.by_kind).sort().map(([k, v]) =>
            h("div", {"data-testid": "kind-" + k, "data-value": v}, `${k}: ${bytes(v)} (${b.files_by_kind[k]} file${b.files_by_kind[k] === 1 ? "" : "s"})`));
          const jobs = Object.entries(b.jobs).filter(([, v]) => v).map(([k, v]) => h("div", {}, badge(k), " ", v));
          rows.push(h("tr", {"data-testid": `delta-${p.name}-${r.version}-from-${b.from}`},
            td(h("b", {}, r.version)), td(badge(r.status)), td(b.from),
            td(b.complete ? "complete" : "building", null, {"data-testid": "complete"}), td(jobs),
            td(B(b.bytes.full, "full"), "num"), td(B(b.bytes.recipes, "download"), "num"), td(kinds),
            td([B(b.savings_bytes, "savings"), h("div", {"data-testid": "savings-percent"}, b.savings_percent + " %")], "num"),
            td(b.failed.map(f => h("div", {class: "error", "data-testid": "failed-build"},
              `${f.path || short(f.target)} (${f.kind}${f.base ? " from " + short(f.base) : ""}): ${f.error || "failed"}`)))));
        }
      }
      out.push(h("table", {"data-testid": `deltas-${p.name}`},
        h("thead", {}, h("tr", {}, th("release"), th("status"), th("from base"), th("state"), th("builds"),
          th("full download", "num"), th("delta download", "num"), th("by recipe kind"), th("saving", "num"), th("failed builds"))),
        h("tbody", {}, rows)));
    }
    return out;
  }

  // Reports per time bucket, stacked by outcome, with the stage changes marked: inline SVG.
  function chart(tl) {
    const W = 720, H = 220, L = 44, R = 12, T = 18, Bm = 34;
    const pw = W - L - R, ph = H - T - Bm;
    const n = tl.buckets.length;
    const max = Math.max(1, ...tl.buckets.map(b => b.success + b.failed + b.rolled_back));
    const bw = pw / Math.max(n, 1);
    const colors = {success: "#43a047", failed: "#e53935", rolled_back: "#fb8c00"};
    const svg = s("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "reports per " + tl.bucket_seconds + " s over time", "data-testid": "reports-chart"});
    svg.append(s("line", {x1: L, y1: T + ph, x2: L + pw, y2: T + ph, stroke: "#888"}));
    svg.append(s("line", {x1: L, y1: T, x2: L, y2: T + ph, stroke: "#888"}));
    for (const v of [0, Math.ceil(max / 2), max]) {
      const y = T + ph - (v / max) * ph;
      svg.append(s("text", {x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#555"}, v));
      svg.append(s("line", {x1: L, y1: y, x2: L + pw, y2: y, stroke: "#eee"}));
    }
    tl.buckets.forEach((b, i) => {
      let y = T + ph;
      for (const k of ["success", "failed", "rolled_back"]) {
        if (!b[k]) continue;
        const hgt = (b[k] / max) * ph;
        y -= hgt;
        const rect = s("rect", {x: L + i * bw + 1, y, width: Math.max(bw - 2, 1), height: hgt, fill: colors[k],
          "data-outcome": k, "data-count": b[k], "data-bucket": b.start});
        rect.append(s("title", {}, `${b.start}: ${b[k]} ${k.replace("_", " ")} (stage ${b.percent}%)`));
        svg.append(rect);
      }
    });
    const span = Math.max(tl.span_seconds, 1);
    for (const m of tl.marks) {
      if (!["started", "stage", "finished", "aborted", "halted", "flipped_back"].includes(m.event)) continue;
      const x = L + (m.offset / span) * pw;
      svg.append(s("line", {x1: x, y1: T - 4, x2: x, y2: T + ph, stroke: m.event === "stage" || m.event === "started" ? "#1f5fbf" : "#555",
        "stroke-dasharray": "4 3"}));
      svg.append(s("text", {x: x + 3, y: T + 6, "font-size": 10, fill: "#1f5fbf"},
        m.event === "stage" || m.event === "started" ? m.percent + "%" : m.event));
    }
    const labels = n <= 1 ? [0] : [0, Math.floor((n - 1) / 2), n - 1];
    for (const i of labels) {
      svg.append(s("text", {x: L + i * bw + bw / 2, y: H - 12, "text-anchor": "middle", "font-size": 10, fill: "#555"},
        tl.buckets[i].start.replace("T", " ").replace(/:00Z$/, "Z")));
    }
    const legend = h("div", {class: "legend"}, ["success", "failed", "rolled_back"].map(k =>
      h("span", {}, h("i", {class: "swatch-" + k}), k.replace("_", " "))),
      h("span", {class: "muted"}, `one bar per ${tl.bucket_seconds >= 3600 ? tl.bucket_seconds / 3600 + " h" : tl.bucket_seconds / 60 + " min"}`));
    return h("div", {class: "chart"}, svg, legend);
  }

  function rolloutBlock(p, c) {
    const r = c.rollout;
    if (!r) return h("p", {class: "muted"}, "No rollout on this channel yet (`cas rollout start`).");
    const stageText = r.strategy === "batches" ? `${r.batches.admitted}/${r.batches.clients} clients admitted`
      : r.strategy === "staged" ? `stage ${r.stage + 1}/${r.stages.length} (${r.stages.join(" → ")} %)` : "all at once";
    const base = `/v1/products/${enc(p.name)}/channels/${enc(c.channel)}/rollout/`;
    const verbs = {promote: "Promote", halt: "Halt", resume: "Resume", abort: "Abort", "flip-back": "Flip back"};
    const questions = {
      promote: `Promote the rollout of ${r.release} on ${p.name}/${c.channel} to the next stage (skipping the health gate)?`,
      halt: `Halt the rollout of ${r.release} on ${p.name}/${c.channel}?`,
      resume: `Resume the rollout of ${r.release} on ${p.name}/${c.channel}?`,
      abort: `Abort the rollout of ${r.release} on ${p.name}/${c.channel} and send its cohort back to ${r.previous}?`,
      "flip-back": `Flip ${p.name}/${c.channel} back to ${r.previous}?`};
    const buttons = r.actions.map(a => h("button", {type: "button", "data-testid": `rollout-${a}`,
      class: a === "abort" || a === "flip-back" ? "danger" : null,
      onclick: () => act(questions[a], "POST", base + a, {reason: "dashboard"})}, verbs[a]));
    const hl = r.health;
    return h("div", {"data-testid": `rollout-${p.name}-${c.channel}`, "data-state": r.state, "data-percent": r.percent},
      h("p", {}, `${r.strategy} rollout of `, h("b", {}, r.release), ` (from ${r.previous}) `, badge(r.state), " ",
        h("span", {"data-testid": "rollout-stage"}, stageText), " — ",
        h("b", {"data-testid": "rollout-percent"}, r.percent + "%"), " ",
        h("span", {class: "progress"}, h("div", {style: null, "data-w": r.percent}))),
      h("p", {class: "muted"}, `started ${r.started} by ${r.actor}; stage started ${r.stage_started}, next check ${r.next_check}; ` +
        `current stage: ${hl.reports} reports, ${hl.failed} failed, ${hl.rolled_back} rolled back ` +
        `(rate ${hl.failure_rate || "–"}, max ${r.max_failure_rate}, min reports ${r.min_reports})`,
        r.reason ? ` — ${r.reason}` : ""),
      h("div", {class: "actions"}, buttons.length ? buttons : h("span", {class: "muted"}, "no actions in this state")),
      h("h3", {}, "Reports per stage"),
      h("table", {"data-testid": "stage-reports"},
        h("thead", {}, h("tr", {}, th("stage"), th("percent", "num"), th("from"), th("until"), th("success", "num"),
          th("failed", "num"), th("rolled back", "num"))),
        h("tbody", {}, r.stage_reports.map(st => h("tr", {"data-testid": "stage-" + st.stage},
          td(st.stage + 1), td(st.percent + "%", "num"), td(st.started), td(st.ended || "now"),
          td(N(st.success, "success"), "num"), td(N(st.failed, "failed"), "num"), td(N(st.rolled_back, "rolled_back"), "num"))))),
      h("h3", {}, "Reports over time"), chart(r.timeline),
      h("details", {}, h("summary", {}, `events (${r.events.length})`),
        h("ol", {class: "history"}, r.events.map(e =>
          h("li", {}, `${e.at} ${e.event} at ${e.percent}% by ${e.actor}${e.reason ? " — " + e.reason : ""}`)))));
  }

  // The form that starts a rollout on a channel without one running: strategy, stages and
  // the health gate, sent to POST .../rollout after the same confirmation as promote/halt.
  // The server checks every field (bad stages, rates or releases come back as a banner).
  function startForm(p, c) {
    const id = `${p.name}-${c.channel}`;
    const field = (label, el) => h("label", {class: "field"}, h("span", {}, label), el);
    const candidates = p.releases.filter(r => r.version !== c.release && r.status !== "draft" && r.status !== "deprecated");
    const release = h("select", {"data-testid": `start-release-${id}`, "aria-label": "release"},
      candidates.slice().reverse().map(r => h("option", {value: r.version}, `${r.version} (${r.status})`)));
    const strategy = h("select", {"data-testid": `start-strategy-${id}`, "aria-label": "strategy"},
      ["staged", "all-at-once", "batches"].map(v => h("option", {value: v}, v)));
    const stages = h("input", {size: 12, value: "1,5,25,100", "data-testid": `start-stages-${id}`, "aria-label": "stages"});
    const duration = h("input", {size: 5, value: "1h", "data-testid": `start-duration-${id}`, "aria-label": "stage duration"});
    const rate = h("input", {size: 5, value: "0.05", "data-testid": `start-rate-${id}`, "aria-label": "max failure rate"});
    const minReports = h("input", {type: "number", min: 0, size: 5, value: 20, "data-testid": `start-min-reports-${id}`,
      "aria-label": "min reports"});
    const autoAbort = h("input", {type: "checkbox", "data-testid": `start-auto-abort-${id}`, "aria-label": "auto abort"});
    const clients = h("textarea", {rows: 3, cols: 30, placeholder: "one client id a line",
      "data-testid": `start-clients-${id}`, "aria-label": "client ids"});
    const batchSize = h("input", {type: "number", min: 1, size: 4, value: 10, "data-testid": `start-batch-size-${id}`,
      "aria-label": "batch size"});
    const maxFailures = h("input", {type: "number", min: 0, size: 4, value: 1, "data-testid": `start-max-failures-${id}`,
      "aria-label": "max failures"});
    const staged = field("stages (%)", stages);
    const batches = h("span", {class: "batches"}, field("clients", clients), field("batch size", batchSize),
      field("max failures", maxFailures));
    const gate = [field("stage duration", duration), field("max failure rate", rate), field("min reports", minReports)];
    function sync() {
      staged.hidden = strategy.value !== "staged";
      batches.hidden = strategy.value !== "batches";
      gate[1].hidden = gate[2].hidden = strategy.value === "batches";
    }
    strategy.addEventListener("change", sync);
    sync();
    function submit(event) {
      event.preventDefault();
      if (!release.value) { banner("error", `No release to roll out on ${p.name}/${c.channel}`); return; }
      const asNumber = v => /^\d+$/.test(v.trim()) ? Number(v.trim()) : v;
      const body = {release: release.value, strategy: strategy.value, stage_duration: duration.value.trim(),
        auto_abort: autoAbort.checked, reason: "dashboard"};
      let what;
      if (strategy.value === "batches") {
        body.clients = clients.value.split("\n").map(l => l.trim()).filter(l => l && !l.startsWith("#"));
        body.batch_size = asNumber(batchSize.value);
        body.max_failures = asNumber(maxFailures.value);
        what = `in batches of ${batchSize.value} over ${body.clients.length} clients (interval ${body.stage_duration}, ` +
          `halt after ${maxFailures.value} failing)`;
      } else {
        body.max_failure_rate = rate.value.trim();
        body.min_reports = asNumber(minReports.value);
        if (strategy.value === "staged") {
          const text = stages.value.replace(/\s+/g, "");
          body.stages = /^\d+(,\d+)*$/.test(text) ? text.split(",").map(Number) : text;
          what = `in stages ${text} %`;
        } else {
          what = "all at once";
        }
        what += ` (stage duration ${body.stage_duration}; gate: max failure rate ${body.max_failure_rate}, ` +
          `min reports ${minReports.value}${autoAbort.checked ? ", auto-abort" : ""})`;
      }
      act(`Start rolling out ${release.value} on ${p.name}/${c.channel} (now ${c.release}) ${what}?`, "POST",
        `/v1/products/${enc(p.name)}/channels/${enc(c.channel)}/rollout`, body);
    }
    return h("form", {class: "start-rollout", "data-testid": `start-rollout-${id}`, onsubmit: submit},
      h("h3", {}, "Start a rollout"),
      h("div", {class: "actions"}, field("release", release), field("strategy", strategy), staged, batches, ...gate,
        field("auto-abort", autoAbort),
        h("button", {type: "submit", "data-testid": `start-submit-${id}`}, "Start rollout…")));
  }

  function rolloutsView(data) {
    const out = [];
    if (!data.products.length) out.push(h("p", {class: "muted"}, "No products yet."));
    for (const p of data.products) {
      out.push(h("h2", {}, "Product ", h("code", {}, p.name)));
      if (!p.channels.length) out.push(h("p", {class: "muted"}, "No channels (`cas channel set`)."));
      for (const c of p.channels) {
        out.push(h("div", {class: "panel", "data-testid": `channel-${p.name}-${c.channel}`},
          h("h3", {}, `${c.channel}: `, h("span", {"data-testid": "channel-release"}, c.release),
            c.candidate ? h("span", {}, " → candidate ", h("b", {"data-testid": "channel-candidate"}, c.candidate)) : "",
            h("span", {class: "muted"}, `  sequence ${c.sequence}, min status ${c.min_status}, updated ${c.updated}`)),
          rolloutBlock(p, c),
          c.rollout && ["running", "halted"].includes(c.rollout.state) ? null : startForm(p, c)));
      }
    }
    return out;
  }

  function healthView(data) {
    const st = data.store, f = data.fsck, rq = data.requests;
    const out = [h("h2", {}, "Store"), h("div", {class: "cards", "data-testid": "health-store"},
      card("objects", N(st.objects, "health-objects")), card("stored bytes", B(st.stored_bytes, "health-stored")),
      card("logical bytes", B(st.logical_bytes, "health-logical")),
      card("unique bytes", B(st.unique_referenced_bytes, "health-unique")),
      card("dedup ratio", st.dedup_ratio === null ? "n/a" : st.dedup_ratio + "×"),
      card("quarantined", N(st.quarantined, "health-quarantined")), card("temp files", N(st.temp_files)),
      card("uploads in progress", N(st.uploads_in_progress)))];
    out.push(h("h2", {}, "Last fsck"));
    if (!f) out.push(h("p", {"data-testid": "fsck", "data-ok": "never"}, "never run: `cas fsck` records its result here"));
    else if (f.error) out.push(h("p", {class: "error", "data-testid": "fsck", "data-ok": "false"}, f.error));
    else out.push(h("div", {class: "cards", "data-testid": "fsck", "data-ok": String(f.ok)},
      card("result", h("span", {"data-testid": "fsck-result"}, f.ok ? "OK" : "PROBLEMS")),
      card("finished", h("span", {"data-testid": "fsck-finished"}, f.finished)),
      card("checked", N(f.checked, "fsck-checked")), card("bytes", B(f.bytes)),
      card("corrupt", N(f.corrupt_count, "fsck-corrupt")), card("missing", N(f.missing_count, "fsck-missing")),
      card("took", f.duration_seconds + " s")));
    out.push(h("h2", {}, "Garbage collection"),
      h("p", {"data-testid": "gc"}, data.gc.message),
      data.gc.implemented && data.gc.last_run && data.gc.last_run.result && typeof data.gc.last_run.result === "object"
        ? h("div", {class: "cards", "data-testid": "gc-last"}, Object.entries(data.gc.last_run.result)
            .filter(([, v]) => typeof v === "number").sort().map(([k, v]) => card(k.replace(/_/g, " "), num(v))))
        : null,
      data.gc.implemented ? h("p", {class: "muted"}, `${data.gc.tombstones} tombstones`) : null);
    out.push(h("h2", {}, "Queues"), h("div", {class: "cards"},
      ...Object.entries(data.deltas).map(([k, v]) => card("delta builds " + k, N(v, "health-deltas-" + k))),
      ...Object.entries(data.webhooks).map(([k, v]) => card("webhooks " + k, N(v)))));
    out.push(h("h2", {}, "Requests (this server process, same counters as /metrics)"));
    if (!rq) { out.push(h("p", {class: "muted"}, "not available")); return out; }
    const rate = rq.rate;
    out.push(h("div", {class: "cards", "data-testid": "requests"},
      card("requests", N(rq.total, "req-total")), card("4xx", N(rq.client_errors, "req-4xx")),
      card("5xx", N(rq.server_errors, "req-5xx")),
      card("error ratio", h("span", {"data-testid": "req-error-ratio"}, rq.error_ratio === null ? "–" : (100 * rq.error_ratio).toFixed(2) + " %")),
      card("average", rq.average_per_second + " req/s"),
      card(rate ? `last ${rate.window_seconds} s` : "rate", h("span", {"data-testid": "req-rate"},
        rate ? `${rate.requests_per_second} req/s, ${rate.client_errors_per_second} 4xx/s, ${rate.server_errors_per_second} 5xx/s`
          : "needs a second sample (refreshes every 5 s)"))));
    out.push(h("table", {"data-testid": "endpoints"},
      h("thead", {}, h("tr", {}, th("endpoint"), th("requests", "num"), th("4xx", "num"), th("5xx", "num"), th("req/s", "num"), th("statuses"))),
      h("tbody", {}, rq.endpoints.filter(e => e.requests > 0).map(e => h("tr", {"data-testid": "endpoint-" + e.endpoint},
        td(h("code", {}, e.endpoint)), td(num(e.requests), "num"), td(num(e["4xx"]), "num"), td(num(e["5xx"]), "num"),
        td(e.requests_per_second === undefined ? "–" : String(e.requests_per_second), "num"),
        td(Object.entries(e.statuses).sort().map(([k, v]) => `${k}: ${v}`).join(", ")))))));
    return out;
  }

  const RENDER = {
    releases: ["overview", releasesView], deltas: ["deltas", deltasView],
    rollouts: ["channels", rolloutsView], health: ["health", healthView],
  };

  // ------------------------------------------------------------------ shell

  async function show(view, keepBanner) {
    if (!VIEWS.includes(view)) view = "releases";
    current = view;
    if (!keepBanner) clearBanner();
    if (timer) { clearInterval(timer); timer = null; }
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
    if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
    const main = document.getElementById("view");
    main.setAttribute("aria-busy", "true");
    const [endpoint, render] = RENDER[view];
    try {
      const data = await api("GET", API + endpoint);
      if (current !== view) return;
      document.getElementById("who").textContent = `signed in with ${data.scope === "admin" ? "an" : "a"} ${data.scope} token`;
      main.replaceChildren(h("p", {class: "muted"}, `generated ${data.generated}`), ...render(data));
      for (const bar of main.querySelectorAll(".progress > div")) bar.style.width = bar.dataset.w + "%";
      main.dataset.loaded = view;
      main.dataset.generated = data.generated;
      main.dataset.renders = String(Number(main.dataset.renders || 0) + 1);
    } catch (e) {
      if (e.status === 401) { logout(describeError(e)); return; }
      banner("error", describeError(e));
    } finally {
      main.removeAttribute("aria-busy");
    }
    if (view === "health" && current === "health") {
      timer = setInterval(() => { if (current === "health") show("health", true); }, 5000);
    }
  }

  function signedIn(on) {
    document.getElementById("login").hidden = on;
    document.getElementById("view").hidden = !on;
    document.getElementById("tabs").hidden = !on;
    document.getElementById("logout").hidden = !on;
    document.getElementById("refresh").hidden = !on;
    if (!on) document.getElementById("who").textContent = "";
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer) { clearInterval(timer); timer = null; }
    current = null;
    document.getElementById("view").replaceChildren();
    signedIn(false);
    document.getElementById("login-error").textContent = message || "";
  }

  async function login(event) {
    event.preventDefault();
    const input = document.getElementById("token");
    const token = input.value.trim();
    const error = document.getElementById("login-error");
    error.textContent = "";
    try {
      await api("GET", API + "overview", undefined, token);
    } catch (e) {
      error.textContent = describeError(e);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    signedIn(true);
    show((location.hash || "#releases").slice(1));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("login-form").addEventListener("submit", login);
    document.getElementById("logout").addEventListener("click", () => logout("Signed out."));
    document.getElementById("refresh").addEventListener("click", () => show(current || "releases"));
    for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
    window.addEventListener("hashchange", () => {
      if (sessionStorage.getItem(TOKEN_KEY)) show(location.hash.slice(1));
    });
    if (sessionStorage.getItem(TOKEN_KEY)) {
      signedIn(true);
      show((location.hash || "#releases").slice(1));
    } else {
      signedIn(false);
    }
  });
})();
