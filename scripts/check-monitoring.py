#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alerting rules against a real Prometheus that scrapes the
running system (scripts/bench.sh starts both): every rule must be loaded and evaluate without
error, and every dashboard query and every rule's measured side (the expression left of its
threshold) must parse and return data. Standard library only.

usage: check-monitoring.py --prometheus URL --dashboard FILE --rules FILE [--namespace NS]
                           [--wait-s N]
"""
import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request

COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
# Panels whose series exist only once the failure they show has happened (docs/OPERATIONS.md,
# "Dashboard", says so for each): they must parse, and may return no data on a healthy system.
FAILURE_ONLY_PANELS = {"5xx/s by route"}


def get(base, path, **params):
    url = base.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def query(base, expr):
    """(ok, detail): ok when the query parses and returns at least one series."""
    try:
        body = get(base, "/api/v1/query", query=expr)
    except urllib.error.HTTPError as e:  # 400: the expression does not parse
        return False, "error: %s" % json.load(e).get("error", e)
    if body.get("status") != "success":
        return False, "error: %s" % body.get("error")
    result = body["data"]["result"]
    if not result:
        return False, "no data"
    return True, "%d series" % len(result)


def measured_side(expr):
    """The expression left of its last top-level comparison (`... > 0.5` -> `...`)."""
    depth, quote, cut = 0, None, None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i) and not (op in ("=",) or expr[i - 1] in "=!<>"):
                    cut = i
                    i += len(op) - 1
                    break
        i += 1
    return expr[:cut].strip() if cut is not None else expr


def parse_rules(path):
    """[(alert, expr, requires)] from a rule file that keeps each `expr` on one line."""
    rules, current = [], None
    for line in open(path):
        m = re.match(r"\s*- alert:\s*(\S+)", line)
        if m:
            current = {"alert": m.group(1), "expr": None, "requires": None}
            rules.append(current)
            continue
        m = re.match(r"\s*expr:\s*(.+?)\s*$", line)
        if m and current:
            current["expr"] = m.group(1)
        m = re.search(r"requires:\s*([\w.-]+)", line)
        if m and current:
            current["requires"] = m.group(1)
    missing = [r["alert"] for r in rules if not r["expr"]]
    if missing:
        sys.exit("FAIL: rules without a one-line expr: %s" % ", ".join(missing))
    return rules


def dashboard_queries(path, namespace):
    dash = json.load(open(path))
    out = []
    for panel in dash.get("panels", []):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", namespace)
            expr = expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
            out.append((panel.get("title", "?"), expr))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--namespace", default="chat")
    ap.add_argument("--wait-s", type=float, default=20)
    args = ap.parse_args()

    rules = parse_rules(args.rules)
    failures = []

    # Every rule loaded and evaluated at least once without error (bounded wait).
    deadline = time.monotonic() + args.wait_s
    while True:
        groups = get(args.prometheus, "/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        pending = [r["alert"] for r in rules
                   if loaded.get(r["alert"], {}).get("health") != "ok"]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for r in rules:
        got = loaded.get(r["alert"])
        if got is None:
            failures.append("rule %s: not loaded by Prometheus" % r["alert"])
        elif got.get("health") != "ok":
            failures.append("rule %s: health %s %s" % (r["alert"], got.get("health"),
                                                         got.get("lastError", "")))

    checked = 0
    for r in rules:
        if r["requires"]:
            print("  skip  rule %-24s needs %s" % (r["alert"], r["requires"]))
            continue
        ok, detail = query(args.prometheus, measured_side(r["expr"]))
        checked += 1
        print("  %-5s rule %-24s %s" % ("ok" if ok else "FAIL", r["alert"], detail))
        if not ok:
            failures.append("rule %s: %s returns %s" % (r["alert"], measured_side(r["expr"]), detail))
    for title, expr in dashboard_queries(args.dashboard, args.namespace):
        ok, detail = query(args.prometheus, expr)
        if not ok and detail == "no data" and title in FAILURE_ONLY_PANELS:
            ok, detail = True, "no data (only under failure)"
        checked += 1
        print("  %-5s panel %-30s %s" % ("ok" if ok else "FAIL", title[:30], detail))
        if not ok:
            failures.append("panel %r: %s returns %s" % (title, expr, detail))

    if failures:
        print("monitoring check: %d of %d failed" % (len(failures), checked + len(rules)), file=sys.stderr)
        for f in failures:
            print("FAIL: " + f, file=sys.stderr)
        sys.exit(1)
    print("monitoring check: %d rules loaded, %d queries return data" % (len(rules), checked))


if __name__ == "__main__":
    main()
