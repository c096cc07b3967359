//! `docs/CONFIG.md` is generated from the command-line definitions of both binaries, and this
//! test fails when the file differs from what the code declares, so the document cannot drift.
//! Regenerate it with `UPDATE_DOCS=1 cargo test -p chat-api --test config_doc`.
//! It also checks that every setting is an environment variable too and has a help text.

use std::path::Path;

use clap::{Arg, Command, CommandFactory};

const HEADER: &str = "\
# Configuration

Generated from the command-line definitions by `chat-api/tests/config_doc.rs` (which fails when
this file and the code disagree; regenerate with `UPDATE_DOCS=1 cargo test -p chat-api --test
config_doc`). Every setting is a flag and an environment variable; the flag wins when both are
given. Durations use humantime syntax (`500ms`, `5s`, `2m`). Values are checked before any port
is bound: a bad value exits non-zero with a message naming the setting.
";

/// The arguments a user sets (help and version flags are clap's own).
fn settings(cmd: &Command) -> Vec<&Arg> {
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect()
}

fn help_text(arg: &Arg) -> String {
    arg.get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn default_text(arg: &Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        format!("`{}`", defaults.join(","))
    } else if arg.is_required_set() {
        "required".into()
    } else {
        "unset".into()
    }
}

fn section(title: &str, about: &str, cmd: &Command, out: &mut String, problems: &mut Vec<String>) {
    out.push_str(&format!("\n## `{title}`\n\n{about}\n\n"));
    out.push_str("| environment | flag | default | meaning |\n|---|---|---|---|\n");
    for arg in settings(cmd) {
        let flag = arg
            .get_long()
            .map(|l| format!("`--{l}`"))
            .unwrap_or_else(|| format!("`{}`", arg.get_id()));
        let env = match arg.get_env() {
            Some(e) => format!("`{}`", e.to_string_lossy()),
            None => {
                problems.push(format!("{title} {flag}: no environment variable"));
                "—".into()
            }
        };
        let mut help = help_text(arg);
        if help.is_empty() {
            problems.push(format!("{title} {flag}: no help text"));
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        if !values.is_empty() {
            help.push_str(&format!(" One of {}.", values.join(", ")));
        }
        out.push_str(&format!(
            "| {env} | {flag} | {} | {help} |\n",
            default_text(arg)
        ));
    }
}

fn render() -> (String, Vec<String>) {
    let mut out = String::from(HEADER);
    let mut problems = Vec::new();
    let gateway = gateway::cli::Cli::command();
    section(
        "gateway",
        "One gateway node (distributed mode): WebSocket `/ws`, `/healthz`, `/readyz` and `/metrics` on `GATEWAY_ADDR`.",
        &gateway,
        &mut out,
        &mut problems,
    );
    let api = chat_api::cli::Cli::command();
    let global: Vec<&Arg> = settings(&api)
        .into_iter()
        .filter(|a| a.is_global_set())
        .collect();
    for sub in api.get_subcommands() {
        let name = sub.get_name();
        // Global arguments are listed once per subcommand, as they apply to each.
        let mut cmd = sub.clone();
        for g in &global {
            if cmd.get_arguments().all(|a| a.get_id() != g.get_id()) {
                cmd = cmd.arg((*g).clone());
            }
        }
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        section(
            &format!("chat-api {name}"),
            &about,
            &cmd,
            &mut out,
            &mut problems,
        );
    }
    (out, problems)
}

#[test]
fn every_setting_has_an_env_var_and_help() {
    let (_, problems) = render();
    assert!(
        problems.is_empty(),
        "settings missing an env var or help:\n{}",
        problems.join("\n")
    );
}

#[test]
fn config_md_matches_the_code() {
    let (doc, _) = render();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &doc).expect("writing docs/CONFIG.md");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != doc {
        let first = on_disk
            .lines()
            .zip(doc.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(on_disk.lines().count().min(doc.lines().count()));
        panic!(
            "docs/CONFIG.md differs from the code's settings (first at line {}):\n  file: {:?}\n  code: {:?}\n\
             regenerate with: UPDATE_DOCS=1 cargo test -p chat-api --test config_doc",
            first + 1,
            on_disk.lines().nth(first).unwrap_or(""),
            doc.lines().nth(first).unwrap_or("")
        );
    }
}

/// Every setting the README's configuration table names exists in the generated document.
#[test]
fn readme_names_only_real_settings() {
    let (doc, _) = render();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let table = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let mut checked = 0;
    for line in table.lines().take_while(|l| !l.starts_with("## ")) {
        if !line.starts_with("| `") {
            continue;
        }
        let first_cell = line.split('|').nth(1).unwrap_or("");
        for name in first_cell.split('`').skip(1).step_by(2) {
            checked += 1;
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "README names {name}, which no binary reads"
            );
        }
    }
    assert!(
        checked > 10,
        "found only {checked} settings in the README table"
    );
}
