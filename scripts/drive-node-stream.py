#!/usr/bin/env python3
"""Gateway CPU per delivery without chat-api: appends envelopes straight to a gateway's node
stream at a fixed rate (raw RESP, pipelined; no Redis client library needed) and reports the
gateway process's CPU (utime+stime from /proc) per message and delivered frames per CPU-second.

usage: drive-node-stream.py REDIS_PORT NODE_ID GATEWAY_PID USERS FANOUT RATE SECONDS [PREFIX]

Recipients are PREFIX0 … PREFIX(USERS-1) (default `lt-0-`, the users of a one-process
`loadtest connect --encoding msgpack`), FANOUT per envelope. The payload is opaque bytes the size
of a typical `message` frame: MessagePack sockets get it as it is (JSON sockets would need a real
frame to transcode). Envelopes go out every TICK_S seconds (default 0.005), all those due at
once in one pipelined write: a smaller tick spreads them out (at most one per tick at
RATE ≤ 1/TICK_S). Docs: docs/BENCHMARKS.md, "Gateway CPU per delivery"."""
import os, socket, sys, time

def fixstr(s):
    b = s.encode()
    assert len(b) < 32
    return bytes([0xa0 | len(b)]) + b

def msgpack_strs(users):
    n = len(users)
    head = bytes([0x90 | n]) if n < 16 else (b'\xdc' + n.to_bytes(2, 'big'))
    return head + b''.join(fixstr(u) for u in users)

def resp(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)

def cpu_ticks(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)

def main():
    port, node, pid, users_n, fanout, rate, secs = sys.argv[1:8]
    users_n, fanout, rate, secs = int(users_n), int(fanout), int(rate), float(secs)
    prefix = sys.argv[8] if len(sys.argv) > 8 else 'lt-0-'
    users = [f'{prefix}{i}' for i in range(users_n)]
    # A payload the size of a typical `message` frame (~230 bytes), not a presence frame.
    payload = b'\x81\xa4type\xa7message' + b'\xa4body\xda\x00\xc8' + b'x' * 200
    groups = [users[i:i + fanout] for i in range(0, users_n - fanout + 1, fanout)] or [users]
    cmds = [resp('XADD', f'gw:{{{node}}}:stream', 'MAXLEN', '~', '100000', '*', 'r', msgpack_strs(g), 'p', payload) for g in groups]
    s = socket.create_connection(('127.0.0.1', int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hz = os.sysconf('SC_CLK_TCK')
    t0 = time.time(); c0 = cpu_ticks(pid)
    sent = 0; tick = float(os.environ.get('TICK_S', '0.005')); nxt = t0; i = 0
    buf = b''
    while True:
        now = time.time()
        if now - t0 >= secs:
            break
        due = int((now - t0) * rate) - sent
        if due > 0:
            batch = []
            for _ in range(due):
                batch.append(cmds[i % len(cmds)]); i += 1
            s.sendall(b''.join(batch)); sent += due
        # drain replies
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if not d: break
        except BlockingIOError:
            pass
        s.setblocking(True)
        time.sleep(tick)
    time.sleep(1.0)  # let the gateway finish the tail
    c1 = cpu_ticks(pid); t1 = time.time()
    cpu_s = (c1 - c0) / hz
    frames = sent * len(groups[0])
    print(f'sent {sent} envelopes x {len(groups[0])} recipients in {t1-t0:.1f}s; gateway CPU {cpu_s:.2f}s; '
          f'{cpu_s/sent*1e6:.1f} us/message; {frames/cpu_s if cpu_s else 0:.0f} frames per CPU-second')

main()
