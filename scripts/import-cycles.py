#!/usr/bin/env python3
"""File-level import cycles inside one crate: every `crate::a::b` or `super::b` path (use lines and
inline paths, one level of braces) is an edge from the file to the file of module `a::b` (or of
`a`, or the crate root); prints the strongly connected components with more than one file.
Usage: import-cycles.py CRATE/src"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
files = {}
for root, _, names in os.walk(src):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3]
            mod = "" if rel in ("lib", "main") else rel.replace(os.sep, "::").removesuffix("::mod")
            files.setdefault(mod, path)


def resolve(parts):
    """The longest module prefix of `parts` that is a file."""
    for n in range(len(parts), 0, -1):
        m = "::".join(parts[:n])
        if m in files:
            return m
    return ""


def paths(text, mod):
    # `super::` is the parent of this file's module; expand `crate::{a, b::c}` one level, then
    # collect `crate::x::y` paths.
    parent = mod.split("::")[:-1] if mod else []
    out = []
    for group in re.finditer(r"\b(crate|super)::\{([^}]*)\}", text):
        base = [] if group.group(1) == "crate" else parent
        for item in group.group(2).split(","):
            item = item.strip().split(" as ")[0]
            if item and item not in ("self", "*"):
                out.append(base + item.split("::"))
    for p in re.finditer(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        base = [] if p.group(1) == "crate" else parent
        out.append(base + p.group(2).strip(":").split("::"))
    return out


edges = {m: set() for m in files}
for mod, path in files.items():
    text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
    for parts in paths(text, mod):
        target = resolve(parts)
        if target != mod:
            edges[mod].add(target)
    if mod == "":
        # The root names its modules without `crate::` (`node::Node`).
        for m in files:
            if m and "::" not in m and re.search(r"\b" + m + r"::", text):
                edges[""].add(m)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            sccs.append(sorted(scc))


sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        visit(v)
name = lambda m: m or "(crate root)"
for scc in sccs:
    print("cycle:", " <-> ".join(name(m) for m in scc))
    for m in scc:
        print("   ", name(m), "->", ", ".join(name(t) for t in sorted(edges[m] & set(scc))))
print(f"{len(files)} files, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
