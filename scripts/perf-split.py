#!/usr/bin/env python3
"""Splits a gateway profile's samples into user space, the sender's own kernel work and the
receiver's TCP input that loopback runs in the sender's context (docs/BENCHMARKS.md, "Gateway
CPU per delivery"). On loopback, a write's skb is handed to the receiving socket from the
sender's softirq (net_rx_action → process_backlog → ip_rcv → tcp_v4_rcv → tcp_rcv_established →
sock_def_readable); on a real network that work runs on the client's host.

usage: perf script -i perf.data | scripts/perf-split.py

A sample counts as receiver-side when any frame of its stack is one of RECEIVE_FRAMES, as
kernel (sender) when its top frame is in the kernel, as user space otherwise."""
import sys

RECEIVE_FRAMES = {
    'net_rx_action', 'process_backlog', '__netif_receive_skb', '__netif_receive_skb_core',
    '__netif_receive_skb_one_core', 'ip_rcv', 'ip_local_deliver', 'tcp_v4_rcv',
}

def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip('\n')
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith((' ', '\t')):
            parts = line.split()
            if len(parts) >= 2:
                sym = parts[1].split('+')[0]
                dso = parts[-1]
                stack.append((sym, dso))
        else:
            stack = []
    if stack:
        yield stack

def main():
    counts = {'user': 0, 'kernel (sender)': 0, 'kernel (receiver TCP input)': 0}
    for stack in samples(sys.stdin):
        if any(sym in RECEIVE_FRAMES for sym, _ in stack):
            counts['kernel (receiver TCP input)'] += 1
        elif 'kernel' in stack[0][1]:
            counts['kernel (sender)'] += 1
        else:
            counts['user'] += 1
    total = sum(counts.values()) or 1
    for k, v in counts.items():
        print(f'{k:30} {v:7} {100 * v / total:5.1f} %')
    print(f'{"total":30} {total:7}')

main()
