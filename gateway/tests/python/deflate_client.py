"""A Python `websockets` client for gateway/tests/deflate.rs: connects with the library's own
permessage-deflate offer (or, with `window12`, one that limits the server's window to 2^12 bytes),
then checks that frames arrive compressed and that the ones it sends compressed are understood.

Usage: deflate_client.py URL default|window12
Prints `ready <Sec-WebSocket-Extensions answer>` after `hello`, waits for an `event` frame that
the test publishes, and prints `ok received_compressed=N sent_compressed=M`; exits non-zero on
any failure (3: the websockets package is missing).
"""

import json
import sys

try:
    from websockets.extensions import permessage_deflate as pmd
    from websockets.sync.client import connect
except ImportError:
    print("the Python websockets package is missing: pip install websockets", file=sys.stderr)
    sys.exit(3)

counts = {"received": 0, "sent": 0}
_decode = pmd.PerMessageDeflate.decode
_encode = pmd.PerMessageDeflate.encode


def decode(self, frame, *args, **kwargs):
    if frame.rsv1:
        counts["received"] += 1
    return _decode(self, frame, *args, **kwargs)


def encode(self, frame):
    out = _encode(self, frame)
    if out.rsv1:
        counts["sent"] += 1
    return out


pmd.PerMessageDeflate.decode = decode
pmd.PerMessageDeflate.encode = encode


def main():
    url, mode = sys.argv[1], sys.argv[2]
    kwargs = {}
    if mode == "window12":
        kwargs["extensions"] = [
            pmd.ClientPerMessageDeflateFactory(
                server_max_window_bits=12, client_max_window_bits=12
            )
        ]
        kwargs["compression"] = None
    with connect(url, open_timeout=10, **kwargs) as ws:
        answer = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert answer and answer.startswith("permessage-deflate"), answer
        assert ws.protocol.extensions, "no extension in use"
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello", hello
        print(f"ready {answer}", flush=True)
        ws.send(json.dumps({"type": "ping", "pad": "x" * 200}))
        seen = set()
        while seen != {"pong", "event"}:
            frame = json.loads(ws.recv(timeout=10))
            seen.add(frame["type"])
            if frame["type"] == "event":
                assert frame["event"]["kind"] == "order.updated", frame
        assert counts["sent"] >= 1, counts
        assert counts["received"] >= 1, counts
        print(f"ok received_compressed={counts['received']} sent_compressed={counts['sent']}", flush=True)


main()
