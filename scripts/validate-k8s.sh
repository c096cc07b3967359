#!/usr/bin/env bash
# Validates the Kubernetes manifests under k8s/ without a cluster: renders each kustomization,
# lints the YAML, checks every object against the Kubernetes JSON schemas (offline), checks the
# references between objects, the drain timing and the migrate Job's keyspace replication against
# the ScyllaCluster it targets, and exits non-zero on any failure. The replication check first
# proves on made-up renders that it rejects what it must (a self-test, run every time).
#
# Tools: kubernetes-validate and yamllint are installed from PyPI into a venv outside the repo on
# first use (then no network is needed). Rendering uses `kustomize` if on PATH, else
# `kubectl kustomize`; with neither, the base and monitoring files are validated directly and the
# overlays' patches are only linted (the script says so).
#
# Service defaults for the drain check come from docs/CONFIG.md (generated from the code, and kept
# equal to it by chat-api/tests/config_doc.rs); metric names and panel titles from
# docs/OPERATIONS.md (kept equal to the exporters by chat-api/tests/metrics_scrape.rs).
#
# Environment: K8S_VERSION (schema version, default 1.30.0), K8S_VALIDATE_VENV (venv path),
# KUSTOMIZE (a kustomize binary to use instead of the search above; "none" forces the direct mode).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
k8s="$root/k8s"
k8s_version=${K8S_VERSION:-1.30.0}
venv=${K8S_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-infra/k8s-validate-venv}
# Pinned so that a schema or lint-rule update never changes the verdict silently.
kv_pin="kubernetes-validate==1.37.0"
yl_pin="yamllint==1.38.0"

