/* The admin's live channel: keep this page in step with the registry (sessions_app/admin_live.py).
   The page says what it shows (`watch`); the server sends what changed: rows, the paginator,
   the filter sidebar's choices. Ticked boxes, scroll, filters, search and sort stay as the
   operator left them. */
"use strict";
(function () {
  const root = document.getElementById("live-root");
  if (!root) return;
  const status = document.getElementById("live-status");
  const RETRY_MIN_MS = 500, RETRY_MAX_MS = 10000;
  let retryMs = RETRY_MIN_MS;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.querySelector(".live-status-text").textContent = text;
  }

  function watchFrame() {
    if (root.dataset.livePage === "index") return { type: "watch", page: "index" };
    return { type: "watch", page: "changelist", model: root.dataset.liveModel, query: location.search };
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + root.dataset.livePath);
    socket.onopen = function () {
      retryMs = RETRY_MIN_MS;
      setStatus("live", "live");
      socket.send(JSON.stringify(watchFrame())); // the answer brings the page up to date: the catch-up
    };
    socket.onmessage = function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (error) { return; }
      const handler = HANDLERS[frame.type];
      if (!handler) return;
      if (frame.type !== "error" && status.dataset.state !== "live") setStatus("live", "live"); // recovered
      handler(frame);
    };
    socket.onclose = function () {
      setStatus("lost", "Live channel lost: this page may be out of date. Reconnecting…");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    };
  }

  // --- a changelist ---------------------------------------------------------------------
  function rowsBody() {
    return document.querySelector("#live-results #result_list tbody");
  }

  function tickedIds() {
    const body = rowsBody();
    if (!body) return new Set();
    return new Set(Array.from(body.rows).filter(function (row) {
      const box = row.querySelector("input.action-select");
      return box && box.checked;
    }).map(function (row) { return row.dataset.pk; }));
  }

  function rowFrom(html, pk) {
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    const row = holder.firstElementChild;
    row.dataset.pk = pk;
    return row;
  }

  function applyChangelist(frame) {
    const ticked = tickedIds();
    const container = document.getElementById("live-results");
    let fresh = new Set();
    if ("table" in frame) {
      // Rows the page already showed: the first frame after a (re)connect marks nothing as new.
      const known = new Set(Array.from((rowsBody() || { rows: [] }).rows).map(function (r) { return r.dataset.pk; })
        .filter(Boolean));
      container.innerHTML = frame.table;
      const body = rowsBody();
      if (body) Array.from(body.rows).forEach(function (row, index) {
        row.dataset.pk = frame.order[index];
        if (known.size && !known.has(row.dataset.pk)) fresh.add(row.dataset.pk);
      });
    } else {
      const body = rowsBody();
      const byId = new Map(Array.from(body.rows).map(function (row) { return [row.dataset.pk, row]; }));
      Object.entries(frame.rows).forEach(function ([pk, html]) {
        const row = rowFrom(html, pk);
        if (byId.has(pk)) byId.get(pk).replaceWith(row); else fresh.add(pk);
        byId.set(pk, row);
      });
      const wanted = new Set(frame.order);
      byId.forEach(function (row, pk) { if (!wanted.has(pk)) row.remove(); });
      const current = Array.from(body.rows).map(function (row) { return row.dataset.pk; });
      if (current.join() !== frame.order.join()) {
        frame.order.forEach(function (pk) { body.appendChild(byId.get(pk)); });
      }
    }
    const body = rowsBody();
    if (body) Array.from(body.rows).forEach(function (row) {
      const box = row.querySelector("input.action-select");
      if (box && ticked.has(row.dataset.pk)) { box.checked = true; row.classList.add("selected"); }
      if (fresh.has(row.dataset.pk)) row.classList.add("live-new");
    });
    if ("paginator" in frame) {
      const paginator = document.querySelector("#changelist-form .paginator");
      if (paginator) paginator.outerHTML = frame.paginator;
    }
    if ("filters" in frame) applyFilters(frame.filters);
    countSelected();
  }

  // The filter sidebar's choices follow the registry (a new instance, a new user). The server
  // renders it for this page's query string, so the chosen filter stays chosen; folded
  // sections stay folded.
  function applyFilters(html) {
    const current = document.getElementById("changelist-filter");
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const fresh = holder.querySelector("#changelist-filter");
    if (!current || !fresh) return;
    const open = new Map(Array.from(current.querySelectorAll("details[data-filter-title]")).map(function (details) {
      return [details.dataset.filterTitle, details.open];
    }));
    fresh.querySelectorAll("details[data-filter-title]").forEach(function (details) {
      if (open.has(details.dataset.filterTitle)) details.open = open.get(details.dataset.filterTitle);
      details.addEventListener("toggle", rememberFolding);
    });
    current.replaceWith(fresh);
  }

  // What Django's filters.js does for the sections it saw at load: a fold survives a reload.
  function rememberFolding(event) {
    const key = "django.admin.filtersState";
    const state = JSON.parse(sessionStorage.getItem(key)) || {};
    state[event.target.dataset.filterTitle] = event.target.open;
    sessionStorage.setItem(key, JSON.stringify(state));
  }

  // Django's actions.js knows only the rows the page loaded with: keep its counter true.
  function countSelected() {
    const body = rowsBody();
    const boxes = body ? Array.from(body.querySelectorAll("input.action-select")) : [];
    const selected = boxes.filter(function (box) { return box.checked; }).length;
    const counter = document.querySelector("#changelist-form span.action-counter");
    if (counter) {
      counter.dataset.actionsIcnt = String(boxes.length);
      counter.textContent = selected + " of " + boxes.length + " selected";
    }
    const toggle = document.getElementById("action-toggle");
    if (toggle) toggle.checked = boxes.length > 0 && selected === boxes.length;
  }

  const form = document.getElementById("changelist-form");
  if (form) {
    form.addEventListener("change", function (event) {
      const target = event.target;
      if (target.id === "action-toggle") {
        (rowsBody() ? rowsBody().querySelectorAll("input.action-select") : []).forEach(function (box) {
          box.checked = target.checked;
          box.closest("tr").classList.toggle("selected", target.checked);
        });
      } else if (target.classList.contains("action-select")) {
        target.closest("tr").classList.toggle("selected", target.checked);
      }
      countSelected();
    });
  }

  // --- the index --------------------------------------------------------------------------
  function applyIndex(frame) {
    document.getElementById("live-title").textContent = frame.title;
    document.getElementById("live-glance").innerHTML = frame.glance;
  }

  function showError(frame) {
    setStatus("error", frame.message);
  }

  const HANDLERS = { changelist: applyChangelist, index: applyIndex, error: showError };
  connect();
})();
