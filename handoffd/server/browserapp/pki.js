// Device certificates and CRLs of the account (X.509, DER), checked in the page as
// handoffd/identity/verify.py checks them: chain to the pinned account CA (its Ed25519
// signature, verified by WebCrypto), validity with clock skew, not a CA, one device and one
// account URN, device id = the key's, not revoked by the newest CRL. A small strict DER reader.
import { concat, fromPem, hex, utf8 } from "./bytes.js";
import { deviceIdOf } from "./device.js";

const SKEW_MS = 5 * 60 * 1000;
const DEVICE_URN = "urn:handoff:device:";
const ACCOUNT_URN = "urn:handoff:account:";
const OID = {
  ed25519: "1.3.101.112", san: "2.5.29.17", basic: "2.5.29.19", crlNumber: "2.5.29.20",
};

export class CertError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const bad = (msg) => new CertError("cert-malformed", msg);

// One DER TLV at data[at]: {tag, start, body, end}; definite lengths only.
function tlv(data, at, end = data.length) {
  if (at + 2 > end) throw bad("truncated DER");
  const tag = data[at];
  let len = data[at + 1];
  let p = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || p + n > end) throw bad("bad DER length");
    len = 0;
    for (let k = 0; k < n; k++) len = len * 256 + data[p + k];
    p += n;
  }
  if (p + len > end) throw bad("DER value runs past its container");
  return { tag, start: at, bodyStart: p, end: p + len, data };
}

const body = (n) => n.data.subarray(n.bodyStart, n.end);
const raw = (n) => n.data.subarray(n.start, n.end);

function children(n) {
  const out = [];
  for (let at = n.bodyStart; at < n.end;) {
    const c = tlv(n.data, at, n.end);
    out.push(c);
    at = c.end;
  }
  return out;
}

function expect(n, tag, what) {
  if (!n || n.tag !== tag) throw bad(`expected ${what}`);
  return n;
}

function oidText(n) {
  const b = body(expect(n, 0x06, "an OID"));
  const parts = [Math.floor(b[0] / 40), b[0] % 40];
  let v = 0;
  for (let k = 1; k < b.length; k++) {
    v = v * 128 + (b[k] & 0x7f);
    if (!(b[k] & 0x80)) { parts.push(v); v = 0; }
  }
  return parts.join(".");
}

function integerHex(n) {
  let b = body(expect(n, 0x02, "an INTEGER"));
  while (b.length > 1 && b[0] === 0) b = b.subarray(1);
  return hex(b);
}

function time(n) {
  const s = new TextDecoder().decode(body(n));
  let m;
  if (n.tag === 0x17 && (m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s))) {
    const y = Number(m[1]);
    return Date.UTC(y < 50 ? 2000 + y : 1900 + y, m[2] - 1, m[3], m[4], m[5], m[6]);
  }
  if (n.tag === 0x18 && (m = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s))) {
    return Date.UTC(Number(m[1]), m[2] - 1, m[3], m[4], m[5], m[6]);
  }
  throw bad("bad time");
}

function extensions(n) {
  const out = new Map();
  for (const ext of children(expect(n, 0x30, "extensions"))) {
    const f = children(ext);
    const id = oidText(f[0]);
    const value = f[f.length - 1];
    expect(value, 0x04, "an extension value");
    out.set(id, tlv(value.data, value.bodyStart, value.end));
  }
  return out;
}

function uris(san) {
  return children(expect(san, 0x30, "SAN")).filter((g) => g.tag === 0x86)
    .map((g) => new TextDecoder().decode(body(g)));
}

// Parse a certificate (DER). Fields read here are all a check needs.
export function parseCert(der) {
  if (der.length > 8 * 1024) throw bad("certificate too large");
  const top = tlv(der, 0);
  if (top.end !== der.length) throw bad("bytes after the certificate");
  const [tbs, alg, sig] = children(expect(top, 0x30, "a certificate"));
  let f = children(expect(tbs, 0x30, "tbsCertificate"));
  if (f[0].tag === 0xa0) f = f.slice(1);
  const [serial, , issuer, validity, subject, spki, ...rest] = f;
  const [notBefore, notAfter] = children(expect(validity, 0x30, "validity"));
  const [keyAlg, keyBits] = children(expect(spki, 0x30, "a public key"));
  const ext = rest.find((n) => n.tag === 0xa3);
  const sigBits = body(expect(sig, 0x03, "a signature"));
  const keyBytes = body(expect(keyBits, 0x03, "a key"));
  return {
    der, tbs: raw(tbs), serial: integerHex(serial),
    sigAlg: oidText(children(alg)[0]), signature: sigBits.subarray(1),
    issuer: hex(raw(issuer)), subject: hex(raw(subject)),
    notBefore: time(notBefore), notAfter: time(notAfter),
    keyAlg: oidText(children(keyAlg)[0]), key: keyBytes.subarray(1),
    extensions: ext ? extensions(children(ext)[0]) : new Map(),
  };
}

