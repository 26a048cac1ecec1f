// The transfer protocol's sending side, in the page (handoffd/proto/transfer/sender.py): the
// manifest built and signed here (canonical msgpack, SHA-256 per item by WebCrypto), hello and
// the offer in parts, then data within the window the receiver states, acks, delivered, resumed.
import { fromPem, hex, utf8 } from "./bytes.js";
import * as device from "./device.js";
import * as msgpack from "./msgpack.js";
import { ProtocolError, WINDOW, linkIO } from "./transfer.js";

const MAX_CHUNK = 60 * 1024;
const READ = 1024 * 1024;
export const APP_ID = "org.handoff.browser";

const fail = (code, message) => new ProtocolError(code, message);

// SHA-256 of a file read 1 MiB at a time (fast-sha256, vendored): never whole in memory.
async function digestOf(blob) {
  const hash = new globalThis.sha256.Hash();
  for (let at = 0; at < blob.size; at += READ) {
    hash.update(new Uint8Array(await blob.slice(at, at + READ).arrayBuffer()));
  }
  return hash.digest();
}

// items: [{type, name, mime, blob}]. Returns {id, manifest, offer (bytes), blobs}.
export async function buildOffer(dev, recipient, { title, context = {}, items }) {
  const handoffId = hex(crypto.getRandomValues(new Uint8Array(16)));
  const entries = [];
  for (const [index, item] of items.entries()) {
    const digest = await digestOf(item.blob);
    entries.push({ index, type: item.type, name: item.name, mime: item.mime || "application/octet-stream", size: item.blob.size, sha256: digest });
  }
  const manifest = {
    t: "manifest", handoff_id: handoffId, session_id: hex(crypto.getRandomValues(new Uint8Array(16))),
    app_id: APP_ID, title, context: utf8(JSON.stringify(context)), items: entries,
    sender: dev.deviceId, recipient, created_ms: device.serverNow(),
  };
  const raw = msgpack.encode(manifest);
  const signature = await device.sign(dev.privateKey, "manifest", raw);
  const offer = msgpack.encode({ t: "offer", manifest: raw, signature, cert: fromPem(dev.deviceCert, "CERTIFICATE") });
  return { id: handoffId, manifest, offer, blobs: items.map((i) => i.blob) };
}

