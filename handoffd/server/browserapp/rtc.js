// Answering a daemon's WebRTC offer (handoffd/transport/webrtc): the signed offer arrives through
// the server WebSocket as a signal frame; the answer is signed with the device key and names the
// SDP's DTLS fingerprints; once the data channel opens, both sides exchange signed confirmations
// binding both nonces, ids and fingerprints. A browser cannot read the DTLS exporter, so its
// answer asks for the fingerprint-only binding ("bind": "dtls-fingerprint"; docs/protocol.md).
import { concat, equalBytes, fromB64url, b64url } from "./bytes.js";
import * as device from "./device.js";
import * as envelope from "./envelope.js";
import * as msgpack from "./msgpack.js";
import { verifyWith } from "./pki.js";

const KIND_OFFER = 1, KIND_ANSWER = 2, KIND_ERROR = 3;
const REF_LEN = 16;
const MAX_SDP = 32 * 1024;
const FP_ALGS = { "sha-256": 32, "sha-384": 48, "sha-512": 64 };
export const BIND_FINGERPRINT = "dtls-fingerprint";

export class PeerAuthError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// A forwarded signal: {ref, kind, body} (16-byte ref, then a 4-byte length, the kind, the body).
export function decodeSignal(b64) {
  const data = fromB64url(b64, 256 * 1024 + 64);
  if (data.length < REF_LEN + 5) throw new PeerAuthError("signal-malformed", "signal too short");
  const view = new DataView(data.buffer, data.byteOffset + REF_LEN);
  if (view.getUint32(0) !== data.length - REF_LEN - 4) throw new PeerAuthError("signal-malformed", "bad signal length");
  return { ref: data.subarray(0, REF_LEN), kind: data[REF_LEN + 4], body: data.subarray(REF_LEN + 5) };
}

export function encodeSignal(ref, kind, body) {
  const head = new Uint8Array(5);
  new DataView(head.buffer).setUint32(0, body.length + 1);
  head[4] = kind;
  return b64url(concat(ref, head, body));
}

export function errorSignal(ref, code, message) {
  return encodeSignal(ref, KIND_ERROR, msgpack.encode({ code, message: message.slice(0, 200) }));
}

function checkFingerprint(alg, value) {
  const n = FP_ALGS[alg];
  const parts = typeof value === "string" ? value.split(":") : [];
  if (!n || parts.length !== n || !parts.every((p) => /^[0-9A-F]{2}$/.test(p))) {
    throw new PeerAuthError("sdp-invalid", "malformed DTLS fingerprint");
  }
  return [alg, value];
}

// The SDP's a=fingerprint values (one data-channel m-section, strictly), as [alg, value].
export function sdpFingerprints(sdp) {
  if (sdp.length > MAX_SDP || !/^[\x20-\x7e\r\n]*$/.test(sdp) || !sdp.endsWith("\r\n")) {
    throw new PeerAuthError("sdp-invalid", "SDP is too large or not printable ASCII");
  }
  const lines = sdp.slice(0, -2).split("\r\n");
  if (lines[0] !== "v=0") throw new PeerAuthError("sdp-invalid", "SDP must start with v=0");
  const found = [];
  let media = 0;
  for (const line of lines) {
    if (!/^[a-z]=/.test(line)) throw new PeerAuthError("sdp-invalid", "SDP line is malformed");
    if (line.startsWith("m=")) {
      media++;
      if (!(line.startsWith("m=application ") && line.endsWith(" UDP/DTLS/SCTP webrtc-datachannel"))) {
        throw new PeerAuthError("sdp-invalid", "SDP offers something other than a data channel");
      }
    } else if (line.startsWith("a=fingerprint:")) {
      const f = line.slice(14).split(" ");
      if (f.length !== 2) throw new PeerAuthError("sdp-invalid", "SDP fingerprint line is malformed");
      found.push(checkFingerprint(f[0].toLowerCase(), f[1].toUpperCase()));
    }
  }
  if (media !== 1) throw new PeerAuthError("sdp-invalid", "SDP must have exactly one m-section");
  return found;
}

