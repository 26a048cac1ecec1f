// A minimal DER encoder, enough for the device's PKCS#10 certificate request.
// The signature itself is WebCrypto's (Ed25519); nothing here is cryptography.
import { concat, utf8 } from "./bytes.js";

function length(n) {
  if (n < 0x80) return Uint8Array.of(n);
  const bytes = [];
  while (n > 0) { bytes.unshift(n & 0xff); n >>>= 8; }
  return Uint8Array.of(0x80 | bytes.length, ...bytes);
}

export const tlv = (tag, ...content) => {
  const body = concat(...content);
  return concat(Uint8Array.of(tag), length(body.length), body);
};
export const seq = (...c) => tlv(0x30, ...c);
export const set = (...c) => tlv(0x31, ...c);
export const integer0 = () => Uint8Array.of(0x02, 0x01, 0x00);

export function oid(text) {
  const parts = text.split(".").map(Number);
  const out = [40 * parts[0] + parts[1]];
  for (const p of parts.slice(2)) {
    const chunk = [p & 0x7f];
    let v = p >>> 7;
    while (v > 0) { chunk.unshift(0x80 | (v & 0x7f)); v >>>= 7; }
    out.push(...chunk);
  }
  return tlv(0x06, Uint8Array.from(out));
}

const OID_CN = "2.5.4.3";
const OID_EXT_REQUEST = "1.2.840.113549.1.9.14";
const OID_SAN = "2.5.29.17";
const OID_ED25519 = "1.3.101.112";
export const DEVICE_URN = "urn:handoff:device:";

// The CertificationRequestInfo the device signs: CN = device id, SAN URI urn:handoff:device:<id>
// (what handoffd.identity.make_csr builds for a daemon).
export function csrInfo(deviceId, spki) {
  const subject = seq(set(seq(oid(OID_CN), tlv(0x0c, utf8(deviceId)))));
  const san = seq(tlv(0x86, utf8(DEVICE_URN + deviceId)));
  const extensions = seq(seq(oid(OID_SAN), tlv(0x04, san)));
  const attributes = tlv(0xa0, seq(oid(OID_EXT_REQUEST), set(extensions)));
  return seq(integer0(), subject, spki, attributes);
}

export function csr(info, signature) {
  return seq(info, seq(oid(OID_ED25519)), tlv(0x03, Uint8Array.of(0), signature));
}
