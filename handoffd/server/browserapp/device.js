// The browser device's identity: its key (WebCrypto Ed25519, non-extractable, in IndexedDB),
// joining the account with a PKCS#10 CSR, signed requests and the server WebSocket's challenge.
// The formats are handoffd/wire/auth.py's and handoffd/identity's (docs/protocol.md).
import { b64url, base32, concat, fromB64url, hex, sha256, toPem, utf8 } from "./bytes.js";
import { csr, csrInfo } from "./der.js";
import * as store from "./keystore.js";

const DOMAIN = "handoff/v1/";
const ED25519 = { name: "Ed25519" };

// Server clock minus ours, in ms (the server accepts request timestamps within ±60 s).
let offsetMs = 0;

export async function syncClock() {
  const started = Date.now();
  const info = await (await fetch("/v1/info", { cache: "no-store" })).json();
  const ended = Date.now();
  offsetMs = Math.round(info.time * 1000 - (started + ended) / 2);
  return info;
}

export const serverNow = () => Date.now() + offsetMs;

export async function sign(key, purpose, data) {
  const msg = concat(utf8(DOMAIN + purpose), Uint8Array.of(0), data);
  return new Uint8Array(await crypto.subtle.sign(ED25519, key, msg));
}

export async function verify(publicKey, purpose, data, signature) {
  const msg = concat(utf8(DOMAIN + purpose), Uint8Array.of(0), data);
  return crypto.subtle.verify(ED25519, publicKey, signature, msg);
}

export async function deviceIdOf(rawPublicKey) {
  return base32((await sha256(rawPublicKey)).slice(0, 20));
}

export const load = () => store.get("device", "self");
export const save = (dev) => store.put("device", "self", dev);
export const forget = () => store.del("device", "self");

export class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(resp) {
  let code = "http-" + resp.status, message = resp.statusText;
  try {
    const body = await resp.json();
    code = body.error.code; message = body.error.message;
  } catch { /* not a JSON error */ }
  return new ServerError(resp.status, code, message);
}

// Join the account with the invite token: a fresh key, a CSR signed by it, POST /v1/join.
export async function join(token, name) {
  const pair = await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const deviceId = await deviceIdOf(raw);
  const info = csrInfo(deviceId, spki);
  const signature = new Uint8Array(await crypto.subtle.sign(ED25519, pair.privateKey, info));
  const body = {
    token, name, platform: "browser",
    csr: toPem("CERTIFICATE REQUEST", csr(info, signature)),
  };
  const resp = await fetch("/v1/join", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  if (resp.status !== 201) throw await errorOf(resp);
  const issued = await resp.json();
  if (issued.device_id !== deviceId) throw new Error("the server issued a certificate for another device id");
  const dev = {
    deviceId, accountId: issued.account_id, name,
    privateKey: pair.privateKey, publicKey: pair.publicKey,
    deviceCert: issued.device_cert, accountCa: issued.account_ca, crl: issued.crl,
    joinedAt: Date.now(),
  };
  await save(dev);
  return dev;
}

// A request signed like a daemon's (handoffd/wire/auth.py: purpose server-request).
export async function request(dev, method, pathQs, json) {
  const body = json === undefined ? new Uint8Array() : utf8(JSON.stringify(json));
  const ts = String(serverNow());
  const nonce = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const signed = [method.toUpperCase(), pathQs, hex(await sha256(body)), ts, nonce, dev.deviceId].join("\n");
  const signature = await sign(dev.privateKey, "server-request", utf8(signed));
  const headers = {
    "X-Handoff-Device": dev.deviceId,
    "X-Handoff-Timestamp": ts,
    "X-Handoff-Nonce": nonce,
    "X-Handoff-Signature": b64url(signature),
  };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(pathQs, { method, headers, body: json === undefined ? undefined : body, cache: "no-store" });
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

// The server WebSocket: challenge-response with the device key, then presence and signals.
// handlers: welcome(msg), presence(online), signal(from, data), closed(code, fatal).
export class ServerSocket {
  constructor(dev, handlers) {
    this.dev = dev;
    this.handlers = handlers;
    this.ws = null;
    this.stopped = false;
    this.delay = 1000;
    this.timer = null;
  }

  start() {
    if (this.stopped) return;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
    const ws = new WebSocket(url);
    this.ws = ws;
    let fatal = null;
    ws.onmessage = async (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { ws.close(); return; }
      if (msg.type === "challenge") {
        const nonce = fromB64url(msg.nonce, 64);
        const data = concat(nonce, utf8("\n" + this.dev.deviceId));
        const signature = await sign(this.dev.privateKey, "server-ws-auth", data);
        ws.send(JSON.stringify({ type: "auth", device_id: this.dev.deviceId, signature: b64url(signature) }));
      } else if (msg.type === "welcome") {
        this.delay = 1000;
        this.handlers.welcome?.(msg);
      } else if (msg.type === "presence") {
        this.handlers.presence?.(msg.online);
      } else if (msg.type === "signal") {
        this.handlers.signal?.(msg.from, msg.data);
      } else if (msg.type === "error") {
        if (msg.fatal) fatal = msg.error.code;
        this.handlers.error?.(msg.error, msg.ref);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const code = fatal ?? (ev.code === 4003 ? "device-revoked" : null);
      const final = code === "device-revoked" || code === "replaced";
      this.handlers.closed?.(code, final);
      if (!final && !this.stopped) {
        this.timer = setTimeout(() => this.start(), this.delay);
        this.delay = Math.min(this.delay * 2, 30000);
      } else {
        this.stopped = true;
      }
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close();
  }
}