const fpKey = (f) => f[0] + " " + f[1];

function checkSdp(sdp, signed) {
  const inSdp = sdpFingerprints(sdp);
  const a = new Set(inSdp.map(fpKey)), b = new Set(signed.map(fpKey));
  if (!inSdp.length || a.size !== b.size || ![...a].every((k) => b.has(k))) {
    throw new PeerAuthError("sdp-fingerprint-mismatch", "SDP fingerprints differ from the signed ones");
  }
}
const sha256Of = (fps) => fps.find((f) => f[0] === "sha-256")[1];

function unpackDescription(data, isAnswer = false) {
  let d;
  try { d = msgpack.decode(data, { maxStr: MAX_SDP, maxBin: 64, maxArray: 8, maxMap: 8 }); }
  catch { throw new PeerAuthError("offer-malformed", "offer is not valid msgpack"); }
  const keys = d && typeof d === "object" ? Object.keys(d).filter((k) => k !== "bind" && k !== "offer_nonce").sort().join() : "";
  if (keys !== "cid,fp,sdp,v" || ("offer_nonce" in d) !== isAnswer) throw new PeerAuthError("offer-malformed", "offer has the wrong fields");
  if (isAnswer && !(d.offer_nonce instanceof Uint8Array && d.offer_nonce.length === 16)) throw new PeerAuthError("answer-malformed", "bad offer nonce");
  if ("bind" in d && d.bind !== BIND_FINGERPRINT) throw new PeerAuthError("offer-malformed", "unknown binding");
  if (d.v !== 1 || !(d.cid instanceof Uint8Array) || d.cid.length !== 16 || typeof d.sdp !== "string"
      || !Array.isArray(d.fp) || d.fp.length === 0) throw new PeerAuthError("offer-malformed", "offer has a field of the wrong type");
  const fps = d.fp.map((f) => {
    if (!Array.isArray(f) || f.length !== 2) throw new PeerAuthError("offer-malformed", "offer fingerprint is malformed");
    return checkFingerprint(f[0], f[1]);
  });
  if (!fps.some((f) => f[0] === "sha-256")) throw new PeerAuthError("offer-malformed", "offer lacks a sha-256 fingerprint");
  return { cid: d.cid, sdp: d.sdp, fps, bind: d.bind ?? null, offerNonce: d.offer_nonce ?? null };
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);  // use what was gathered by then
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

function bindingBytes(role, b) {
  return msgpack.encode([role, b.cid, b.offerNonce, b.answerNonce, b.offerer, b.answerer, b.offererFp, b.answererFp, new Uint8Array(0)]);
}

// A data channel whose messages are queued from the start (so none is missed before a reader).
export class Channel {
  constructor(pc, dc) {
    this.pc = pc;
    this.dc = dc;
    this.queue = [];
    this.waiters = [];
    this.closed = false;
    this.peer = null;
    dc.binaryType = "arraybuffer";
    dc.onmessage = (ev) => this.push(typeof ev.data === "string" ? null : new Uint8Array(ev.data));
    dc.onclose = () => this.end();
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) this.end();
    });
  }
  push(data) {
    if (data === null) { this.close(); return; }
    const w = this.waiters.shift();
    if (w) w(data); else this.queue.push(data);
  }
  end() {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.splice(0)) w(null);
    this.onclose?.();
  }
  recv() {  // the next message, or null once closed
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  async send(data) {
    while (this.dc.bufferedAmount > 1024 * 1024 && !this.closed) {
      await new Promise((r) => { this.dc.bufferedAmountLowThreshold = 256 * 1024; this.dc.onbufferedamountlow = r; setTimeout(r, 1000); });
    }
    if (this.closed || this.dc.readyState !== "open") throw new PeerAuthError("channel-closed", "channel closed");
    this.dc.send(data);
  }
  close() {
    try { this.dc.close(); } catch { /* closed */ }
    this.pc.close();
    this.end();
  }
}

