#!/usr/bin/env python3
"""Finds import cycles between the source files of the workspace's crates.

Each `.rs` file under a crate's `src/` is one module. An edge A -> B means that A names B by a
`crate::…` or `super::…` path (outside comments and `#[cfg(test)]` modules), or by a path that
starts with one of A's own submodules. Edges between a module and its own ancestor are not
counted: a parent declaring a child that uses the parent's private helpers is how Rust splits a
module into files. Every other cycle is reported, except those that all pass through a module
listed in HUBS: the axum pattern of an `AppState` in `app.rs` that handlers, extractors and the
web module take while the router in the same file names them.

Usage: scripts/check-module-cycles.py [CRATE_DIR …]   (default: shared protocol gateway chat-api
loadtest client). Exits 1 when a cycle that is not allowed is found.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CRATES = ["protocol", "shared", "gateway", "chat-api", "loadtest", "client"]

# Per crate, the modules every allowed cycle passes through.
HUBS = {
    # The router (app) names the handlers (api::*, web), which take the router's AppState.
    "chat-api": [("app",)],
}

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([A-Za-z_][A-Za-z0-9_]*)((?:::[A-Za-z_{][^;]*)?)")
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)


def strip(text):
    """Drops comments and the `#[cfg(test)] mod tests { … }` blocks."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    i = 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def modules(src):
    """Maps module path (tuple) -> file, for every file of the crate under `src`."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            if rel and rel[0] == "bin":
                continue
            mods[tuple(rel)] = os.path.join(dirpath, f)
    return mods


def resolve(mods, path):
    """The longest prefix of `path` that is a file module."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def edges(mods):
    out = {m: set() for m in mods}
    for mod, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        children = set(MOD_RE.findall(text))
        targets = []
        for head, rest in PATH_RE.findall(text):
            segs = [s for s in rest.split("::") if s]
            if head == "crate":
                base = []
            elif head == "self":
                base = list(mod)
            else:
                base = list(mod[:-1])
                while segs and segs[0] == "super":
                    base = base[:-1]
                    segs = segs[1:]
            targets.append(base + segs)
        for line in text.splitlines():
            m = USE_RE.match(line)
            if m and m.group(1) in children:
                targets.append(list(mod) + [m.group(1)])
        for t in targets:
            r = resolve(mods, t)
            if r is None or r == mod:
                continue
            # Parent and child (or any ancestor and descendant): not a cycle worth reporting.
            if r[: len(mod)] == mod or mod[: len(r)] == r:
                continue
            out[mod].add(r)
    return out


def sccs(graph):
    index, low, stack, on, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            result.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in result if len(c) > 1]


def through_hubs(graph, comp, hubs):
    """Whether every cycle of `comp` passes through one of `hubs` (none is left without them)."""
    rest = [m for m in comp if m not in hubs]
    sub = {m: {w for w in graph[m] if w in rest} for m in rest}
    return any(h in comp for h in hubs) and not sccs(sub)


def main(argv):
    crates = argv or DEFAULT_CRATES
    bad = 0
    for crate in crates:
        mods = modules(os.path.join(ROOT, crate, "src"))
        graph = edges(mods)
        for comp in sccs(graph):
            names = sorted("::".join(m) or "(root)" for m in comp)
            allowed = through_hubs(graph, comp, HUBS.get(crate, []))
            print(f"{crate}: {'allowed' if allowed else 'CYCLE'}: {' <-> '.join(names)}")
            bad += not allowed
    if bad:
        print(f"{bad} import cycle(s) between files")
        return 1
    print("no import cycles between files (besides the allowed ones)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
