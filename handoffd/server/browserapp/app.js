// The browser device's page: pairs this browser (from /pair#token=…), then is the device.
import * as device from "./device.js";
import { Receiver } from "./receive.js";
import { Sender } from "./send.js";
import * as sharebox from "./sharebox.js";

const $ = (id) => document.getElementById(id);
const state = { dev: null, socket: null, online: new Set(), devices: [], names: new Map(), receiver: null, sender: null };

function status(text, cls = "muted") {
  const el = $("status");
  el.textContent = text;
  el.className = cls;
}

function show(section) {
  for (const id of ["pair", "nopair", "device"]) $(id).hidden = id !== section;
}

function defaultName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge"
    : /Chrom(e|ium)\//.test(ua) ? "Chromium" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS"
    : /Mac OS X/.test(ua) ? "macOS" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} on ${os}` : browser;
}

function inviteToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  return token && /^[A-Za-z0-9_-]{22,128}$/.test(token) ? token : null;
}

function renderDevices() {
  const list = $("devices");
  list.replaceChildren();
  for (const d of state.devices) {
    const li = document.createElement("li");
    const self = d.device_id === state.dev.deviceId;
    const where = d.revoked ? "revoked" : state.online.has(d.device_id) ? "online" : "offline";
    li.textContent = `${d.name}${self ? " (this browser)" : ""} · ${d.platform} · ${where}`;
    li.dataset.deviceId = d.device_id;
    list.append(li);
  }
}

async function refreshDevices() {
  try {
    const listing = await device.request(state.dev, "GET", "/v1/devices");
    state.devices = listing.devices;
    for (const d of listing.devices) state.names.set(d.device_id, d.name);
    const me = listing.devices.find((d) => d.device_id === state.dev.deviceId);
    if (me && me.name !== state.dev.name) {
      state.dev.name = me.name;
      await device.save(state.dev);
    }
    $("device-name").textContent = state.dev.name;
    renderDevices();
    state.sender?.targets(state.devices, state.online, state.dev.deviceId);
  } catch (err) {
    if (err.code === "device-revoked") revoked();
    else status(`Could not list the devices: ${err.message}`, "err");
  }
}

function revoked() {
  state.socket?.close();
  $("device-state").textContent = "This browser has been revoked: it is no longer a device of the account.";
  $("device-state").className = "err";
  document.body.dataset.state = "revoked";
  status("Revoked", "err");
}

function startDevice(dev) {
  state.dev = dev;
  show("device");
  $("device-name").textContent = dev.name;
  $("device-id").textContent = dev.deviceId.match(/.{1,4}/g).join("-");
  $("rename-name").value = dev.name;
  state.socket = new device.ServerSocket(dev, {
    welcome(msg) {
      state.online = new Set(msg.online);
      state.receiver.refreshTrust().catch((err) => status(`Could not load the account's CRL: ${err.message}`, "err"));
      document.body.dataset.state = "online";
      status("Online", "ok");
      refreshDevices();
    },
    presence(online) {
      state.online = new Set(online);
      refreshDevices();
    },
    signal(from, data) {
      state.receiver.onSignal(from, data);
    },
    error(error, ref) {
      if (typeof ref === "string") state.receiver.requests.refused(ref, error);
    },
    closed(code, final) {
      if (code === "device-revoked") return revoked();
      document.body.dataset.state = "offline";
      status(final ? `Disconnected (${code})` : "Offline: reconnecting…", "muted");
    },
  });
  state.receiver = new Receiver(dev, state.socket, state.names);
  state.sender = new Sender(state.receiver);
  state.socket.start();
  notifications();
  shared().catch((err) => status(`Could not open the share: ${err.message}`, "err"));
}

// Installed as an app, "Share → Handoff" posts the share to /app/share (the manifest's
// share_target); the service worker (sw.js) keeps it and opens /app/share?shared=<id>.
// /app/share?title=…&text=…&url=… (a link to the share page) works too. The send form is
// filled in, ready to pick a device.
async function shared() {
  if (location.pathname !== "/app/share") return;
  const q = new URLSearchParams(location.search);
  let share = { title: q.get("title"), text: q.get("text"), url: q.get("url"), files: [] };
  if (q.has("shared")) {
    try {
      share = await sharebox.take(q.get("shared"));
      if (!share) status("The share did not reach this page: share again.", "err");
    } catch (err) {
      status(`Could not read the shared files: ${err.message}`, "err");
    }
  }
  share ||= { files: [] };
  const text = [share.title, share.text].filter(Boolean).join("\n");
  const files = (share.files || []).filter((f) => f instanceof File);
  state.sender.share(files, text.slice(0, 10000), (share.url || "").slice(0, 2000));
  history.replaceState(null, "", "/app/");
  document.getElementById("send").scrollIntoView();
}

function notifications() {
  const button = $("notify-button");
  if (!("Notification" in window) || Notification.permission !== "default") return;
  button.hidden = false;
  button.onclick = async () => {
    await Notification.requestPermission();
    button.hidden = true;
  };
}

async function onPair(ev) {
  ev.preventDefault();
  const token = inviteToken();
  $("pair-button").disabled = true;
  $("pair-error").textContent = "";
  status("Pairing…");
  try {
    const dev = await device.join(token, $("pair-name").value.trim());
    history.replaceState(null, "", "/app/");  // the token is used: out of the address bar
    startDevice(dev);
  } catch (err) {
    $("pair-error").textContent = `Pairing failed: ${err.message}` + (err.code ? ` (${err.code})` : "");
    status("Not paired", "err");
    $("pair-button").disabled = false;
  }
}

async function onRename(ev) {
  ev.preventDefault();
  const name = $("rename-name").value.trim();
  try {
    await device.request(state.dev, "PATCH", `/v1/devices/${state.dev.deviceId}`, { name });
    await refreshDevices();
  } catch (err) {
    status(`Rename failed: ${err.message}`, "err");
  }
}

async function main() {
  $("pair-form").addEventListener("submit", onPair);
  $("rename-form").addEventListener("submit", onRename);
  sharebox.register().catch((err) => status(`Sharing to this app is unavailable: ${err.message}`, "muted"));
  if (!window.isSecureContext || !crypto.subtle) {
    status("This page needs HTTPS (WebCrypto is only available in a secure context).", "err");
    return;
  }
  try {
    await device.syncClock();
  } catch {
    status("The server does not answer.", "err");
  }
  const dev = await device.load();
  if (dev) {
    if (location.hash) history.replaceState(null, "", "/app/");
    startDevice(dev);
    return;
  }
  if (inviteToken()) {
    $("pair-name").value = defaultName();
    show("pair");
    status("Not paired yet");
    document.body.dataset.state = "unpaired";
  } else {
    show("nopair");
    status("Not paired");
    document.body.dataset.state = "unpaired";
  }
}

main();