// ui: {progress(done, total), state(text, code)}. Resolves with the final state.
export async function runSender(channel, built, ui) {
  const io = linkIO(channel);
  const hid = built.id;
  const sizes = built.manifest.items.map((i) => i.size);
  const total = sizes.reduce((a, b) => a + b, 0);
  let window = WINDOW;
  try {
    await io.send("hello", { version: 1, device_id: built.manifest.sender, crl_number: 0, crl: null, features: [], window: WINDOW });
    const count = Math.max(1, Math.ceil(built.offer.length / MAX_CHUNK));
    for (let seq = 0; seq < count; seq++) {
      await io.send("offer-part", { handoff_id: hid, seq, count, data: built.offer.subarray(seq * MAX_CHUNK, (seq + 1) * MAX_CHUNK) });
    }
    let helloSeen = false, accepted = null;
    while (!accepted) {
      const msg = await io.next();
      if (msg === null) throw fail("channel-closed", "the device went away");
      if (msg.t === "hello") { helloSeen = true; window = Math.min(window, msg.window); continue; }
      if (!helloSeen) throw fail("hello-first", "hello first");
      if (msg.handoff_id !== hid && msg.t !== "error") throw fail("wrong-handoff", "another handoff");
      if (msg.t === "decline") { ui.state(`Declined: ${msg.reason}`, "declined"); return "declined"; }
      if (msg.t === "delivered") { ui.progress(total, total); ui.state("Delivered (it already had it)", "delivered"); return linger(io, hid, ui); }
      if (msg.t === "cancel") { ui.state(`Cancelled: ${msg.reason}`, "cancelled"); return "cancelled"; }
      if (msg.t === "error") throw fail(msg.code, msg.message);
      if (msg.t !== "accept") throw fail("unexpected-message", `${msg.t} before accept`);
      accepted = msg;
    }
    window = Math.min(window, accepted.window);
    const sent = {}, acked = {};
    for (const r of accepted.items) {
      if (!(r.index in sizes) || r.index in sent) throw fail("accept-bad-item", `accept names item ${r.index} wrongly`);
      if (r.offset > sizes[r.index]) throw fail("accept-bad-offset", "resume offset out of range");
      sent[r.index] = acked[r.index] = r.offset;
    }
    const order = Object.keys(sent).map(Number).sort((a, b) => a - b);
    const done = () => order.reduce((n, i) => n + acked[i], 0);
    const want = order.reduce((n, i) => n + sizes[i], 0);
    const inflight = () => order.reduce((n, i) => n + sent[i] - acked[i], 0);
    ui.progress(done(), want);
    let k = 0;
    let buffer = null, bufferAt = 0, bufferIndex = -1;
    while (done() < want) {
      while (k < order.length && inflight() + MAX_CHUNK <= window) {
        const index = order[k];
        if (sent[index] >= sizes[index]) { k++; continue; }
        const offset = sent[index];
        if (bufferIndex !== index || offset < bufferAt || offset >= bufferAt + buffer.length) {
          buffer = new Uint8Array(await built.blobs[index].slice(offset, Math.min(offset + READ, sizes[index])).arrayBuffer());
          bufferAt = offset;
          bufferIndex = index;
        }
        const data = buffer.subarray(offset - bufferAt, Math.min(offset - bufferAt + MAX_CHUNK, buffer.length));
        await io.send("data", { handoff_id: hid, index, offset, data });
        sent[index] = offset + data.length;
      }
      const msg = await io.next();
      if (msg === null) throw fail("channel-closed", "the device went away");
      if (msg.t === "error") throw fail(msg.code, msg.message);
      if (msg.t === "cancel") { ui.state(`Cancelled: ${msg.reason}`, "cancelled"); return "cancelled"; }
      if (msg.t === "delivered") throw fail("delivered-early", "delivered before every byte was acknowledged");
      if (msg.t !== "ack") throw fail("unexpected-message", `${msg.t} while sending`);
      if (msg.handoff_id !== hid) throw fail("wrong-handoff", "ack for another handoff");
      if (!(msg.index in acked)) throw fail("ack-bad-item", "ack for an item not accepted");
      if (msg.offset > sent[msg.index]) throw fail("ack-beyond-sent", "ack beyond what was sent");
      if (msg.offset > acked[msg.index]) acked[msg.index] = msg.offset;
      ui.progress(done(), want);
    }
    for (;;) {
      const msg = await io.next();
      if (msg === null) throw fail("channel-closed", "the device went away before confirming");
      if (msg.t === "ack") continue;
      if (msg.t === "error") throw fail(msg.code, msg.message);
      if (msg.t === "delivered") break;
      throw fail("unexpected-message", `${msg.t} while waiting for delivered`);
    }
    ui.state("Delivered", "delivered");
    return await linger(io, hid, ui);
  } catch (e) {
    if (!channel.closed && e instanceof ProtocolError && e.code !== "channel-closed") {
      await io.send("error", { code: e.code, message: String(e.message).slice(0, 1000) }).catch(() => {});
    }
    ui.state(`Failed: ${e.code || "error"}: ${e.message}`, "failed");
    return "failed";
  } finally {
    io.stop();
    channel.close();
  }
}

async function linger(io, hid, ui) {
  for (;;) {
    let msg;
    try { msg = await io.next(); } catch { return "delivered"; }
    if (msg === null) return "delivered";
    if (msg.t === "resumed" && msg.handoff_id === hid) { ui.state("Resumed on the other device", "resumed"); return "resumed"; }
  }
}