say() { printf '%s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# (a) tools
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint' 2>/dev/null; then
    say "installing $kv_pin and $yl_pin into $venv (first run only)"
    command -v python3 >/dev/null || fail "python3 is needed to create $venv"
    python3 -m venv "$venv" || fail "could not create a venv at $venv (is python3-venv installed?)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$kv_pin" "$yl_pin" \
        || fail "pip could not install $kv_pin $yl_pin (PyPI reachable? set K8S_VALIDATE_VENV to a venv that has them)"
fi
py="$venv/bin/python"

# (c) lint first: a syntax error reads better from yamllint than from kustomize
say "lint: yamllint -c k8s/.yamllint k8s/"
"$venv/bin/yamllint" --format parsable -c "$k8s/.yamllint" "$k8s" || fail "yamllint found errors (above)"

# (b) render
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

render=()
if [[ "${KUSTOMIZE:-}" == none ]]; then
    :
elif [[ -n "${KUSTOMIZE:-}" ]]; then
    render=("$KUSTOMIZE" build)
elif command -v kustomize >/dev/null; then
    render=(kustomize build)
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    render=(kubectl kustomize)
fi

targets=(base overlays/dev overlays/prod monitoring)
inputs=()
if ((${#render[@]})); then
    say "render: ${render[*]}"
    for t in "${targets[@]}"; do
        out="$work/${t//\//_}.yaml"
        if ! "${render[@]}" "$k8s/$t" >"$out" 2>"$work/err"; then
            cat "$work/err" >&2
            fail "rendering k8s/$t"
        fi
        say "  rendered k8s/$t ($(grep -c '^kind:' "$out") objects)"
        inputs+=("$t=rendered=$out")
    done
else
    say "render: no kustomize implementation used (none on PATH, or KUSTOMIZE=none; kustomize is not"
    say "        packaged for PyPI, npm or Debian bookworm). Validating k8s/base, k8s/monitoring and the overlays'"
    say "        whole-object files directly; overlay patches are linted but not applied or validated."
    for t in "${targets[@]}"; do
        files=()
        while IFS= read -r f; do files+=("$f"); done < <(
            find "$k8s/$t" -name '*.yaml' -not -name kustomization.yaml -not -path '*/patches/*' | sort)
        out="$work/${t//\//_}.yaml"
        for f in "${files[@]}"; do
            cat "$f"
            printf '\n---\n'
        done >"$out"
        inputs+=("$t=files=$out")
    done
fi

# (d) schemas, references, dashboard; (f) drain timing
"$py" - "$k8s_version" "$k8s" "$root/docs" "${inputs[@]}" <<'PY'
"""Schema, reference, dashboard and drain-timing checks over rendered manifests."""
import functools
import json
import re
import sys

import yaml
import kubernetes_validate.utils as kvu

version, k8s_dir, docs_dir, inputs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

# Custom resources have no bundled schema; they are skipped by name, so an unknown kind is an error.
CUSTOM = {
    ("scylla.scylladb.com/v1", "ScyllaCluster"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("external-secrets.io/v1beta1", "ExternalSecret"),
}
INGRESS_TIMEOUT_MIN_S = 3600
DASHBOARD_METRICS = [
    "gateway_sockets_open", "gateway_connects_total", "gateway_disconnects_total",
    "gateway_handshake_seconds", "gateway_frames_in_total", "gateway_frames_out_total",
    "gateway_deliveries_total", "gateway_send_queue_drops_total", "gateway_stream_lag_seconds",
    "gateway_stream_batch_size", "gateway_draining", "api_http_requests_total",
    "api_http_request_seconds", "api_store_op_seconds", "api_store_errors_total",
    "redis_op_seconds", "redis_errors_total", "api_rate_limited_total", "api_rejected_total",
    "gateway_rejected_total", "gateway_rate_limited_total", "api_draining",
]



def config_defaults(section):
    """Defaults of one binary's settings, from docs/CONFIG.md. That file is generated from the
    code's flag definitions and a test fails when they differ, so these are the code's defaults."""
    text = open(docs_dir + "/CONFIG.md").read()
    parts = text.split("\n## `%s`\n" % section)
    if len(parts) != 2:
        raise SystemExit("FAIL: docs/CONFIG.md has no section `%s`" % section)
    out = {}
    for line in parts[1].split("\n## ")[0].splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1].startswith("`"):
            out[cells[1].strip("`")] = cells[3].strip("`")
    return out


GATEWAY_DEFAULTS = {k: v for k, v in config_defaults("gateway").items()
                    if k in ("DRAIN_DEADLINE", "DRAIN_WINDOW", "HEARTBEAT_INTERVAL", "IDLE_TIMEOUT")}
API_DEFAULTS = {k: v for k, v in config_defaults("chat-api serve").items() if k == "API_SHUTDOWN_GRACE"}
MIGRATE_DEFAULTS = {k: v for k, v in config_defaults("chat-api migrate").items() if k == "SCYLLA_REPLICATION"}
if len(GATEWAY_DEFAULTS) != 4 or len(API_DEFAULTS) != 1 or len(MIGRATE_DEFAULTS) != 1:
    raise SystemExit("FAIL: docs/CONFIG.md lacks the drain settings: %r %r" % (GATEWAY_DEFAULTS, API_DEFAULTS))
print("service defaults (docs/CONFIG.md, generated from the code): %s" % ", ".join(
    "%s=%s" % kv for kv in sorted({**GATEWAY_DEFAULTS, **API_DEFAULTS}.items())))


def runbook():
    """Metric names and dashboard panel titles documented in docs/OPERATIONS.md."""
    text = open(docs_dir + "/OPERATIONS.md").read()

    def rows(heading):
        parts = text.split("\n## %s\n" % heading)
        if len(parts) != 2:
            raise SystemExit("FAIL: docs/OPERATIONS.md has no section '%s'" % heading)
        return [[c.strip() for c in l.split("|")][1] for l in parts[1].split("\n## ")[0].splitlines()
                if l.startswith("| ") and not l.startswith("| ---") and not l.startswith("|---")]

    metrics = {r.strip("`") for r in rows("Metrics") if r.startswith("`")}
    panels = {r for r in rows("Dashboard") if r != "panel"}
    return metrics, panels


DOC_METRICS, DOC_PANELS = runbook()

# The library re-reads the 1.2 MB definitions file for every object; parse each file once.
kvu.schema_contents = functools.lru_cache(maxsize=None)(kvu.schema_contents)

failures = []


def bad(msg):
    failures.append(msg)
    print("  FAIL " + msg)


UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def seconds(text):
    """humantime-style duration ("25s", "1m 30s", "500ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(text))
    if not parts or re.sub(r"[\d.\sa-z]", "", str(text)):
        raise ValueError("not a duration: %r" % (text,))
    total = 0.0
    for num, unit in parts:
        if unit not in UNITS:
            raise ValueError("unknown unit %r in %r" % (unit, text))
        total += float(num) * UNITS[unit]
    return total


def name_of(d):
    return "%s/%s/%s" % (d["kind"], d.get("metadata", {}).get("namespace", "-"), d["metadata"]["name"])


def pod_spec(d):
    if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return d["spec"]["template"]["spec"]
    return None


def container_env(c, objs, ns):
    """The container's environment as the kubelet would build it (ConfigMap values resolved)."""
    env = {}
    for src in c.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and (ns, ref["name"]) in objs.get("ConfigMap", {}):
            env.update(objs["ConfigMap"][(ns, ref["name"])].get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            cm = objs.get("ConfigMap", {}).get((ns, ref["name"]))
            if cm and ref["key"] in cm.get("data", {}):
                env[e["name"]] = cm["data"][ref["key"]]
    return env


def prestop_seconds(c):
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = " ".join(pre.get("exec", {}).get("command", []))
    m = re.search(r"sleep\s+(\d+(?:\.\d+)?)", cmd)
    return float(m.group(1)) if m else 0.0


def check_schemas(label, docs):
    ok = skipped = 0
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CUSTOM:
            print("  skip %s: custom resource %s (%s), no bundled schema" % (name_of(d), key[1], key[0]))
            skipped += 1
            continue
        try:
            kvu.validate(d, version, strict=True)
            ok += 1
        except kvu.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            bad("%s %s: %s at %s" % (label, name_of(d), e.message, path))
        except kvu.SchemaNotFoundError as e:
            bad("%s %s: %s" % (label, name_of(d), e.message))
    print("  schemas (Kubernetes %s, strict): %d valid, %d custom resources skipped" % (version, ok, skipped))


def index(docs):
    objs = {}
    for d in docs:
        objs.setdefault(d["kind"], {})[(d["metadata"].get("namespace"), d["metadata"]["name"])] = d
    return objs


def check_references(label, docs, objs):
    """Names that must resolve inside the same render (a typo here only fails at run time)."""
    secrets = set(objs.get("Secret", {}))
    secrets |= {(ns, es["spec"].get("target", {}).get("name", n))
                for (ns, n), es in objs.get("ExternalSecret", {}).items()}
    workloads = [d for d in docs if pod_spec(d) is not None]
    for d in workloads:
        ns = d["metadata"].get("namespace")
        spec = pod_spec(d)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for src in c.get("envFrom", []):
                if "configMapRef" in src and (ns, src["configMapRef"]["name"]) not in objs.get("ConfigMap", {}):
                    bad("%s %s: envFrom ConfigMap %r not in the render" % (label, name_of(d), src["configMapRef"]["name"]))
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                if "secretKeyRef" in vf and (ns, vf["secretKeyRef"]["name"]) not in secrets:
                    bad("%s %s: env %s needs Secret %r, not in the render" % (label, name_of(d), e["name"], vf["secretKeyRef"]["name"]))
                if "configMapKeyRef" in vf:
                    cm = objs.get("ConfigMap", {}).get((ns, vf["configMapKeyRef"]["name"]))
                    if cm is None or vf["configMapKeyRef"]["key"] not in cm.get("data", {}):
                        bad("%s %s: env %s needs ConfigMap key %s/%s" % (label, name_of(d), e["name"],
                                                                         vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"]))
        for v in spec.get("volumes", []):
            if "configMap" in v and (ns, v["configMap"]["name"]) not in objs.get("ConfigMap", {}):
                bad("%s %s: volume ConfigMap %r not in the render" % (label, name_of(d), v["configMap"]["name"]))

    def matching(ns, selector):
        return [w for w in workloads if w["metadata"].get("namespace") == ns and
                all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]

    def port_names(w):
        return {p.get("name") for c in pod_spec(w)["containers"] for p in c.get("ports", [])}

    for (ns, n), svc in objs.get("Service", {}).items():
        sel = svc["spec"].get("selector")
        if not sel:
            continue
        found = matching(ns, sel)
        if not found:
            bad("%s Service/%s/%s selects no workload" % (label, ns, n))
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and found and not any(tp in port_names(w) for w in found):
                bad("%s Service/%s/%s: targetPort %r is no container port name" % (label, ns, n, tp))
    for (ns, n), pdb in objs.get("PodDisruptionBudget", {}).items():
        if not matching(ns, pdb["spec"]["selector"].get("matchLabels", {})):
            bad("%s PodDisruptionBudget/%s/%s selects no workload" % (label, ns, n))
    for (ns, n), hpa in objs.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if (ns, ref["name"]) not in objs.get(ref["kind"], {}):
            bad("%s HPA/%s/%s targets %s %r, not in the render" % (label, ns, n, ref["kind"], ref["name"]))
    for (ns, n), ing in objs.get("Ingress", {}).items():
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                svc = p["backend"]["service"]
                target = objs.get("Service", {}).get((ns, svc["name"]))
                if target is None:
                    bad("%s Ingress/%s/%s: path %s -> missing Service %r" % (label, ns, n, p["path"], svc["name"]))
                elif "name" in svc["port"] and svc["port"]["name"] not in {q.get("name") for q in target["spec"]["ports"]}:
                    bad("%s Ingress/%s/%s: path %s -> Service %s has no port %r" % (label, ns, n, p["path"], svc["name"], svc["port"]["name"]))


def check_drain(label, objs):
    """(f) grace period > preStop sleep + the process's own drain deadline, read from the render."""
    for (ns, n), d in sorted(objs.get("Deployment", {}).items(), key=lambda kv: kv[0][1]):
        spec = pod_spec(d)
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        for c in spec["containers"]:
            binary = (c.get("command") or [""])[0].rsplit("/", 1)[-1]
            env = container_env(c, objs, ns)
            pre = prestop_seconds(c)
            try:
                if binary == "gateway":
                    v = {k: env.get(k, dflt) for k, dflt in GATEWAY_DEFAULTS.items()}
                    deadline, window = seconds(v["DRAIN_DEADLINE"]), seconds(v["DRAIN_WINDOW"])
                    what = "DRAIN_DEADLINE %gs" % deadline
                    if window >= deadline:
                        bad("%s %s: DRAIN_WINDOW %gs must be below DRAIN_DEADLINE %gs" % (label, name_of(d), window, deadline))
                    if seconds(v["IDLE_TIMEOUT"]) <= seconds(v["HEARTBEAT_INTERVAL"]):
                        bad("%s %s: IDLE_TIMEOUT must exceed HEARTBEAT_INTERVAL" % (label, name_of(d)))
                elif binary == "chat-api" and "serve" in c.get("args", []):
                    deadline = seconds(env.get("API_SHUTDOWN_GRACE", API_DEFAULTS["API_SHUTDOWN_GRACE"]))
                    what = "API_SHUTDOWN_GRACE %gs" % deadline
                else:
                    continue
            except ValueError as e:
                bad("%s %s: %s" % (label, name_of(d), e))
                continue
            need = pre + deadline
            verdict = "ok" if grace > need else "TOO SHORT"
            print("  drain %-4s %-8s preStop %gs + %s = %gs < terminationGracePeriodSeconds %gs: %s"
                  % (label, n, pre, what, need, grace, verdict))
            if grace <= need:
                bad("%s %s: terminationGracePeriodSeconds %g must exceed preStop %gs + %gs" % (label, name_of(d), grace, pre, deadline))
            if pre == 0:
                bad("%s %s: no preStop sleep; new connections can arrive after SIGTERM" % (label, name_of(d)))


def migrate_replication_problems(objs, quiet=False):
    """(g) The migrate Job's SCYLLA_REPLICATION against the ScyllaCluster its STORE_URL names
    ("<cluster>-client.<namespace>..."): a factor above a datacenter's members makes every
    LOCAL_QUORUM request Unavailable (or the keyspace's creation fail), a datacenter the cluster
    lacks gets no replica, and a local_dc the cluster lacks finds no node."""
    problems = []
    clusters = objs.get("ScyllaCluster", {})
    for (ns, n), job in sorted(objs.get("Job", {}).items()):
        for c in pod_spec(job)["containers"]:
            binary = (c.get("command") or [""])[0].rsplit("/", 1)[-1]
            if binary != "chat-api" or "migrate" not in c.get("args", []):
                continue
            env = container_env(c, objs, ns)
            where = "Job/%s/%s" % (ns, n)
            url = env.get("STORE_URL", "")
            m = re.match(r"scylla://([^/?]+)/[^?]*(?:\?(.*))?$", url)
            if not m:
                problems.append("%s: STORE_URL %r is not scylla://HOST[:PORT]/KEYSPACE" % (where, url))
                continue
            host = m.group(1).split(",")[0].rsplit(":", 1)[0]
            parts = host.split(".")
            svc, svc_ns = parts[0], parts[1] if len(parts) > 1 else ns
            if not svc.endswith("-client"):
                problems.append("%s: STORE_URL host %r is not a Scylla Operator client Service (<cluster>-client)" % (where, host))
                continue
            cluster = clusters.get((svc_ns, svc[:-len("-client")]))
            if cluster is None:
                problems.append("%s: STORE_URL targets ScyllaCluster %s/%s, which is not in the render" % (where, svc_ns, svc[:-len("-client")]))
                continue
            dc = cluster["spec"]["datacenter"]
            members = {dc["name"]: sum(int(r.get("members", 0)) for r in dc.get("racks", []))}
            replication = str(env.get("SCYLLA_REPLICATION", MIGRATE_DEFAULTS["SCYLLA_REPLICATION"])).strip()
            try:
                if ":" in replication:
                    factors = {d.strip(): int(f) for d, f in (p.split(":", 1) for p in replication.split(","))}
                else:
                    factors = {d: int(replication) for d in members}
            except ValueError:
                problems.append("%s: SCYLLA_REPLICATION %r is not N or dc:N[,dc:N]" % (where, replication))
                continue
            for d, f in sorted(factors.items()):
                if d not in members:
                    problems.append("%s: SCYLLA_REPLICATION %r names datacenter %r; ScyllaCluster %s/%s has only %s"
                                    % (where, replication, d, svc_ns, cluster["metadata"]["name"], sorted(members)))
                elif f > members[d]:
                    problems.append("%s: SCYLLA_REPLICATION %r asks %d replicas in %s, but ScyllaCluster %s/%s has %d member(s) there"
                                    % (where, replication, f, d, svc_ns, cluster["metadata"]["name"], members[d]))
            for opt in (m.group(2) or "").split("&"):
                key, _, value = opt.partition("=")
                if key == "local_dc" and value not in members:
                    problems.append("%s: STORE_URL local_dc=%s is not a datacenter of ScyllaCluster %s/%s (%s)"
                                    % (where, value, svc_ns, cluster["metadata"]["name"], sorted(members)))
            if not quiet:
                print("  migrate %s: SCYLLA_REPLICATION %s vs ScyllaCluster %s members %s"
                      % (where, replication, cluster["metadata"]["name"], members))
    return problems


def check_migrate_replication(label, objs):
    for p in migrate_replication_problems(objs):
        bad("%s %s" % (label, p))


def self_test_migrate_replication():
    """The replication check must reject what it exists to reject, on made-up renders."""
    def render(replication, members, url="scylla://scylla-client.scylla.svc:9042/chat?local_dc=dc1"):
        job = {"kind": "Job", "metadata": {"name": "m", "namespace": "chat"}, "spec": {"template": {"spec": {
            "containers": [{"command": ["/usr/local/bin/chat-api"], "args": ["migrate"],
                            "env": [{"name": "STORE_URL", "value": url}] +
                                   ([{"name": "SCYLLA_REPLICATION", "value": replication}] if replication else [])}]}}}}
        cluster = {"kind": "ScyllaCluster", "metadata": {"name": "scylla", "namespace": "scylla"},
                   "spec": {"datacenter": {"name": "dc1", "racks": [{"members": m} for m in members]}}}
        return index([job, cluster])

    cases = [
        ("dc1:3 on 1 member", render("dc1:3", [1]), "asks 3 replicas"),
        ("3 on 2 members", render("3", [1, 1]), "asks 3 replicas"),
        ("the default (3) on 1 member", render(None, [1]), "asks 3 replicas"),
        ("a datacenter the cluster lacks", render("dc1:1,dc2:1", [1]), "names datacenter 'dc2'"),
        ("local_dc the cluster lacks", render("dc1:1", [1], "scylla://scylla-client.scylla.svc:9042/chat?local_dc=dc9"), "local_dc=dc9"),
        ("another cluster", render("dc1:1", [1], "scylla://other-client.scylla.svc:9042/chat"), "not in the render"),
    ]
    for name, objs, want in cases:
        found = migrate_replication_problems(objs, quiet=True)
        if not any(want in p for p in found):
            raise SystemExit("FAIL: self-test: the replication check accepts %s (found %r)" % (name, found))
    for name, objs in [("dc1:3 on 3 members", render("dc1:3", [1, 1, 1])), ("1 on 1 member", render("1", [1]))]:
        found = migrate_replication_problems(objs, quiet=True)
        if found:
            raise SystemExit("FAIL: self-test: the replication check rejects %s: %r" % (name, found))
    print("self-test: the migrate replication check rejects %d bad renders and accepts 2 good ones" % len(cases))


def check_ingress_timeouts(label, objs):
    for (ns, n), ing in objs.get("Ingress", {}).items():
        ann = ing["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            val = ann.get("nginx.ingress.kubernetes.io/" + key)
            if val is None or not str(val).isdigit() or int(val) < INGRESS_TIMEOUT_MIN_S:
                bad("%s Ingress/%s/%s: %s is %r, want >= %d" % (label, ns, n, key, val, INGRESS_TIMEOUT_MIN_S))


def check_monitoring(objs):
    """The HPA's custom metric must be what the adapter rule serves; the dashboard must parse and
    cover every exported metric."""
    rules = objs.get("ConfigMap", {}).get(("monitoring", "prometheus-adapter-chat-rules"))
    if rules:
        served = {r["name"]["as"] for r in yaml.safe_load(rules["data"]["config.yaml"])["rules"]}
        print("  prometheus-adapter serves: %s" % ", ".join(sorted(served)))
    dash_cm = objs.get("ConfigMap", {}).get(("monitoring", "grafana-dashboard-chat"))
    raw = dash_cm["data"]["chat.json"] if dash_cm else open(k8s_dir + "/monitoring/dashboards/chat.json").read()
    try:
        dash = json.loads(raw)
    except ValueError as e:
        bad("grafana dashboard is not valid JSON: %s" % e)
        return
    exprs = [t.get("expr", "") for p in dash.get("panels", []) if p.get("type") != "row" for t in p.get("targets", [])]
    empty = [p.get("title") for p in dash.get("panels", []) if p.get("type") != "row" and not p.get("targets")]
    if empty:
        bad("dashboard panels without queries: %s" % ", ".join(empty))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in DOC_METRICS else m
            for e in exprs for m in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", e)}
    undocumented = sorted(used - DOC_METRICS)
    if undocumented:
        bad("dashboard queries metrics that docs/OPERATIONS.md does not list (so no service exports them): %s"
            % ", ".join(undocumented))
    titles = {p.get("title") for p in dash.get("panels", []) if p.get("type") != "row"}
    if titles - DOC_PANELS:
        bad("dashboard panels missing from docs/OPERATIONS.md's Dashboard table: %s" % ", ".join(sorted(titles - DOC_PANELS)))
    if DOC_PANELS - titles:
        bad("docs/OPERATIONS.md describes panels the dashboard lacks: %s" % ", ".join(sorted(DOC_PANELS - titles)))
    missing = [m for m in DASHBOARD_METRICS if not any(re.search(r"\b%s(_bucket|_sum|_count)?\b" % m, e) for e in exprs)]
    if missing:
        bad("dashboard has no panel for: %s" % ", ".join(missing))
    print("  dashboard %r: %d queries, covers %d/%d metrics"
          % (dash.get("title"), len(exprs), len(DASHBOARD_METRICS) - len(missing), len(DASHBOARD_METRICS)))
    return served if rules else None


self_test_migrate_replication()
all_objs = {}
hpa_metrics = []  # (render, HPA, custom metric): the same HPA differs between overlays
for item in inputs:
    label, mode, path = item.split("=", 2)
    short = label.rsplit("/", 1)[-1]
    print("check k8s/%s (%s)" % (label, mode))
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    check_schemas(short, docs)
    objs = index(docs)
    if mode == "rendered" or label == "base":
        # The base alone is complete; an overlay's own files are not, until kustomize applies them.
        check_references(short, docs, objs)
        check_drain(short, objs)
        check_ingress_timeouts(short, objs)
        check_migrate_replication(short, objs)
    else:
        print("  references and drain timing of k8s/%s not checked: it was not rendered" % label)
    for kind, byname in objs.items():
        all_objs.setdefault(kind, {}).update(byname)
    for (ns, n), hpa in objs.get("HorizontalPodAutoscaler", {}).items():
        hpa_metrics += [(short, "%s/%s" % (ns, n), m["pods"]["metric"]["name"])
                        for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"]

print("check monitoring")
served = check_monitoring(all_objs)
for render, hpa, metric in hpa_metrics:
    if served is not None and metric not in served:
        bad("%s HPA/%s uses metric %r that the adapter rule does not serve" % (render, hpa, metric))

if failures:
    print("%d check(s) failed" % len(failures))
    sys.exit(1)
print("all checks passed")
PY
