// The console speaks protocol v1 as any browser client would: one WebSocket, JSON text frames.
"use strict";

const endpoint = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
const $ = (id) => document.getElementById(id);
let socket = null;
let requestCounter = 0;

$("endpoint").textContent = endpoint;

function log(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toISOString().slice(11, 23)} ${kind}: ${text}`;
  $("log").append(item);
}

function setState(state) {
  $("state").textContent = state;
  const open = state === "open" || state === "connecting";
  $("close").disabled = !open;
}

function send(frame) {
  const text = JSON.stringify(frame);
  socket.send(text);
  log("sent", text);
}

function openSession(workspaceDir) {
  const frame = { type: "new_session", workspace_dir: workspaceDir, request_id: ++requestCounter };
  if (socket && socket.readyState === WebSocket.OPEN) {
    send(frame);  // a second session on one connection gets `session_exists`, as the protocol says
    return;
  }
  socket = new WebSocket(endpoint);
  setState("connecting");
  socket.onopen = () => { setState("open"); send(frame); };
  socket.onmessage = (event) => {
    let reply;
    try { reply = JSON.parse(event.data); } catch { log("error", `not JSON: ${event.data}`); return; }
    if (reply.type === "new_session") {
      $("session-id").textContent = reply.session_id;
      log("received", event.data);
    } else if (reply.type === "error") {
      log("error", `${reply.code}: ${reply.message}`);
      if (reply.code === "session_terminated") $("session-id").textContent = "none (terminated)";
    } else {
      log("received", event.data);
    }
  };
  socket.onerror = () => log("error", "WebSocket error (the close event below has the code)");
  socket.onclose = (event) => {
    $("close-code").textContent = String(event.code);
    if (!$("session-id").textContent.startsWith("none")) $("session-id").textContent = "none";
    log("closed", `close code ${event.code}${event.reason ? ` (${event.reason})` : ""}`);
    setState("closed");
    socket = null;
  };
}

$("open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  openSession($("workspace").value.trim());
});

$("close").addEventListener("click", () => {
  if (socket) socket.close(1000, "closed from the console");
});
