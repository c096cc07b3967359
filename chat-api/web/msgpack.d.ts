// Types of the MessagePack codec (msgpack.js).
export declare function encode(value: unknown): Uint8Array;
export declare function decode(bytes: Uint8Array | ArrayBuffer): unknown;
