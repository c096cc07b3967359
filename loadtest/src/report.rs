//! `report`: reads the JSON results a bench run wrote (files named `SYSTEM-SCENARIO[-VARIANT].json`)
//! and prints one Markdown table, each figure beside its SPEC §7 budget. With `--check` it fails
//! when a run lost frames, failed sends or failed connects, which is what the CI smoke run asserts
//! (budgets need release builds on a quiet machine and are not checked there).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// SPEC §7 budgets.
const IDLE_BYTES_PER_SOCKET_MAX: f64 = 4096.0;
const FRAMES_PER_CORE_MIN: f64 = 500_000.0;
const P99_MS_MAX: f64 = 10.0;
const P99_BUDGET_RATE: u64 = 5_000;

#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Directory holding the result files.
    #[arg(long)]
    pub dir: PathBuf,
    /// Exit with an error when any run lost frames or had failed sends or connects.
    #[arg(long)]
    pub check: bool,
}

struct Row {
    system: String,
    scenario: String,
    figure: String,
    value: String,
    budget: String,
    verdict: String,
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn verdict(ok: bool, miss: impl FnOnce() -> String) -> String {
    if ok {
        "met".into()
    } else {
        miss()
    }
}

/// Rows for one result, plus the problems `--check` fails on.
fn rows(system: &str, v: &Value, problems: &mut Vec<String>) -> Vec<Row> {
    let scenario = v["scenario"].as_str().unwrap_or("?").to_string();
    let row = |figure: String, value: String, budget: &str, verdict: String| Row {
        system: system.to_string(),
        scenario: scenario.clone(),
        figure,
        value,
        budget: budget.to_string(),
        verdict,
    };
    let mut out = Vec::new();
    match scenario.as_str() {
        "connect" => {
            let last = v["samples"].as_array().and_then(|s| s.last()).cloned();
            let sockets = last
                .as_ref()
                .and_then(|s| f(s, "sockets_open"))
                .unwrap_or(0.0);
            if let Some(b) = last.as_ref().and_then(|s| f(s, "bytes_per_socket")) {
                out.push(row(
                    format!("idle memory per socket ({sockets:.0} sockets)"),
                    format!("{b:.0} B"),
                    "≤ 4,096 B",
                    verdict(b <= IDLE_BYTES_PER_SOCKET_MAX, || {
                        format!("missed: {:.1}×", b / IDLE_BYTES_PER_SOCKET_MAX)
                    }),
                ));
            }
            let failed: u64 = v["failures"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            if failed > 0 {
                problems.push(format!("{system} connect: {failed} failed connects"));
            }
        }
        "fanout" => {
            let (chats, members, rate) = (
                f(v, "chats").unwrap_or(0.0),
                f(v, "members").unwrap_or(0.0),
                f(v, "rate_per_s").unwrap_or(0.0),
            );
            out.push(row(
                format!("deliveries/s ({chats:.0} chats × {members:.0}, {rate:.0} msg/s)"),
                format!(
                    "{:.0} (dropped {:.0})",
                    f(v, "deliveries_per_s").unwrap_or(0.0),
                    f(v, "frames_dropped").unwrap_or(0.0)
                ),
                "–",
                "–".into(),
            ));
            for (k, g) in v["gateways"].as_array().into_iter().flatten().enumerate() {
                if let Some(fps) = f(g, "frames_per_cpu_second") {
                    out.push(row(
                        format!("frames/s per gateway core (gateway {})", k + 1),
                        format!("{fps:.0}"),
                        "≥ 500,000",
                        verdict(fps >= FRAMES_PER_CORE_MIN, || {
                            format!(
                                "missed: {:.0} % of budget",
                                100.0 * fps / FRAMES_PER_CORE_MIN
                            )
                        }),
                    ));
                }
            }
            for key in ["frames_dropped", "send_errors"] {
                if f(v, key).unwrap_or(0.0) > 0.0 {
                    problems.push(format!("{system} fanout: {key} = {}", v[key]));
                }
            }
        }
        "latency" => {
            let rate = v["rate_per_s"].as_u64().unwrap_or(0);
            let p99 = f(v, "p99_ms").unwrap_or(f64::MAX);
            let at_budget_rate = rate >= P99_BUDGET_RATE;
            out.push(row(
                format!("cross-node latency at {rate} msg/s: p50 / p99 / p99.9 / max"),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} ms",
                    f(v, "p50_ms").unwrap_or(0.0),
                    p99,
                    f(v, "p999_ms").unwrap_or(0.0),
                    f(v, "max_ms").unwrap_or(0.0)
                ),
                if at_budget_rate { "p99 < 10 ms" } else { "–" },
                if at_budget_rate {
                    verdict(p99 < P99_MS_MAX, || {
                        format!("missed: {:.1}×", p99 / P99_MS_MAX)
                    })
                } else {
                    "–".into()
                },
            ));
            let (acked, received) = (
                f(v, "acknowledged").unwrap_or(0.0),
                f(v, "received").unwrap_or(0.0),
            );
            if f(v, "send_errors").unwrap_or(0.0) > 0.0 || received < acked {
                problems.push(format!(
                    "{system} latency: {} send errors, {received} of {acked} received",
                    v["send_errors"]
                ));
            }
        }
        "soak" => {
            let growth: Vec<String> = v["rss_growth_bytes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    g.as_f64()
                        .map_or("-".into(), |b| format!("{:+.1} MiB", b / 1048576.0))
                })
                .collect();
            out.push(row(
                format!(
                    "RSS growth over {:.0} s of churn ({} sockets, {}/s)",
                    f(v, "duration_s").unwrap_or(0.0),
                    v["sockets"],
                    v["churn_rate_per_s"]
                ),
                growth.join(", "),
                "flat",
                "–".into(),
            ));
            if f(v, "connects_failed").unwrap_or(0.0) > 0.0 {
                problems.push(format!(
                    "{system} soak: {} failed connects",
                    v["connects_failed"]
                ));
            }
        }
        "catchup" => {
            let missing = f(v, "missing").unwrap_or(f64::MAX);
            out.push(row(
                format!(
                    "acknowledged messages missing after catch-up ({} members, {} drops, {} resyncs)",
                    v["members"], v["drops"], v["resyncs"]
                ),
                format!("{missing:.0} of {}", v["acknowledged"]),
                "0",
                verdict(missing == 0.0, || "missed".into()),
            ));
            if missing != 0.0 {
                problems.push(format!("{system} catchup: {missing} messages missing"));
            }
        }
        "flood" => {
            let flood = &v["flood"];
            for (what, key) in [("HTTP", "http"), ("connect", "connect")] {
                let (alone, under) = (
                    f(&v["baseline"][format!("victim_{key}")], "p99_ms").unwrap_or(0.0),
                    f(&flood[format!("victim_{key}")], "p99_ms").unwrap_or(0.0),
                );
                let ratio = f(v, &format!("{key}_p99_ratio")).unwrap_or(f64::MAX);
                out.push(row(
                    format!("another user's {what} p99 alone / under a flood"),
                    format!("{alone:.2} / {under:.2} ms ({ratio:.2}×)"),
                    "≤ 2×",
                    verdict(ratio <= 2.0, || format!("missed: {ratio:.1}×")),
                ));
                let errors = f(&flood[format!("victim_{key}")], "errors").unwrap_or(0.0);
                if errors > 0.0 {
                    problems.push(format!(
                        "{system} flood: {errors} victim {what} requests failed"
                    ));
                }
            }
            let refused = f(&flood["flood"], "http_429").unwrap_or(0.0)
                + f(&flood["flood"], "ws_429").unwrap_or(0.0);
            if refused == 0.0 {
                problems.push(format!(
                    "{system} flood: nothing was refused (rate limits off?)"
                ));
            }
        }
        other => problems.push(format!("unknown scenario {other:?}")),
    }
    out
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    let mut table = String::from(
        "| system | scenario | figure | value | budget | verdict |\n|---|---|---|---:|---|---|\n",
    );
    for path in &files {
        let v: Value = serde_json::from_slice(&std::fs::read(path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let system = stem.split('-').next().unwrap_or(stem);
        for r in rows(system, &v, &mut problems) {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} |",
                r.system, r.scenario, r.figure, r.value, r.budget, r.verdict
            );
        }
    }
    print!("{table}");
    if let Some(l) = crate::util::loadavg() {
        println!(
            "\nload average at report time: {:.2} {:.2} {:.2}",
            l[0], l[1], l[2]
        );
    }
    if files.is_empty() {
        problems.push(format!("no result files in {}", args.dir.display()));
    }
    if args.check && !problems.is_empty() {
        anyhow::bail!("bench check failed:\n  {}", problems.join("\n  "));
    }
    for p in &problems {
        eprintln!("warning: {p}");
    }
    Ok(())
}
