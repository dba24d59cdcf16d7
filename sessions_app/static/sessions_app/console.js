// The console speaks protocol v1.2 as any browser client would: one WebSocket, JSON text frames.
// A resumable session is resumed after a drop (and after a reload of this tab: the token is
// kept in sessionStorage, which dies with the tab), with backoff, within the server's grace.
// Events sent to the session are listed with their seq; the highest seq seen is kept with the
// token and sent as `last_seq` on resume, so the server replays what came meanwhile.
"use strict";

const endpoint = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "wss-sessions.resume";
// These end a session for good: resuming after them cannot work.
const FINAL_ERRORS = new Set(["session_terminated", "session_taken_over", "session_not_found"]);
let socket = null;
let requestCounter = 0;
let closedByUser = false;
let reconnectTimer = null;
let attempts = 0;
let resumes = 0;
let giveUpAt = 0;
let lastSeq = 0;  // the highest event seq seen for the current session

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
  $("end").disabled = state !== "open";
}

// { session_id, resume_token, resume_grace_seconds, last_seq } of the session to resume, or null.
function resumeState() {
  try { return JSON.parse(sessionStorage.getItem(STORAGE_KEY)); } catch { return null; }
}

function saveResume(reply) {
  if (reply.resume_token) {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
      session_id: reply.session_id, resume_token: reply.resume_token, resume_grace_seconds: reply.resume_grace_seconds,
      last_seq: lastSeq,
    }));
    $("resumable-state").textContent = `yes (grace ${reply.resume_grace_seconds} s)`;
  } else {
    forgetResume();
  }
}

function setLastSeq(seq) {
  lastSeq = seq;
  $("last-seq").textContent = String(seq);
  const pending = resumeState();
  if (pending) sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ ...pending, last_seq: seq }));
}

function showEvent(frame) {
  if (frame.seq <= lastSeq) return;  // seen already: the protocol never sends one twice, but be sure
  setLastSeq(frame.seq);
  const item = document.createElement("li");
  item.className = "event";
  item.textContent = `#${frame.seq} ${frame.event} ${JSON.stringify(frame.data)} (sent ${frame.sent_at})`;
  $("events").append(item);
}

function forgetResume() {
  sessionStorage.removeItem(STORAGE_KEY);
  $("resumable-state").textContent = "no";
}

function send(frame) {
  const text = JSON.stringify(frame);
  socket.send(text);
  // The token is a secret: the log shows that one was sent, not what it is.
  log("sent", frame.resume_token ? text.replace(frame.resume_token, "…") : text);
}

function connect(firstFrame) {
  closedByUser = false;
  socket = new WebSocket(endpoint);
  setState("connecting");
  socket.onopen = () => { setState("open"); attempts = 0; send(firstFrame()); };
  socket.onmessage = (event) => {
    let reply;
    try { reply = JSON.parse(event.data); } catch { log("error", `not JSON: ${event.data}`); return; }
    const shown = reply.resume_token ? event.data.replace(reply.resume_token, "…") : event.data;
    if (reply.type === "session_event") {
      showEvent(reply);
      log("received", shown);
    } else if (reply.type === "new_session" || reply.type === "session_resumed") {
      $("session-id").textContent = reply.session_id;
      if (reply.type === "new_session") { $("events").replaceChildren(); setLastSeq(0); }
      if (reply.type === "session_resumed") {
        $("resumes").textContent = String(++resumes);
        if (reply.missed) log("error", "some events were no longer kept while away: reload their state");
      }
      saveResume(reply);
      log("received", shown);
    } else if (reply.type === "session_ended") {
      $("session-id").textContent = "none (ended)";
      forgetResume();
      log("received", shown);
    } else if (reply.type === "error") {
      log("error", `${reply.code}: ${reply.message}`);
      if (FINAL_ERRORS.has(reply.code)) {
        forgetResume();
        $("session-id").textContent = `none (${reply.code.replace("session_", "")})`;
      }
    } else {
      log("received", shown);
    }
  };
  socket.onerror = () => log("error", "WebSocket error (the close event below has the code)");
  socket.onclose = (event) => {
    $("close-code").textContent = String(event.code);
    log("closed", `close code ${event.code}${event.reason ? ` (${event.reason})` : ""}`);
    socket = null;
    const pending = resumeState();
    if (pending && !closedByUser) {
      scheduleResume(pending);
      return;
    }
    if (!$("session-id").textContent.startsWith("none")) $("session-id").textContent = "none";
    setState("closed");
  };
}

function scheduleResume(pending) {
  if (attempts === 0) giveUpAt = Date.now() + 1000 * pending.resume_grace_seconds;
  if (Date.now() >= giveUpAt) {
    log("error", "could not resume the session within its grace period");
    forgetResume();
    $("session-id").textContent = "none (expired)";
    setState("closed");
    return;
  }
  // Exponential backoff with full jitter, capped at 5 s.
  const delay = Math.random() * Math.min(5000, 100 * 2 ** attempts++);
  setState("reconnecting");
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    connect(() => ({ type: "resume_session", session_id: pending.session_id, resume_token: pending.resume_token,
                     last_seq: lastSeq, request_id: ++requestCounter }));
  }, delay);
}

function openSession(workspaceDir, resumable) {
  const frame = () => {
    const fields = { type: "new_session", workspace_dir: workspaceDir, request_id: ++requestCounter };
    if (resumable) fields.resumable = true;
    return fields;
  };
  if (socket && socket.readyState === WebSocket.OPEN) {
    send(frame());  // a second session on one connection gets `session_exists`, as the protocol says
    return;
  }
  connect(frame);
}

$("open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  openSession($("workspace").value.trim(), $("resumable").checked);
});

$("close").addEventListener("click", () => {
  // Close 1000 from the client ends the session, resumable or not.
  closedByUser = true;
  forgetResume();
  if (socket) socket.close(1000, "closed from the console");
});

$("end").addEventListener("click", () => {
  if (socket && socket.readyState === WebSocket.OPEN) send({ type: "end_session", request_id: ++requestCounter });
});

// A reload (or a drop before it) left a resumable session behind: take it back.
const left = resumeState();
if (left) {
  $("session-id").textContent = left.session_id;
  setLastSeq(left.last_seq || 0);
  $("resumable-state").textContent = `yes (grace ${left.resume_grace_seconds} s)`;
  scheduleResume(left);
}