// Answer a signed offer: {answer (envelope bytes), channel (authenticated when resolved)}.
export async function answer(dev, trust, replay, offerEnvelope, iceServers) {
  const opened = await envelope.open(offerEnvelope, { purpose: "webrtc-offer", me: dev.deviceId, trust, replay });
  if (opened.sender.deviceId === dev.deviceId) throw new PeerAuthError("cert-is-self", "envelope is from ourselves");
  const offer = unpackDescription(opened.payload);
  checkSdp(offer.sdp, offer.fps);
  const pc = new RTCPeerConnection({ iceServers });
  const dc = pc.createDataChannel("handoff", { negotiated: true, id: 0 });
  const channel = new Channel(pc, dc);
  try {
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc, 5000);
    const sdp = pc.localDescription.sdp;
    const ours = sdpFingerprints(sdp);
    const answerNonce = crypto.getRandomValues(new Uint8Array(16));
    const payload = msgpack.encode({ v: 1, cid: offer.cid, sdp, fp: ours, offer_nonce: opened.nonce, bind: BIND_FINGERPRINT });
    const sealed = await envelope.seal(dev, { purpose: "webrtc-answer", recipient: opened.sender.deviceId, payload, nonce: answerNonce });
    const binding = {
      cid: offer.cid, offerNonce: opened.nonce, answerNonce,
      offerer: opened.sender.deviceId, answerer: dev.deviceId,
      offererFp: sha256Of(offer.fps), answererFp: sha256Of(ours),
    };
    const ready = confirmAs("answerer", dev, channel, binding, opened.sender);
    return { answer: sealed, peer: opened.sender, ready };
  } catch (e) {
    channel.close();
    throw e;
  }
}

async function opened(dc, ms) {
  if (dc.readyState === "open") return;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new PeerAuthError("connect-timeout", "the data channel did not open")), ms);
    dc.addEventListener("open", () => { clearTimeout(timer); resolve(); });
    dc.addEventListener("close", () => { clearTimeout(timer); reject(new PeerAuthError("channel-closed", "closed before opening")); });
  });
}

async function confirmAs(role, dev, channel, binding, peer) {
  const peerRole = role === "offerer" ? "answerer" : "offerer";
  try {
    await opened(channel.dc, 30000);
    const sig = await device.sign(dev.privateKey, "webrtc-confirm", bindingBytes(role, binding));
    channel.dc.send(msgpack.encode({ role, fp: [binding.offererFp, binding.answererFp], sig }));
    const data = await channel.recv();
    if (data === null) throw new PeerAuthError("peer-closed-handshake", "peer closed the channel before confirming");
    let c;
    try { c = msgpack.decode(data, { maxStr: 256, maxBin: 64, maxArray: 8, maxMap: 8 }); }
    catch { throw new PeerAuthError("confirm-malformed", "confirmation is not valid msgpack"); }
    if (!c || Object.keys(c).sort().join() !== "fp,role,sig" || !(c.sig instanceof Uint8Array) || !Array.isArray(c.fp)) {
      throw new PeerAuthError("confirm-malformed", "confirmation has the wrong fields");
    }
    if (c.role !== peerRole) throw new PeerAuthError("confirm-wrong-role", "confirmation is from the wrong role");
    if (c.fp.length !== 2 || c.fp[0] !== binding.offererFp || c.fp[1] !== binding.answererFp) {
      throw new PeerAuthError("dtls-fingerprint-mismatch", "peer sees other DTLS fingerprints (man in the middle?)");
    }
    if (!(await verifyWith(peer.key, "webrtc-confirm", bindingBytes(peerRole, binding), c.sig))) {
      throw new PeerAuthError("confirm-bad-signature", "confirmation signature does not verify");
    }
    channel.peer = peer;
    return channel;
  } catch (e) {
    channel.close();
    throw e;
  }
}

