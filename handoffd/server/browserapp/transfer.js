// The transfer protocol's receiving side, in the page (docs/protocol.md; the daemon's
// handoffd/proto/transfer/receiver.py): hello, the offer in parts, the signed manifest checked,
// accept (from the checkpoints kept in IndexedDB) or decline, data written to IndexedDB before
// it is acknowledged, SHA-256 per item, delivered, resumed. One exchange at a time per link.
import { equalBytes, fromUtf8 } from "./bytes.js";
import * as msgpack from "./msgpack.js";
import * as store from "./keystore.js";
import { CertError, verifyDeviceCert, verifyWith } from "./pki.js";

export const WINDOW = 4 * 1024 * 1024;
const FLUSH = 1024 * 1024;
const MAX_OFFER = 1024 * 1024;
const MAX_CHUNK = 60 * 1024;
const PEER_TIMEOUT = 30000;
const PING_AFTER = 5000;
const HANDOFF_ID = /^[0-9a-f]{32}$/;
const APP_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const fail = (code, message) => new ProtocolError(code, message);

// Field checks per message tag: the keys it must have, exactly (values checked where used).
const FIELDS = {
  hello: "crl,crl_number,device_id,features,t,version,window",
  "offer-part": "count,data,handoff_id,seq,t",
  data: "data,handoff_id,index,offset,t",
  cancel: "handoff_id,reason,t",
  error: "code,message,t",
  ping: "nonce,t",
  pong: "nonce,t",
  accept: "handoff_id,items,t,window",
  ack: "handoff_id,index,offset,t",
  delivered: "handoff_id,t",
  resumed: "handoff_id,t",
  decline: "handoff_id,message,reason,t",
};

export function decodeMessage(data) {
  if (data.length > 64 * 1024) throw fail("decode-oversize", "message too large");
  let msg;
  try { msg = msgpack.decodeCanonical(data, { maxStr: 4096, maxBin: 64 * 1024, maxArray: 1024, maxMap: 16 }); }
  catch (e) { throw fail(e.code || "decode-malformed", e.message); }
  if (!msg || typeof msg !== "object" || Array.isArray(msg) || msg instanceof Uint8Array || typeof msg.t !== "string") {
    throw fail("decode-not-a-message", "not a message");
  }
  const want = FIELDS[msg.t];
  if (!want) throw fail("decode-unknown-type", `unknown message ${msg.t}`);
  if (Object.keys(msg).sort().join() !== want) throw fail("decode-missing-field", `${msg.t} has the wrong fields`);
  return msg;
}

export const encodeMessage = (t, fields) => msgpack.encode({ t, ...fields });

const chunkKey = (hid, index, offset) => `${hid}/${String(index).padStart(4, "0")}/${String(offset).padStart(16, "0")}`;

// Visit an item's stored chunks in order, one record (<= 1 MiB) at a time: memory does not grow
// with the item's size.
async function eachChunk(hid, entry, fn) {
  const lo = chunkKey(hid, entry.index, 0), hi = chunkKey(hid, entry.index, "9999999999999999");
  const d = await store.db();
  await new Promise((resolve, reject) => {
    const req = d.transaction("chunks").objectStore("chunks").openCursor(IDBKeyRange.bound(lo, hi));
    req.onsuccess = () => {
      const cursor = req.result;
      if (!cursor) return resolve();
      fn(cursor.value);
      cursor.continue();
    };
    req.onerror = () => reject(req.error);
  });
}

export async function itemBlob(hid, entry) {
  const parts = [];
  await eachChunk(hid, entry, (chunk) => parts.push(new Blob([chunk])));
  return new Blob(parts, { type: entry.mime || "application/octet-stream" });
}

// SHA-256 of what is stored for an item, incrementally (fast-sha256, vendored: see
// fast-sha256.LICENSE): the item is never held in memory whole.
export async function itemDigest(hid, entry) {
  const hash = new globalThis.sha256.Hash();
  let size = 0;
  await eachChunk(hid, entry, (chunk) => { hash.update(chunk); size += chunk.length; });
  return { size, digest: hash.digest() };
}

