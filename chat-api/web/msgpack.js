// A small MessagePack codec for the chat protocol's frames: nil, booleans, integers, floats,
// strings, binary, arrays and maps. Written for this project so that the browser client has no
// run-time dependency. Integers beyond 2^53 decode to BigInt (the protocol sends ids as strings,
// so frames never need them). Extension types are refused.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** Encodes a JSON-like value as MessagePack. */
export function encode(value) {
  const out = new Writer();
  writeValue(out, value, 0);
  return out.finish();
}

/** Decodes one MessagePack value; throws on truncated input, trailing bytes or unknown types. */
export function decode(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const reader = new Reader(view);
  const value = reader.value(0);
  if (reader.pos !== view.length) throw new Error("msgpack: trailing bytes after the value");
  return value;
}

const MAX_DEPTH = 64;

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }
  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v) { this.ensure(1); this.buf[this.pos++] = v; }
  u16(v) { this.ensure(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.ensure(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.ensure(b.length); this.buf.set(b, this.pos); this.pos += b.length; }
  finish() { return this.buf.slice(0, this.pos); }
}

function writeValue(w, v, depth) {
  if (depth > MAX_DEPTH) throw new Error("msgpack: value nested too deeply");
  if (v === null || v === undefined) return w.u8(0xc0);
  if (v === false) return w.u8(0xc2);
  if (v === true) return w.u8(0xc3);
  if (typeof v === "number") return writeNumber(w, v);
  if (typeof v === "bigint") return writeBigInt(w, v);
  if (typeof v === "string") return writeString(w, v);
  if (v instanceof Uint8Array) return writeBin(w, v);
  if (Array.isArray(v)) {
    writeHeader(w, v.length, 0x90, 0xdc, 0xdd, 15);
    for (const item of v) writeValue(w, item, depth + 1);
    return;
  }
  if (typeof v === "object") {
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    writeHeader(w, keys.length, 0x80, 0xde, 0xdf, 15);
    for (const k of keys) {
      writeString(w, k);
      writeValue(w, v[k], depth + 1);
    }
    return;
  }
  throw new Error(`msgpack: cannot encode a ${typeof v}`);
}

function writeHeader(w, n, fix, t16, t32, fixMax) {
  if (n <= fixMax) w.u8(fix | n);
  else if (n <= 0xffff) { w.u8(t16); w.u16(n); }
  else { w.u8(t32); w.u32(n); }
}

function writeNumber(w, n) {
  if (Number.isSafeInteger(n)) {
    if (n >= 0) {
      if (n < 0x80) return w.u8(n);
      if (n <= 0xff) { w.u8(0xcc); return w.u8(n); }
      if (n <= 0xffff) { w.u8(0xcd); return w.u16(n); }
      if (n <= 0xffffffff) { w.u8(0xce); return w.u32(n); }
      return writeBigInt(w, BigInt(n));
    }
    if (n >= -32) return w.u8(n & 0xff);
    if (n >= -0x80) { w.u8(0xd0); w.ensure(1); w.view.setInt8(w.pos, n); w.pos += 1; return; }
    if (n >= -0x8000) { w.u8(0xd1); w.ensure(2); w.view.setInt16(w.pos, n); w.pos += 2; return; }
    if (n >= -0x80000000) { w.u8(0xd2); w.ensure(4); w.view.setInt32(w.pos, n); w.pos += 4; return; }
    return writeBigInt(w, BigInt(n));
  }
  w.u8(0xcb);
  w.ensure(8);
  w.view.setFloat64(w.pos, n);
  w.pos += 8;
}

function writeBigInt(w, n) {
  w.ensure(9);
  if (n >= 0n) {
    if (n > 0xffffffffffffffffn) throw new Error("msgpack: integer above 2^64-1");
    w.buf[w.pos++] = 0xcf;
    w.view.setBigUint64(w.pos, n);
  } else {
    if (n < -0x8000000000000000n) throw new Error("msgpack: integer below -2^63");
    w.buf[w.pos++] = 0xd3;
    w.view.setBigInt64(w.pos, n);
  }
  w.pos += 8;
}

function writeString(w, s) {
  const b = textEncoder.encode(s);
  if (b.length < 32) w.u8(0xa0 | b.length);
  else if (b.length <= 0xff) { w.u8(0xd9); w.u8(b.length); }
  else if (b.length <= 0xffff) { w.u8(0xda); w.u16(b.length); }
  else { w.u8(0xdb); w.u32(b.length); }
  w.bytes(b);
}

function writeBin(w, b) {
  if (b.length <= 0xff) { w.u8(0xc4); w.u8(b.length); }
  else if (b.length <= 0xffff) { w.u8(0xc5); w.u16(b.length); }
  else { w.u8(0xc6); w.u32(b.length); }
  w.bytes(b);
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.bytes.length) throw new Error("msgpack: truncated input");
  }
  u8() { this.need(1); return this.bytes[this.pos++]; }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }
  take(n) { this.need(n); const b = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return b; }
  str(n) { return textDecoder.decode(this.take(n)); }
  big(signed) {
    this.need(8);
    const v = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  // Every element takes at least one byte: a count above what is left is a lie, refused before
  // anything is allocated for it.
  count(n) {
    if (n > this.bytes.length - this.pos) throw new Error("msgpack: truncated input");
    return n;
  }
  array(n, depth) {
    this.count(n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }
  map(n, depth) {
    this.count(n);
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = this.value(depth + 1);
      if (typeof key !== "string" && typeof key !== "number") throw new Error("msgpack: map key must be a string or number");
      Object.defineProperty(out, String(key), { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  value(depth) {
    if (depth > MAX_DEPTH) throw new Error("msgpack: value nested too deeply");
    const t = this.u8();
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0x80 && t <= 0x8f) return this.map(t & 0x0f, depth);
    if (t >= 0x90 && t <= 0x9f) return this.array(t & 0x0f, depth);
    if (t >= 0xa0 && t <= 0xbf) return this.str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.u8()).slice();
      case 0xc5: return this.take(this.u16()).slice();
      case 0xc6: return this.take(this.u32()).slice();
      case 0xca: { this.need(4); const v = this.view.getFloat32(this.pos); this.pos += 4; return v; }
      case 0xcb: { this.need(8); const v = this.view.getFloat64(this.pos); this.pos += 8; return v; }
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.big(false);
      case 0xd0: { this.need(1); const v = this.view.getInt8(this.pos); this.pos += 1; return v; }
      case 0xd1: { this.need(2); const v = this.view.getInt16(this.pos); this.pos += 2; return v; }
      case 0xd2: { this.need(4); const v = this.view.getInt32(this.pos); this.pos += 4; return v; }
      case 0xd3: return this.big(true);
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default: throw new Error(`msgpack: unsupported type byte 0x${t.toString(16)}`);
    }
  }
}