export { KIND_OFFER, KIND_ANSWER, equalBytes };

// Requests through the server (our signed offer out, the peer's answer back, matched by ref
// and by the device the server says sent it: only the addressed device can answer).
export class Requests {
  constructor(socket) { this.socket = socket; this.pending = new Map(); }
  request(to, body, ms = 20000) {
    const ref = crypto.getRandomValues(new Uint8Array(REF_LEN));
    const key = b64url(ref);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(key); reject(new PeerAuthError("signaling-timeout", "no answer through the server in time")); }, ms);
      this.pending.set(key, {
        to,
        resolve: (f) => { clearTimeout(timer); resolve(f); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      if (!this.socket.send({ type: "signal", to, id: key, data: encodeSignal(ref, KIND_OFFER, body) })) {
        clearTimeout(timer);
        this.pending.delete(key);
        reject(new PeerAuthError("server-offline", "not connected to the server"));
      }
    });
  }
  refused(ref, error) {  // the server's error for one of our signals (e.g. target-unavailable)
    const p = this.pending.get(ref);
    if (!p) return;
    this.pending.delete(ref);
    p.reject(new PeerAuthError(error.code, error.message));
  }
  answered(from, frame) {  // true if it was the answer to one of ours
    const key = b64url(frame.ref);
    const p = this.pending.get(key);
    if (!p || p.to !== from) return false;
    this.pending.delete(key);
    p.resolve(frame);
    return true;
  }
}

function decodeErrorBody(body) {
  try {
    const e = msgpack.decode(body, { maxStr: 1024, maxBin: 0, maxArray: 0, maxMap: 2 });
    return [String(e.code), String(e.message)];
  } catch { return ["error", "malformed error"]; }
}

// Call a device: our signed offer through the server, its signed answer, the confirmation.
export async function call(dev, trust, replay, requests, peerId, iceServers) {
  const pc = new RTCPeerConnection({ iceServers });
  const dc = pc.createDataChannel("handoff", { negotiated: true, id: 0 });
  const channel = new Channel(pc, dc);
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 5000);
    const sdp = pc.localDescription.sdp;
    const ours = sdpFingerprints(sdp);
    const cid = crypto.getRandomValues(new Uint8Array(16));
    const offerNonce = crypto.getRandomValues(new Uint8Array(16));
    const payload = msgpack.encode({ v: 1, cid, sdp, fp: ours, bind: BIND_FINGERPRINT });
    const sealed = await envelope.seal(dev, { purpose: "webrtc-offer", recipient: peerId, payload, nonce: offerNonce });
    const frame = await requests.request(peerId, sealed);
    if (frame.kind === KIND_ERROR) {
      const [code, message] = decodeErrorBody(frame.body);
      throw new PeerAuthError(code, `the device refused: ${message}`);
    }
    const opened = await envelope.open(frame.body, { purpose: "webrtc-answer", me: dev.deviceId, trust, replay });
    if (opened.sender.deviceId !== peerId) throw new PeerAuthError("cert-wrong-device", "answer is from another device");
    const answer = unpackDescription(opened.payload, true);
    if (!equalBytes(answer.cid, cid) || !answer.offerNonce || !equalBytes(answer.offerNonce, offerNonce)) {
      throw new PeerAuthError("answer-mismatch", "answer is for another offer");
    }
    if (answer.bind !== BIND_FINGERPRINT) throw new PeerAuthError("answer-malformed", "the device did not take the fingerprint binding");
    checkSdp(answer.sdp, answer.fps);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    const binding = {
      cid, offerNonce, answerNonce: opened.nonce, offerer: dev.deviceId, answerer: peerId,
      offererFp: sha256Of(ours), answererFp: sha256Of(answer.fps),
    };
    return await confirmAs("offerer", dev, channel, binding, opened.sender);
  } catch (e) {
    channel.close();
    throw e;
  }
}
