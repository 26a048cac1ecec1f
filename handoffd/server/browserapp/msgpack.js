// msgpack, canonical and strict: written here (no dependency), the subset the protocol uses
// (docs/protocol.md "Encoding"): nil, bool, integers (Number, or BigInt beyond 2^53), str,
// bin (Uint8Array), arrays, maps with string keys (plain objects). No floats, no extensions.
// encode() writes the canonical form: shortest forms, map keys in ascending UTF-8 byte order.
// decode() refuses anything malformed, truncated, too deep, too long, with trailing bytes or
// duplicate keys; decodeCanonical() also refuses what encode() would not have written.

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

export class MsgpackError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.n = 0; }
  need(k) {
    if (this.n + k <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.n + k) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
  }
  byte(b) { this.need(1); this.buf[this.n++] = b; }
  bytes(b) { this.need(b.length); this.buf.set(b, this.n); this.n += b.length; }
  uint(v, width) {  // big-endian, width bytes; v a BigInt
    this.need(width);
    for (let i = width - 1; i >= 0; i--) { this.buf[this.n + i] = Number(v & 0xffn); v >>= 8n; }
    this.n += width;
  }
  result() { return this.buf.slice(0, this.n); }
}

function writeInt(w, value) {
  const v = BigInt(value);
  if (v >= 0n) {
    if (v < 0x80n) w.byte(Number(v));
    else if (v < 0x100n) { w.byte(0xcc); w.uint(v, 1); }
    else if (v < 0x10000n) { w.byte(0xcd); w.uint(v, 2); }
    else if (v < 0x100000000n) { w.byte(0xce); w.uint(v, 4); }
    else if (v < 1n << 64n) { w.byte(0xcf); w.uint(v, 8); }
    else throw new MsgpackError("encode-invalid", "integer too large");
  } else {
    if (v >= -32n) w.byte(Number(v & 0xffn));
    else if (v >= -0x80n) { w.byte(0xd0); w.uint(BigInt.asUintN(8, v), 1); }
    else if (v >= -0x8000n) { w.byte(0xd1); w.uint(BigInt.asUintN(16, v), 2); }
    else if (v >= -0x80000000n) { w.byte(0xd2); w.uint(BigInt.asUintN(32, v), 4); }
    else if (v >= -(1n << 63n)) { w.byte(0xd3); w.uint(BigInt.asUintN(64, v), 8); }
    else throw new MsgpackError("encode-invalid", "integer too small");
  }
}

function writeHeader(w, n, fix, fixMax, c8, c16, c32) {
  if (fix !== null && n <= fixMax) w.byte(fix | n);
  else if (c8 !== null && n < 0x100) { w.byte(c8); w.uint(BigInt(n), 1); }
  else if (n < 0x10000) { w.byte(c16); w.uint(BigInt(n), 2); }
  else { w.byte(c32); w.uint(BigInt(n), 4); }
}

function write(w, value, depth) {
  if (depth > 8) throw new MsgpackError("encode-invalid", "nested too deep");
  if (value === null || value === undefined) w.byte(0xc0);
  else if (value === false) w.byte(0xc2);
  else if (value === true) w.byte(0xc3);
  else if (typeof value === "bigint") writeInt(w, value);
  else if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new MsgpackError("encode-invalid", "no floats");
    writeInt(w, value);
  } else if (typeof value === "string") {
    const b = enc.encode(value);
    writeHeader(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
    w.bytes(b);
  } else if (value instanceof Uint8Array) {
    writeHeader(w, value.length, null, 0, 0xc4, 0xc5, 0xc6);
    w.bytes(value);
  } else if (Array.isArray(value)) {
    writeHeader(w, value.length, 0x90, 15, null, 0xdc, 0xdd);
    for (const v of value) write(w, v, depth + 1);
  } else if (typeof value === "object") {
    const entries = Object.keys(value).filter((k) => value[k] !== undefined)
      .map((k) => [enc.encode(k), k]).sort((a, b) => compareBytes(a[0], b[0]));
    writeHeader(w, entries.length, 0x80, 15, null, 0xde, 0xdf);
    for (const [kb, k] of entries) {
      writeHeader(w, kb.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      w.bytes(kb);
      write(w, value[k], depth + 1);
    }
  } else {
    throw new MsgpackError("encode-invalid", `cannot encode ${typeof value}`);
  }
}

export function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.result();
}

