// Signed envelopes between two devices of the account (handoffd/envelope.py): seal and open,
// with the replay cache. Wire: msgpack {body, cert, sig}; body = [context, sender, recipient,
// nonce(16), issued_ms, expires_ms, payload]; sig = Ed25519 over "handoff/v1/envelope\0" + body.
import { equalBytes, fromPem } from "./bytes.js";
import * as device from "./device.js";
import * as msgpack from "./msgpack.js";
import { CertError, verifyDeviceCert, verifyWith } from "./pki.js";

const MAX_ENVELOPE = 256 * 1024;
const MAX_LIFETIME_MS = 60000;
const SKEW_MS = 30000;

export class EnvelopeError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Nonces seen until their envelopes expire (bounded; fails closed when full).
export class ReplayCache {
  constructor(max = 10000) { this.max = max; this.seen = new Map(); }
  check(sender, nonce, forgetAt, now) {
    for (const [k, t] of this.seen) if (t < now) this.seen.delete(k);
    const key = sender + ":" + Array.from(nonce).join(",");
    if (this.seen.has(key)) throw new EnvelopeError("envelope-replayed", "envelope was already used (replay)");
    if (this.seen.size >= this.max) throw new EnvelopeError("envelope-replay-cache-full", "too many envelopes in flight");
    this.seen.set(key, forgetAt);
  }
}

const malformed = (m) => new EnvelopeError("envelope-malformed", m);

export async function open(data, { purpose, me, trust, replay, now = device.serverNow() }) {
  if (data.length > MAX_ENVELOPE) throw new EnvelopeError("envelope-oversize", "envelope is too large");
  let outer, fields;
  try {
    outer = msgpack.decode(data, { maxStr: 4096, maxBin: MAX_ENVELOPE, maxArray: 16, maxMap: 8 });
  } catch { throw malformed("envelope is not valid msgpack"); }
  if (!outer || typeof outer !== "object" || Array.isArray(outer) || outer instanceof Uint8Array
      || Object.keys(outer).sort().join() !== "body,cert,sig") throw malformed("envelope must be a map of body, cert, sig");
  const { body, cert, sig } = outer;
  if (![body, cert, sig].every((x) => x instanceof Uint8Array)) throw malformed("envelope fields must be bytes");
  try {
    fields = msgpack.decode(body, { maxStr: 4096, maxBin: MAX_ENVELOPE, maxArray: 16, maxMap: 8 });
  } catch { throw malformed("envelope body is not valid msgpack"); }
  if (!Array.isArray(fields) || fields.length !== 7) throw malformed("envelope body must be an array of 7");
  const [context, sender, to, nonce, issued, expires, payload] = fields;
  if (typeof context !== "string" || typeof sender !== "string" || typeof to !== "string"
      || !(nonce instanceof Uint8Array) || typeof issued !== "number" || typeof expires !== "number"
      || !(payload instanceof Uint8Array)) throw malformed("envelope body has a field of the wrong type");
  if (nonce.length !== 16) throw malformed("envelope nonce must be 16 bytes");
  if (context !== "handoff/v1/" + purpose) throw new EnvelopeError("envelope-wrong-context", "envelope is for another purpose");
  let peer;
  try {
    peer = await verifyDeviceCert(cert, trust, { now });
  } catch (e) {
    if (e instanceof CertError) throw new EnvelopeError(e.code, e.message);
    throw e;
  }
  if (peer.deviceId !== sender) throw new EnvelopeError("envelope-sender-mismatch", "envelope sender is not its certificate");
  if (!(await verifyWith(peer.key, "envelope", body, sig))) throw new EnvelopeError("envelope-bad-signature", "envelope signature is invalid");
  if (to !== me) throw new EnvelopeError("envelope-wrong-recipient", "envelope is addressed to another device");
  if (!(expires - issued > 0 && expires - issued <= MAX_LIFETIME_MS)) throw new EnvelopeError("envelope-lifetime", "envelope lifetime exceeds 60 s");
  if (issued > now + SKEW_MS) throw new EnvelopeError("envelope-not-yet-valid", "envelope is issued in the future");
  if (now > expires + SKEW_MS) throw new EnvelopeError("envelope-expired", "envelope has expired");
  replay.check(sender, nonce, expires + SKEW_MS, now);
  return { sender: peer, payload, nonce, cert };
}

export async function seal(dev, { purpose, recipient, payload, nonce, lifetimeMs = 30000 }) {
  const issued = device.serverNow();
  const body = msgpack.encode(["handoff/v1/" + purpose, dev.deviceId, recipient, nonce, issued, issued + lifetimeMs, payload]);
  const sig = await device.sign(dev.privateKey, "envelope", body);
  return msgpack.encode({ body, cert: fromPem(dev.deviceCert, "CERTIFICATE"), sig });
}

export { equalBytes };