// Check a signed offer from `peer` to `me`: its manifest as a plain object (throws ProtocolError).
export async function openOffer(bytes, trust, me, peer) {
  let offer, manifest;
  try {
    offer = msgpack.decodeCanonical(bytes, { maxStr: 4096, maxBin: MAX_OFFER, maxArray: 1024, maxMap: 16 });
  } catch (e) { throw fail("offer-malformed", e.message); }
  if (!offer || offer.t !== "offer" || Object.keys(offer).sort().join() !== "cert,manifest,signature,t"
      || !(offer.manifest instanceof Uint8Array) || !(offer.cert instanceof Uint8Array) || !(offer.signature instanceof Uint8Array)) {
    throw fail("offer-malformed", "not an offer");
  }
  try {
    const sender = await verifyDeviceCert(offer.cert, trust, { expected: peer, self: me });
    if (!(await verifyWith(sender.key, "manifest", offer.manifest, offer.signature))) {
      throw new CertError("signature-invalid", "manifest signature does not verify");
    }
  } catch (e) {
    if (e instanceof CertError) throw fail("offer-invalid", `offer does not verify: ${e.message} (${e.code})`);
    throw e;
  }
  try {
    manifest = msgpack.decodeCanonical(offer.manifest, { maxStr: 4096, maxBin: 64 * 1024, maxArray: 1024, maxMap: 16 });
  } catch (e) { throw fail("offer-malformed", e.message); }
  if (!manifest || manifest.t !== "manifest") throw fail("offer-invalid", "offer carries no manifest");
  if (manifest.sender !== peer || manifest.recipient !== me) throw fail("offer-wrong-device", "manifest names other devices");
  if (!HANDOFF_ID.test(manifest.handoff_id)) throw fail("bad-handoff-id", "malformed handoff id");
  if (!APP_ID.test(manifest.app_id)) throw fail("manifest-bad-app-id", "manifest has a bad app id");
  if (typeof manifest.title !== "string" || manifest.title.length > 256) throw fail("manifest-bad-title", "bad title");
  const items = manifest.items;
  if (!Array.isArray(items)) throw fail("manifest-bad-item", "items");
  items.forEach((it, k) => {
    if (it.index !== k || typeof it.name !== "string" || !it.name || /[\/\\\x00-\x1f\x7f]|^\.\.?$/.test(it.name)
        || typeof it.size !== "number" || it.size < 0 || !(it.sha256 instanceof Uint8Array) || it.sha256.length !== 32) {
      throw fail("manifest-bad-item", `item ${k} is malformed`);
    }
  });
  let context;
  try { context = JSON.parse(fromUtf8(manifest.context)); } catch { throw fail("manifest-bad-context", "context is not JSON"); }
  if (!context || typeof context !== "object" || Array.isArray(context)) throw fail("manifest-bad-context", "context is not an object");
  return { ...manifest, context };
}

// One link: exchanges one after another, each started by the peer's hello.
// ui: {offered(record) -> Promise<true|false>, progress(record, done, total), delivered(record),
//      failed(record|null, code, message), resumeRequests: a hook set here to send `resumed`}.
export async function serveLink(channel, ctx, ui) {
  const io = linkIO(channel);
  const next = io.next;
  const send = io.send;
  try {
    for (;;) {
      const hello = await next();
      if (hello === null) return;
      if (hello.t !== "hello") throw fail("hello-first", "an exchange starts with hello");
      await exchange(hello, io, ctx, ui);
    }
  } catch (e) {
    if (!channel.closed && e instanceof ProtocolError) {
      await send("error", { code: e.code, message: String(e.message).slice(0, 1000) }).catch(() => {});
    }
    ui.failed(null, e.code || "failed", e.message);
  } finally {
    io.stop();
    channel.close();
  }
}

// Reading and writing one link: pings answered (and sent after 5 s idle), 30 s peer timeout,
// one read in flight at a time (a read raced against the person's decision is kept for later).
export function linkIO(channel) {
  let lastSent = Date.now();
  const send = async (t, fields) => { lastSent = Date.now(); await channel.send(encodeMessage(t, fields)); };
  const pinger = setInterval(() => {
    if (Date.now() - lastSent >= PING_AFTER && !channel.closed) {
      send("ping", { nonce: Math.floor(Math.random() * 2 ** 32) }).catch(() => {});
    }
  }, 1000);
  const rawNext = async () => {
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve("timeout"), PEER_TIMEOUT); });
    const data = await Promise.race([channel.recv(), timeout]);
    clearTimeout(timer);
    if (data === "timeout") throw fail("peer-timeout", "nothing heard from the peer");
    if (data === null) return null;
    const msg = decodeMessage(data);
    if (msg.t === "ping") { await send("pong", { nonce: msg.nonce }); return rawNext(); }
    if (msg.t === "pong") return rawNext();
    return msg;
  };
  const io = { send, channel, pending: null, stop: () => clearInterval(pinger) };
  io.next = () => { const p = io.pending ?? rawNext(); io.pending = null; return p; };
  io.during = async (promise) => {
    io.pending = io.pending ?? rawNext();
    const r = await Promise.race([io.pending.then((m) => ({ m })), promise.then((v) => ({ v }))]);
    if ("v" in r) return { value: r.v };
    io.pending = null;
    return { message: r.m };
  };
  return io;
}