const LIMITS = { maxStr: 1 << 20, maxBin: 1 << 20, maxArray: 4096, maxMap: 64, maxDepth: 8 };

class Reader {
  constructor(data, limits) { this.d = data; this.i = 0; this.l = limits; }
  take(n) {
    if (this.i + n > this.d.length) throw new MsgpackError("decode-malformed", "truncated");
    const out = this.d.subarray(this.i, this.i + n);
    this.i += n;
    return out;
  }
  uint(n) {
    const b = this.take(n);
    let v = 0n;
    for (const x of b) v = (v << 8n) | BigInt(x);
    return v;
  }
  int(n) { return BigInt.asIntN(8 * n, this.uint(n)); }
  len(n, max) {
    const v = Number(this.uint(n));
    if (v > max) throw new MsgpackError("decode-too-long", "value longer than allowed");
    return v;
  }
  num(v) { return v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v; }
  str(n) {
    try { return dec.decode(this.take(n)); } catch (e) {
      if (e instanceof MsgpackError) throw e;
      throw new MsgpackError("decode-malformed", "invalid UTF-8");
    }
  }
  array(n, depth) {
    const out = [];
    for (let k = 0; k < n; k++) out.push(this.value(depth + 1));
    return out;
  }
  map(n, depth) {
    const out = Object.create(null);
    for (let k = 0; k < n; k++) {
      const key = this.value(depth + 1);
      if (typeof key !== "string") throw new MsgpackError("decode-wrong-type", "map key is not a string");
      if (Object.prototype.hasOwnProperty.call(out, key)) throw new MsgpackError("decode-duplicate-key", "repeated map key");
      out[key] = this.value(depth + 1);
    }
    return out;
  }
  value(depth) {
    if (depth > this.l.maxDepth) throw new MsgpackError("decode-too-deep", "nested too deep");
    const l = this.l;
    const b = this.take(1)[0];
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0x80 && b <= 0x8f) return this.map(this.chk(b & 0x0f, l.maxMap), depth);
    if (b >= 0x90 && b <= 0x9f) return this.array(this.chk(b & 0x0f, l.maxArray), depth);
    if (b >= 0xa0 && b <= 0xbf) return this.str(this.chk(b & 0x1f, l.maxStr));
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.len(1, l.maxBin)).slice();
      case 0xc5: return this.take(this.len(2, l.maxBin)).slice();
      case 0xc6: return this.take(this.len(4, l.maxBin)).slice();
      case 0xcc: return this.num(this.uint(1));
      case 0xcd: return this.num(this.uint(2));
      case 0xce: return this.num(this.uint(4));
      case 0xcf: return this.num(this.uint(8));
      case 0xd0: return this.num(this.int(1));
      case 0xd1: return this.num(this.int(2));
      case 0xd2: return this.num(this.int(4));
      case 0xd3: return this.num(this.int(8));
      case 0xd9: return this.str(this.len(1, l.maxStr));
      case 0xda: return this.str(this.len(2, l.maxStr));
      case 0xdb: return this.str(this.len(4, l.maxStr));
      case 0xdc: return this.array(this.len(2, l.maxArray), depth);
      case 0xdd: return this.array(this.len(4, l.maxArray), depth);
      case 0xde: return this.map(this.len(2, l.maxMap), depth);
      case 0xdf: return this.map(this.len(4, l.maxMap), depth);
      case 0xc1: throw new MsgpackError("decode-malformed", "reserved byte");
      case 0xca: case 0xcb: throw new MsgpackError("decode-wrong-type", "floats are not allowed");
      default: throw new MsgpackError("decode-ext-type", "extension types are not allowed");
    }
  }
  chk(n, max) {
    if (n > max) throw new MsgpackError("decode-too-long", "value longer than allowed");
    return n;
  }
}

export function decode(data, limits = {}) {
  const r = new Reader(data, { ...LIMITS, ...limits });
  const value = r.value(0);
  if (r.i !== data.length) throw new MsgpackError("decode-trailing-bytes", "bytes after the value");
  return value;
}

export function decodeCanonical(data, limits = {}) {
  const value = decode(data, limits);
  if (compareBytes(encode(value), data) !== 0) {
    throw new MsgpackError("decode-non-canonical", "not in canonical form");
  }
  return value;
}
