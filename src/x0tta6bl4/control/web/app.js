// The live topology page of the x0tta6bl4 control plane: no build step, no framework,
// only this file and the vendored cytoscape. Every second it reads /v1/topology (with the
// chosen path) and /v1/events with the user's API key and applies the difference to the
// graph: elements are added, updated and removed in place, and the layout only runs
// when a node or link appears that was never seen, so nothing jumps when a node dies.
//
// The key comes from the URL fragment (#key=..., which browsers never send to a server)
// or a form, lives in sessionStorage (this tab only) and travels only in the
// Authorization header. Everything from the API is shown with textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "x0t.apiKey";
  // Twice a second: a node's neighbours report its death within about 0.7 s of a kill,
  // and the page should show it well within 2 s.
  const POLL_MS = 500;
  const REQUEST_TIMEOUT_MS = 4000;
  const EVENTS_PER_POLL = 50;
  const MAX_EVENTS_SHOWN = 200;
  const BASE_COST = 96; // routing: the cost of a perfect link
  const INFINITY = 0xffff; // routing: unreachable
  const MAX_FIT_ZOOM = 1.4;
  const DETAILS_EVERY = 4; // polls

  const byId = (id) => document.getElementById(id);
  const ui = {
    graph: byId("graph"),
    status: byId("status"),
    from: byId("path-from"),
    to: byId("path-to"),
    pathClear: byId("path-clear"),
    pathText: byId("path-text"),
    relayout: byId("relayout"),
    forget: byId("forget-key"),
    details: byId("details"),
    events: byId("events"),
    login: byId("login"),
    loginForm: byId("login-form"),
    loginKey: byId("login-key"),
    loginError: byId("login-error"),
  };

  const state = {
    key: null,
    cy: null,
    timer: null,
    polling: false,
    inFlight: false,
    again: false,
    seenNodes: new Set(),
    seenLinks: new Set(),
    laidOut: false, // a layout with links has run (later ones are incremental)
    topology: null,
    selected: null,
    lastEventId: 0,
    updates: 0,
  };

  class AuthError extends Error {}

  // -- the API key ------------------------------------------------------------------------

  function keyFromFragment() {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const key = params.get("key");
    if (key) {
      sessionStorage.setItem(KEY_STORAGE, key);
      // Out of the address bar and history: a fragment is not sent, but it is visible.
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function askForKey(message) {
    stopPolling();
    ui.loginError.textContent = message || "";
    ui.loginError.hidden = !message;
    ui.login.hidden = false;
    ui.loginKey.value = "";
    ui.loginKey.focus();
  }

  function forgetKey(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    setStatus("signed out", false);
    askForKey(message);
  }

  // -- the API ----------------------------------------------------------------------------

  async function getJSON(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const url = new URL("../v1/" + path, window.location.href);
      const answer = await fetch(url, {
        headers: { Authorization: "Bearer " + state.key, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        signal: controller.signal,
      });
      if (answer.status === 401 || answer.status === 403) {
        let detail = "";
        try {
          detail = (await answer.json()).detail || "";
        } catch (_) {
          detail = "";
        }
        throw new AuthError(`the key was refused (HTTP ${answer.status}) ${detail}`.trim());
      }
      if (!answer.ok) {
        throw new Error(`${url.pathname}: HTTP ${answer.status}`);
      }
      return await answer.json();
    } finally {
      clearTimeout(timer);
    }
  }

  // -- polling ----------------------------------------------------------------------------

  function startPolling() {
    if (state.polling) return;
    state.polling = true;
    poll();
  }

  function stopPolling() {
    state.polling = false;
    clearTimeout(state.timer);
    state.timer = null;
  }

  async function poll() {
    if (state.inFlight) {
      state.again = true; // one poll at a time; this one asks again when it is done
      return;
    }
    state.inFlight = true;
    const started = performance.now();
    try {
      const from = ui.from.value;
      const to = ui.to.value;
      const query = from && to ? `?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}` : "";
      const [topology, events] = await Promise.all([
        getJSON("topology" + query),
        getJSON(`events?limit=${EVENTS_PER_POLL}`),
      ]);
      renderTopology(topology);
      renderEvents(events.events);
      // The open node's details every few updates (certificates and versions change
      // rarely; its links in the table come from this topology).
      if (state.selected && state.updates % DETAILS_EVERY === 0) select(state.selected);
      state.updates += 1;
      const down = topology.nodes.filter((n) => nodeState(n) !== "up").length;
      setStatus(
        `${topology.nodes.length} nodes, ${topology.links.length} links` +
          (down ? `, ${down} not up` : "") +
          ` · updated ${clock(topology.generated_at)}`,
        false,
      );
    } catch (err) {
      if (err instanceof AuthError) {
        state.inFlight = false;
        forgetKey(err.message);
        return;
      }
      setStatus(`cannot reach the control plane: ${err.message || err}`, true);
    }
    state.inFlight = false;
    if (state.polling) {
      const spent = performance.now() - started;
      state.timer = setTimeout(poll, state.again ? 0 : Math.max(100, POLL_MS - spent));
      state.again = false;
    }
  }

  function setStatus(text, isError) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", isError);
  }

  // -- the graph --------------------------------------------------------------------------

  function nodeState(n) {
    if (n.status === "revoked") return "revoked";
    if (n.down) return "down";
    if (!n.online) return "offline";
    return "up";
  }

  function linkQuality(link) {
    if (!link.up || link.cost >= INFINITY) return "down";
    if (link.loss >= 0.1 || link.cost > 4 * BASE_COST) return "poor";
    if (link.loss >= 0.02 || link.cost > 2 * BASE_COST) return "fair";
    return "good";
  }

  function linkId(a, b) {
    return a < b ? `${a}|${b}` : `${b}|${a}`; // "|" is not allowed in node names
  }

  function linkLabel(link) {
    if (!link.up) return "down";
    const loss = `${(link.loss * 100).toFixed(link.loss && link.loss < 0.1 ? 1 : 0)} %`;
    const rtt = link.rtt_ms == null ? "" : ` · ${link.rtt_ms.toFixed(1)} ms`;
    return `cost ${link.cost >= INFINITY ? "∞" : link.cost} · loss ${loss}${rtt}`;
  }

  const GRAPH_STYLE = [
    {
      selector: "node",
      style: {
        "background-color": "#26a69a",
        label: "data(label)",
        color: "#dde3ea",
        "font-size": 13,
        "font-weight": 600,
        "text-valign": "bottom",
        "text-margin-y": 6,
        "text-background-color": "#11151c",
        "text-background-opacity": 0.7,
        "text-background-padding": 2,
        width: 34,
        height: 34,
        "border-width": 2,
        "border-color": "#11151c",
        "underlay-color": "#ffd54f",
        "underlay-padding": 0,
        "underlay-opacity": 0,
        "transition-property": "background-color, border-color, underlay-opacity",
        "transition-duration": 200,
      },
    },
    { selector: "node.down", style: { "background-color": "#e53935", "border-color": "#ffcdd2" } },
    { selector: "node.offline", style: { "background-color": "#757575" } },
    {
      selector: "node.revoked",
      style: { "background-color": "#8d6e63", "border-style": "dashed", "border-color": "#d7ccc8" },
    },
    { selector: "node:selected", style: { "border-color": "#4fc3f7", "border-width": 4 } },
    {
      selector: "node.path",
      style: { "underlay-opacity": 0.6, "underlay-padding": 6, "underlay-shape": "ellipse" },
    },
    {
      selector: "edge",
      style: {
        width: 3,
        "line-color": "#66bb6a",
        "curve-style": "straight",
        label: "data(label)",
        "font-size": 9,
        color: "#b0bccb",
        "text-rotation": "autorotate",
        "text-background-color": "#11151c",
        "text-background-opacity": 0.8,
        "text-background-padding": 2,
        "underlay-color": "#ffd54f",
        "underlay-padding": 0,
        "underlay-opacity": 0,
        "transition-property": "line-color, width, underlay-opacity",
        "transition-duration": 200,
      },
    },
    { selector: "edge.fair", style: { "line-color": "#ffca28" } },
    { selector: "edge.poor", style: { "line-color": "#ff7043" } },
    {
      selector: "edge.down",
      style: { "line-color": "#e53935", "line-style": "dashed", "line-dash-pattern": [6, 4] },
    },
    {
      selector: "edge.path",
      style: { width: 4, "underlay-opacity": 0.7, "underlay-padding": 5 },
    },
  ];

  function makeGraph() {
    state.cy = cytoscape({
      container: ui.graph,
      style: GRAPH_STYLE,
      minZoom: 0.2,
      maxZoom: 3,
      boxSelectionEnabled: false,
      autoungrabify: false,
    });
    state.cy.on("tap", "node", (evt) => select(evt.target.id()));
    state.cy.on("tap", (evt) => {
      if (evt.target === state.cy) select(null);
    });
    // For operators' scripts and the page's tests: read-only use is the intent.
    window.x0tTopology = {
      cy: state.cy,
      updates: () => state.updates,
      nodeState: (name) => {
        const n = state.cy.getElementById(name);
        return n.nonempty() ? n.data("state") : null;
      },
    };
  }

  function renderTopology(topology) {
    const cy = state.cy;
    state.topology = topology;
    const nodes = new Map(topology.nodes.map((n) => [n.name, n]));
    const links = new Map(topology.links.map((l) => [linkId(l.a, l.b), l]));
    const pathNodes = new Set();
    const pathLinks = new Set();
    const path = topology.path;
    if (path) {
      path.hops.forEach((hop, i) => {
        pathNodes.add(hop);
        if (i > 0) pathLinks.add(linkId(path.hops[i - 1], hop));
      });
    }
    const added = [];
    cy.batch(() => {
      // Removed first, so an edge never outlives its node.
      cy.edges().forEach((e) => {
        if (!links.has(e.id())) e.remove();
      });
      cy.nodes().forEach((n) => {
        if (!nodes.has(n.id())) n.remove();
      });
      for (const [name, n] of nodes) {
        const nodeClass = nodeState(n);
        let el = cy.getElementById(name);
        if (el.empty()) {
          el = cy.add({ group: "nodes", data: { id: name }, position: placeNear(name, topology) });
          added.push(name);
        }
        el.data({ label: nodeClass === "up" ? name : `${name} (${nodeClass})`, state: nodeClass });
        el.classes([nodeClass, ...(pathNodes.has(name) ? ["path"] : [])]);
      }
      for (const [id, l] of links) {
        let el = cy.getElementById(id);
        if (el.empty()) {
          if (!nodes.has(l.a) || !nodes.has(l.b)) continue; // a name no node has: skip it
          el = cy.add({ group: "edges", data: { id, source: l.a, target: l.b } });
          added.push(id);
        }
        const quality = linkQuality(l);
        el.data({ label: linkLabel(l), quality });
        el.classes([quality, ...(pathLinks.has(id) ? ["path"] : [])]);
      }
    });
    const newNodes = [];
    let newLinks = false;
    for (const id of added) {
      const isLink = id.includes("|");
      const known = isLink ? state.seenLinks : state.seenNodes;
      if (known.has(id)) continue;
      known.add(id);
      if (isLink) newLinks = true;
      else newNodes.push(id);
    }
    if (newNodes.length || newLinks) layout(newNodes);
    fillPathChoices([...nodes.keys()]);
    showPath(path);
  }

  function placeNear(name, topology) {
    // A new node starts beside a neighbour already drawn (or the middle), so the
    // incremental layout below only has to settle it, not rearrange everything.
    const cy = state.cy;
    for (const l of topology.links) {
      const other = l.a === name ? l.b : l.b === name ? l.a : null;
      const el = other && cy.getElementById(other);
      if (el && el.nonempty()) {
        const p = el.position();
        return { x: p.x + 60 * Math.cos(hash(name)), y: p.y + 60 * Math.sin(hash(name)) };
      }
    }
    const ext = cy.extent();
    const spread = 80 + 20 * cy.nodes().length;
    return {
      x: (ext.x1 + ext.x2) / 2 + spread * Math.cos(hash(name)),
      y: (ext.y1 + ext.y2) / 2 + spread * Math.sin(hash(name)),
    };
  }

  function hash(text) {
    // A stable angle per name: the same mesh is drawn the same way on every load.
    let h = 7;
    for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) % 100003;
    return (h / 100003) * 2 * Math.PI;
  }

  function layout(newNodes) {
    // The first drawing with links starts from scratch. Later ones start from what the
    // user sees: when nodes joined, only they move (the others are locked meanwhile);
    // when only links appeared, everything settles from its current place.
    const cy = state.cy;
    const first = !state.laidOut && cy.edges().nonempty();
    if (cy.edges().nonempty()) state.laidOut = true;
    const fresh = new Set(newNodes || []);
    const held = first || !fresh.size ? cy.collection() : cy.nodes().filter((n) => !fresh.has(n.id()));
    held.lock();
    const run = cy.layout({
      name: "cose",
      animate: !first,
      animationDuration: 400,
      randomize: first,
      fit: false,
      boundingBox: first ? { x1: 0, y1: 0, w: 800, h: 600 } : undefined,
      nodeRepulsion: () => 400000,
      idealEdgeLength: () => 100,
      nodeOverlap: 20,
      numIter: 2000,
    });
    run.one("layoutstop", () => {
      held.unlock();
      // Fit, but a small mesh is not blown up to fill the screen.
      cy.fit(undefined, 60);
      if (cy.zoom() > MAX_FIT_ZOOM) {
        cy.zoom(MAX_FIT_ZOOM);
        cy.center();
      }
    });
    run.run();
  }

  function fillPathChoices(names) {
    for (const select of [ui.from, ui.to]) {
      const have = [...select.options].map((o) => o.value).filter(Boolean);
      if (have.join(" ") === names.join(" ")) continue;
      const keep = select.value;
      select.replaceChildren(new Option("–", ""));
      for (const name of names) select.add(new Option(name, name));
      select.value = names.includes(keep) ? keep : "";
    }
  }

  function showPath(path) {
    ui.pathText.classList.remove("incomplete");
    if (!path) {
      ui.pathText.textContent = "";
      return;
    }
    ui.pathText.textContent = path.hops.join(" → ") + (path.complete ? "" : ` ✗ ${path.reason}`);
    ui.pathText.classList.toggle("incomplete", !path.complete);
  }

  // -- node details -----------------------------------------------------------------------

  function select(name) {
    state.selected = name;
    if (!name) {
      ui.details.replaceChildren(paragraph("Click a node for its details.", "hint"));
      return;
    }
    renderDetails(name).catch((err) => {
      if (err instanceof AuthError) forgetKey(err.message);
      else ui.details.replaceChildren(paragraph(`cannot load ${name}: ${err.message}`, "error"));
    });
  }

  async function renderDetails(name) {
    const n = await getJSON(`nodes/${encodeURIComponent(name)}`);
    if (state.selected !== name) return; // another node was clicked meanwhile
    const topoNode = state.topology && state.topology.nodes.find((x) => x.name === name);
    const now = state.topology ? state.topology.generated_at : Date.now() / 1000;
    const nodeClass = topoNode ? nodeState(topoNode) : n.online ? "up" : "offline";
    const cert = n.certificate;
    const report = n.report;
    const rows = [
      ["name", n.name],
      ["state", nodeClass, `state-${nodeClass}`],
      ["SPIFFE ID", n.spiffe_id],
      ["tags", n.tags.length ? n.tags.join(", ") : "none"],
      ["certificate", cert ? cert.serial : "none"],
      ["expires", cert ? `${isoTime(cert.not_after)} (${relative(cert.not_after - now)})` : "–"],
      ["cert status", cert ? cert.status : "–"],
      ["policy version", report && report.policy_version != null ? String(report.policy_version) : "–"],
      ["CRL version", report && report.crl_version != null ? String(report.crl_version) : "–"],
      ["sessions", report ? String(report.sessions) : "–"],
      ["neighbours", report ? String(report.neighbours) : "–"],
      ["last report", n.last_seen ? `${relative(n.last_seen - now)} (${clock(n.last_seen)})` : "never"],
      ["endpoints", n.endpoints.length ? n.endpoints.join(", ") : "–"],
    ];
    const dl = document.createElement("dl");
    for (const [label, value, cls] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (cls) dd.className = cls;
      dl.append(dt, dd);
    }
    ui.details.replaceChildren(dl, neighbourTable(name));
  }

  function neighbourTable(name) {
    const links = (state.topology ? state.topology.links : []).filter(
      (l) => l.a === name || l.b === name,
    );
    if (!links.length) return paragraph("No links reported.", "hint");
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const h of ["neighbour", "RTT", "loss", "cost", "link"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    const body = table.createTBody();
    for (const l of links) {
      const row = body.insertRow();
      const cells = [
        l.a === name ? l.b : l.a,
        l.rtt_ms == null ? "–" : `${l.rtt_ms.toFixed(1)} ms`,
        `${(l.loss * 100).toFixed(1)} %`,
        l.cost >= INFINITY ? "∞" : String(l.cost),
        l.up ? "up" : "down",
      ];
      cells.forEach((text, i) => {
        const td = row.insertCell();
        td.textContent = text;
        if (i === 4 && !l.up) td.className = "down";
      });
    }
    return table;
  }

  // -- events -----------------------------------------------------------------------------

  function renderEvents(events) {
    // The API answers newest first; only ids above the newest shown are new.
    const fresh = events.filter((e) => e.id > state.lastEventId);
    if (!fresh.length) return;
    const first = state.lastEventId === 0;
    state.lastEventId = Math.max(state.lastEventId, ...fresh.map((e) => e.id));
    const items = fresh.map((e) => eventItem(e, !first));
    ui.events.prepend(...items);
    while (ui.events.children.length > MAX_EVENTS_SHOWN) ui.events.lastElementChild.remove();
  }

  function eventItem(e, isNew) {
    const li = document.createElement("li");
    li.dataset.id = String(e.id);
    if (isNew) li.className = "new";
    const time = document.createElement("time");
    time.dateTime = new Date(e.at * 1000).toISOString();
    time.textContent = clock(e.at);
    const node = document.createElement("span");
    node.className = "node";
    node.textContent = e.node;
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = e.kind.replace(/_/g, " ");
    const detail = document.createElement("span");
    detail.className = "detail";
    const d = e.detail || {};
    const parts = [];
    if (d.subject) parts.push(`${d.subject}`);
    if (d.action) parts.push(`action ${d.action}`);
    if (d.mttd_s != null) parts.push(`MTTD ${Number(d.mttd_s).toFixed(2)} s`);
    if (d.mttr_s != null) parts.push(`MTTR ${Number(d.mttr_s).toFixed(2)} s`);
    for (const [k, v] of Object.entries(d)) {
      if (!["subject", "action", "outcome", "mttd_s", "mttr_s"].includes(k)) parts.push(`${k} ${v}`);
    }
    detail.textContent = parts.join(" · ");
    li.append(time, node, kind);
    if (d.outcome) {
      const outcome = document.createElement("span");
      outcome.className = `outcome outcome-${String(d.outcome).replace(/[^a-z]/g, "")}`;
      outcome.textContent = ` ${d.outcome}`;
      li.append(outcome);
    }
    li.append(detail);
    return li;
  }

  // -- formatting -------------------------------------------------------------------------

  function paragraph(text, cls) {
    const p = document.createElement("p");
    p.textContent = text;
    if (cls) p.className = cls;
    return p;
  }

  function clock(unixSeconds) {
    const d = new Date(unixSeconds * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function isoTime(unixSeconds) {
    return new Date(unixSeconds * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  }

  function relative(seconds) {
    const s = Math.abs(seconds);
    const text =
      s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(0)} min` : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(0)} d`;
    return seconds >= 0 ? `in ${text}` : `${text} ago`;
  }

  // -- start ------------------------------------------------------------------------------

  function main() {
    keyFromFragment();
    makeGraph();
    ui.from.addEventListener("change", () => pollSoon());
    ui.to.addEventListener("change", () => pollSoon());
    ui.pathClear.addEventListener("click", () => {
      ui.from.value = "";
      ui.to.value = "";
      pollSoon();
    });
    ui.relayout.addEventListener("click", () => {
      state.laidOut = false;
      layout([]);
    });
    ui.forget.addEventListener("click", () => forgetKey(""));
    ui.loginForm.addEventListener("submit", (evt) => {
      evt.preventDefault();
      const key = ui.loginKey.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      state.key = key;
      ui.login.hidden = true;
      startPolling();
    });
    state.key = sessionStorage.getItem(KEY_STORAGE);
    if (state.key) startPolling();
    else askForKey("");
  }

  function pollSoon() {
    // A new path choice: ask now rather than at the next tick.
    if (!state.polling) return;
    clearTimeout(state.timer);
    poll();
  }

  main();
})();