async function exchange(hello, io, ctx, ui) {
  const { send, next } = io;
  if (hello.crl instanceof Uint8Array) await ctx.mergeCrl(hello.crl, hello.crl_number);
  await send("hello", { version: 1, device_id: ctx.dev.deviceId, crl_number: ctx.crlNumber(), crl: null, features: [], window: WINDOW });
  const window = Math.min(WINDOW, hello.window);
  // The offer, in parts.
  const parts = [];
  let hid = null, count = 0, size = 0;
  for (;;) {
    const msg = await next();
    if (msg === null) return;
    if (msg.t === "cancel") return ui.failed(null, "cancelled", msg.reason);
    if (msg.t === "error") throw fail(msg.code, msg.message);
    if (msg.t !== "offer-part") throw fail("unexpected-message", `${msg.t} before the offer`);
    if (hid === null) { hid = msg.handoff_id; count = msg.count; }
    if (msg.handoff_id !== hid || msg.count !== count) throw fail("offer-part-mismatch", "offer parts disagree");
    if (msg.seq !== parts.length) throw fail("offer-part-order", "offer parts out of order");
    size += msg.data.length;
    if (size > MAX_OFFER) throw fail("offer-too-large", "offer over 1 MiB");
    parts.push(msg.data);
    if (parts.length === count) break;
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { bytes.set(p, at); at += p.length; }
  const peer = io.channel.peer.deviceId;
  const manifest = await openOffer(bytes, ctx.trust(), ctx.dev.deviceId, peer);
  if (manifest.handoff_id !== hid) throw fail("offer-wrong-handoff", "manifest for another handoff");
  let record = await store.get("handoffs", hid);
  if (record && (record.state === "delivered" || record.state === "resumed")) {
    await send("delivered", { handoff_id: hid });
    return linger(record, io, ui);
  }
  if (!record) {
    record = {
      id: hid, from: peer, title: manifest.title, appId: manifest.app_id, context: manifest.context,
      sessionId: manifest.session_id, createdMs: manifest.created_ms, receivedAt: Date.now(),
      items: manifest.items.map((i) => ({ index: i.index, type: i.type, name: i.name, mime: i.mime, size: i.size, sha256: i.sha256 })),
      acked: Object.fromEntries(manifest.items.map((i) => [i.index, 0])), state: "offered",
    };
  }
  if (record.state !== "receiving") {
    const decision = ui.offered(record);
    let yes;
    for (;;) {  // pings are answered while the person decides
      const r = await io.during(decision);
      if ("value" in r) { yes = r.value; break; }
      if (r.message === null) return ui.failed(record, "channel-closed", "the sender went away");
      if (r.message.t === "cancel") return ui.failed(record, "cancelled", r.message.reason);
      if (r.message.t === "error") throw fail(r.message.code, r.message.message);
      throw fail("unexpected-message", `${r.message.t} before accept`);
    }
    if (!yes) {
      record.state = "declined";
      await store.put("handoffs", hid, record);
      await send("decline", { handoff_id: hid, reason: "declined-by-user", message: "declined on the receiving browser" });
      return;
    }
  }
  if (!record.items.length) {
    await send("decline", { handoff_id: hid, reason: "no-items", message: "nothing offered" });
    return;
  }
  record.state = "receiving";
  await store.put("handoffs", hid, record);
  await receive(record, window, io, ui);
}

async function receive(record, window, io, ui) {
  const { send, next } = io;
  const hid = record.id;
  const sizes = Object.fromEntries(record.items.map((i) => [i.index, i.size]));
  const received = { ...record.acked };
  const total = record.items.reduce((n, i) => n + i.size, 0);
  const done = () => Object.values(received).reduce((n, v) => n + v, 0);
  const buffers = new Map();  // index -> {offset, parts, size}
  const verified = new Set();
  await send("accept", { handoff_id: hid, items: record.items.map((i) => ({ index: i.index, offset: received[i.index] })), window });
  ui.progress(record, done(), total);

  const flush = async (index) => {
    const b = buffers.get(index);
    if (!b || !b.size) return;
    const chunk = new Uint8Array(b.size);
    let at = 0;
    for (const p of b.parts) { chunk.set(p, at); at += p.length; }
    record.acked[index] = b.offset + b.size;
    const d = await store.db();
    await new Promise((resolve, reject) => {  // the chunk and the checkpoint in one durable transaction
      const tx = d.transaction(["chunks", "handoffs"], "readwrite", { durability: "strict" });
      tx.objectStore("chunks").put(chunk, chunkKey(hid, index, b.offset));
      tx.objectStore("handoffs").put(record, hid);
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    buffers.set(index, { offset: b.offset + b.size, parts: [], size: 0 });
    await send("ack", { handoff_id: hid, index, offset: record.acked[index] });
  };
  const complete = async (entry) => {
    await flush(entry.index);
    const { size, digest } = await itemDigest(hid, entry);
    if (size !== entry.size || !equalBytes(digest, entry.sha256)) throw fail("hash-mismatch", `item ${entry.index} does not match its SHA-256`);
    verified.add(entry.index);
  };
  for (const entry of record.items) if (received[entry.index] === entry.size) await complete(entry);
  while (verified.size < record.items.length) {
    const msg = await next();
    if (msg === null) return ui.failed(record, "channel-closed", "the sender went away; it will retry");
    if (msg.t === "cancel") { record.state = "cancelled"; await store.put("handoffs", hid, record); return ui.failed(record, "cancelled", msg.reason); }
    if (msg.t === "error") throw fail(msg.code, msg.message);
    if (msg.t !== "data") throw fail("unexpected-message", `${msg.t} while receiving`);
    if (msg.handoff_id !== hid) throw fail("wrong-handoff", "data for another handoff");
    const { index, offset, data } = msg;
    if (!(index in sizes)) throw fail("data-bad-item", "data for an item not accepted");
    if (!(data instanceof Uint8Array) || !data.length || data.length > MAX_CHUNK) throw fail("decode-wrong-type", "bad data");
    const have = received[index];
    if (offset + data.length <= have) continue;  // a duplicate
    if (offset < have) throw fail("data-overlap", "data overlaps what was received");
    if (offset > have) throw fail("data-gap", "data leaves a gap");
    if (offset + data.length > sizes[index]) throw fail("data-overflow", "data beyond the item's size");
    if (done() + data.length - sumAcked(record) > window) throw fail("flow-control", "more than the window unacknowledged");
    received[index] = offset + data.length;
    const b = buffers.get(index) ?? { offset, parts: [], size: 0 };
    b.parts.push(data);
    b.size += data.length;
    buffers.set(index, b);
    ui.progress(record, done(), total);
    const entry = record.items[index];
    if (received[index] === entry.size) await complete(entry);
    else if (b.size >= FLUSH || done() - sumAcked(record) >= window / 2) await flush(index);
  }
  record.state = "delivered";
  await store.put("handoffs", hid, record);
  await send("delivered", { handoff_id: hid });
  return linger(record, io, ui);
}

const sumAcked = (record) => Object.values(record.acked).reduce((n, v) => n + v, 0);

// Delivered: wait for the person to resume it (the `resumed` goes out on this link).
async function linger(record, io, ui) {
  let resolveResume;
  const resumed = new Promise((r) => { resolveResume = r; });
  ui.delivered(record, () => resolveResume(true));
  for (;;) {
    const r = await io.during(resumed);
    const msg = "value" in r ? "resume" : r.message;
    if (msg === "resume") {
      await io.send("resumed", { handoff_id: record.id });
      record.state = "resumed";
      await store.put("handoffs", record.id, record);
      ui.resumedSent(record);
      return;
    }
    if (msg === null) return;
    if (msg.t === "data" || msg.t === "ack" || msg.t === "delivered") continue;  // duplicates
    if (msg.t === "cancel") continue;  // too late: delivered
    if (msg.t === "hello") throw fail("unexpected-message", "a new exchange before resumed");
    if (msg.t === "error") throw fail(msg.code, msg.message);
  }
}