async function ed25519Verify(key, signature, data) {
  const k = await crypto.subtle.importKey("raw", key, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, k, signature, data);
}

// The trust anchor: the account CA (from the join), and the newest verified CRL.
export async function anchor(caPem, crlDer) {
  const ca = parseCert(fromPem(caPem, "CERTIFICATE"));
  const san = ca.extensions.get(OID.san);
  const accounts = san ? uris(san).filter((u) => u.startsWith(ACCOUNT_URN)) : [];
  if (accounts.length !== 1 || ca.keyAlg !== OID.ed25519) throw bad("not an account CA");
  const trust = { ca, accountId: accounts[0].slice(ACCOUNT_URN.length), crl: null };
  if (crlDer) trust.crl = await parseCrl(crlDer, trust);
  return trust;
}

// A CRL signed by the account CA: {number, revoked: Set of serial hex}.
export async function parseCrl(der, trust) {
  if (der.length > 4 * 1024 * 1024) throw bad("CRL too large");
  const top = tlv(der, 0);
  const [tbs, alg, sig] = children(expect(top, 0x30, "a CRL"));
  let f = children(expect(tbs, 0x30, "tbsCertList"));
  if (f[0].tag === 0x02) f = f.slice(1);
  const [, issuer] = f;
  if (hex(raw(issuer)) !== trust.ca.subject) throw new CertError("crl-wrong-issuer", "CRL of another account");
  if (oidText(children(alg)[0]) !== OID.ed25519) throw bad("CRL is not Ed25519-signed");
  const ok = await ed25519Verify(trust.ca.key, body(expect(sig, 0x03, "a signature")).subarray(1), raw(tbs));
  if (!ok) throw new CertError("crl-signature-invalid", "CRL signature does not verify");
  const revoked = new Set();
  let number = 0n;
  for (const n of f.slice(3)) {  // after signature, issuer, thisUpdate
    if (n.tag === 0x30) {
      for (const entry of children(n)) revoked.add(integerHex(children(entry)[0]));
    } else if (n.tag === 0xa0) {
      const exts = extensions(children(n)[0]);
      const num = exts.get(OID.crlNumber);
      if (num) number = BigInt("0x" + integerHex(num));
    }
  }
  return { number, revoked, der };
}

// Check a peer's device certificate; its identity {deviceId, accountId, serial, key, notAfter}.
export async function verifyDeviceCert(der, trust, { now = Date.now(), expected = null, self = null } = {}) {
  let c;
  try { c = parseCert(der); } catch (e) { throw e instanceof CertError ? e : bad("certificate does not parse"); }
  if (c.issuer !== trust.ca.subject) throw new CertError("cert-wrong-account", "certificate is from another account");
  if (c.sigAlg !== OID.ed25519 || !(await ed25519Verify(trust.ca.key, c.signature, c.tbs))) {
    throw new CertError("cert-signature-invalid", "certificate signature does not verify (tampered?)");
  }
  if (now + SKEW_MS < c.notBefore) throw new CertError("cert-not-yet-valid", "certificate is not yet valid");
  if (now - SKEW_MS > c.notAfter) throw new CertError("cert-expired", "certificate has expired");
  const basic = c.extensions.get(OID.basic);
  if (!basic) throw new CertError("cert-invalid", "certificate lacks basic constraints");
  const bc = children(basic);
  if (bc.length && bc[0].tag === 0x01 && body(bc[0])[0] !== 0) throw new CertError("cert-invalid", "a CA certificate is not a device");
  const san = c.extensions.get(OID.san);
  const all = san ? uris(san) : [];
  const devices = all.filter((u) => u.startsWith(DEVICE_URN)).map((u) => u.slice(DEVICE_URN.length));
  const accounts = all.filter((u) => u.startsWith(ACCOUNT_URN)).map((u) => u.slice(ACCOUNT_URN.length));
  if (devices.length !== 1 || accounts.length !== 1) throw new CertError("cert-invalid", "certificate must name one device and one account");
  if (accounts[0] !== trust.accountId) throw new CertError("cert-wrong-account", "certificate is from another account");
  if (c.keyAlg !== OID.ed25519 || c.key.length !== 32) throw new CertError("cert-invalid", "device key is not Ed25519");
  if (devices[0] !== (await deviceIdOf(c.key))) throw new CertError("cert-device-id-mismatch", "certificate's device id does not match its key");
  if (trust.crl && trust.crl.revoked.has(c.serial)) throw new CertError("cert-revoked", "certificate has been revoked");
  if (expected !== null && devices[0] !== expected) throw new CertError("cert-wrong-device", "certificate is for another device");
  if (self !== null && devices[0] === self) throw new CertError("cert-is-self", "certificate is our own");
  return { deviceId: devices[0], accountId: accounts[0], serial: c.serial, key: c.key, notAfter: c.notAfter };
}

export async function verifyWith(key, purpose, data, signature) {
  const msg = concat(utf8("handoff/v1/" + purpose), Uint8Array.of(0), data);
  return ed25519Verify(key, signature, msg);
}
