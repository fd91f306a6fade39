//! The dependency rules of ARCHITECTURE.md, checked against `cargo metadata`.
//!
//! Only dependencies that ship count (normal and build); dev-dependencies are free, except for
//! xtask, which must build even when the workspace does not.
//!
//! Rules:
//! - every workspace crate is listed below with the workspace crates it may depend on: the
//!   backends `codebox-local` and `codebox-remote` never depend on each other, the server knows
//!   only `codebox-core`, `codebox-http` and `codebox-mcp` (never a backend), `codebox-mcp`
//!   only `codebox-core`, `codebox-http` depends on no backend, and `xtask` on no workspace
//!   crate at all;
//! - `codebox-sandbox` depends on `codebox-core` alone, and only `codebox-local` depends on
//!   it: everyone else (the facade, the CLI) reaches its policy types through
//!   `codebox-local`'s re-exports, so the sandbox's launch side stays one backend's business;
//! - `codebox-core` does no I/O: its external dependencies are an allow-list, and tokio is
//!   optional and enabled only by its `conformance` feature;
//! - the facade `codebox` depends on core always and on each backend and the server only
//!   optionally (behind its features).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

const CORE: &str = "codebox-core";
const FACADE: &str = "codebox";
/// Dependencies that may be enabled only by codebox-core's `conformance` feature.
const CORE_CONFORMANCE_ONLY: &[&str] = &["tokio"];
/// External dependencies codebox-core may have: none of them does I/O.
const CORE_ALLOWED: &[&str] =
    &["async-trait", "base64", "bytes", "futures", "serde", "serde_json", "sha2", "thiserror", "tokio"];

/// For each workspace crate, the workspace crates it may depend on (normal and build
/// dependencies). `None`: any, for crates that are not part of the published graph.
fn allowed_internal(name: &str) -> Option<Option<&'static [&'static str]>> {
    Some(match name {
        "codebox-core" => Some(&[]),
        "codebox-http" => Some(&["codebox-core"]),
        "codebox-sandbox" => Some(&["codebox-core"]),
        "codebox-local" => Some(&["codebox-core", "codebox-sandbox"]),
        "codebox-remote" => Some(&["codebox-core", "codebox-http"]),
        // The MCP service knows boxes only through the trait and its own `SessionHost`.
        "codebox-mcp" => Some(&["codebox-core"]),
        "codebox-server" => Some(&["codebox-core", "codebox-http", "codebox-mcp"]),
        "codebox" => Some(&["codebox-core", "codebox-local", "codebox-remote", "codebox-server"]),
        // The application at the top of the graph may use any library crate directly, but the
        // sandbox only through codebox-local.
        "codebox-cli" => Some(&[
            "codebox",
            "codebox-core",
            "codebox-http",
            "codebox-local",
            "codebox-mcp",
            "codebox-remote",
            "codebox-server",
        ]),
        "xtask" => Some(&[]),
        // Not published; they exist to exercise everything.
        "codebox-examples" | "codebox-tests" | "codebox-bench" => None,
        _ => return None,
    })
}

/// Why an edge is forbidden, for the error message.
fn reason(from: &str, to: &str) -> &'static str {
    match (from, to) {
        (_, "codebox-sandbox") => {
            "only codebox-local depends on codebox-sandbox; use the policy types codebox-local re-exports"
        }
        ("codebox-sandbox", _) => "codebox-sandbox depends on codebox-core alone",
        ("codebox-local", "codebox-remote") | ("codebox-remote", "codebox-local") => {
            "backends never depend on each other"
        }
        ("codebox-server", _) => "the server knows only the CodeBox trait (codebox-core), codebox-http and codebox-mcp",
        ("codebox-mcp", _) => "codebox-mcp knows boxes only through codebox-core's trait",
        ("codebox-http", _) => "codebox-http depends on no backend",
        ("codebox-core", _) => "codebox-core is the root of the graph",
        ("xtask", _) => "xtask depends on no workspace crate, so it runs even when the workspace does not build",
        _ => "not in the dependency rules of ARCHITECTURE.md",
    }
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn packages(meta: &Value) -> Vec<&Value> {
    meta["packages"].as_array().expect("packages").iter().collect()
}

/// Every broken rule, each naming the offending edge.
fn violations(meta: &Value) -> Vec<String> {
    let packages = packages(meta);
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut errors = Vec::new();
    for pkg in &packages {
        let name = pkg["name"].as_str().unwrap_or_default();
        let Some(allowed) = allowed_internal(name) else {
            errors.push(format!(
                "{name}: a workspace crate without a dependency rule; add it to tests/tests/it/deps.rs and ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let to = dep["name"].as_str().unwrap_or_default();
            let kind = dep["kind"].as_str().unwrap_or("normal");
            let edge = format!("{name} -> {to} ({kind})");
            let ships = kind != "dev";
            let checked = members.contains(to) && (ships || name == "xtask");
            if checked && allowed.is_some_and(|allowed| !allowed.contains(&to)) {
                errors.push(format!("{edge}: forbidden, {}", reason(name, to)));
            }
            if name == CORE && ships && !members.contains(to) {
                if !CORE_ALLOWED.contains(&to) {
                    errors.push(format!(
                        "{edge}: codebox-core has no I/O dependencies; allowed: {}",
                        CORE_ALLOWED.join(", ")
                    ));
                } else if CORE_CONFORMANCE_ONLY.contains(&to) && dep["optional"] != json!(true) {
                    errors.push(format!("{edge}: must be optional, enabled only by the `conformance` feature"));
                }
            }
            if name == FACADE && ships && to != CORE && members.contains(to) && dep["optional"] != json!(true) {
                errors.push(format!("{edge}: the facade depends on backends and the server only optionally"));
            }
        }
        if name == CORE {
            errors.extend(core_feature_violations(pkg));
        }
    }
    for required in [
        CORE,
        "codebox-http",
        "codebox-sandbox",
        "codebox-local",
        "codebox-remote",
        "codebox-mcp",
        "codebox-server",
        FACADE,
        "xtask",
    ] {
        if !members.contains(required) {
            errors.push(format!("{required}: missing from the workspace"));
        }
    }
    errors
}

/// The conformance-only dependencies of codebox-core are enabled by `conformance` and no other
/// feature, and `conformance` is not a default.
fn core_feature_violations(core: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let features = core["features"].as_object().cloned().unwrap_or_default();
    for (feature, enables) in &features {
        for item in enables.as_array().into_iter().flatten().filter_map(Value::as_str) {
            let dep = item.trim_start_matches("dep:").split(['/', '?']).next().unwrap_or_default();
            if CORE_CONFORMANCE_ONLY.contains(&dep) && feature != "conformance" {
                errors.push(format!("codebox-core feature `{feature}` enables `{item}`: only `conformance` may"));
            }
            if feature == "default" && item == "conformance" {
                errors.push("codebox-core: `conformance` must not be a default feature".to_owned());
            }
        }
    }
    errors
}

#[test]
fn workspace_follows_the_dependency_rules() {
    let meta = metadata();
    let errors = violations(&meta);
    assert!(errors.is_empty(), "dependency rules broken:\n  {}", errors.join("\n  "));
}

/// Adds a dependency `from -> to` to a copy of the metadata.
fn with_edge(meta: &Value, from: &str, to: &str, kind: Option<&str>, optional: bool) -> Value {
    let mut meta = meta.clone();
    let pkg = meta["packages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["name"] == from)
        .unwrap_or_else(|| panic!("{from} is not in the workspace"));
    pkg["dependencies"].as_array_mut().unwrap().push(json!({"name": to, "kind": kind, "optional": optional}));
    meta
}

#[test]
fn each_forbidden_edge_is_reported_by_name() {
    let meta = metadata();
    let cases = [
        (
            ("codebox-local", "codebox-remote", None, false),
            "codebox-local -> codebox-remote (normal): forbidden, backends never depend on each other",
        ),
        (
            ("codebox-remote", "codebox-local", Some("build"), false),
            "codebox-remote -> codebox-local (build): forbidden, backends never depend on each other",
        ),
        (
            ("codebox-server", "codebox-local", None, false),
            "codebox-server -> codebox-local (normal): forbidden, the server knows only",
        ),
        (
            ("codebox-http", "codebox-remote", None, true),
            "codebox-http -> codebox-remote (normal): forbidden, codebox-http depends on no backend",
        ),
        (
            ("xtask", "codebox-core", Some("dev"), false),
            "xtask -> codebox-core (dev): forbidden, xtask depends on no workspace crate",
        ),
        (
            ("codebox-core", "reqwest", None, false),
            "codebox-core -> reqwest (normal): codebox-core has no I/O dependencies",
        ),
        (
            ("codebox-cli", "codebox-sandbox", None, false),
            "codebox-cli -> codebox-sandbox (normal): forbidden, only codebox-local depends on codebox-sandbox",
        ),
        (
            ("codebox-server", "codebox-sandbox", None, false),
            "codebox-server -> codebox-sandbox (normal): forbidden, only codebox-local depends on codebox-sandbox",
        ),
        (
            ("codebox-sandbox", "codebox-local", None, false),
            "codebox-sandbox -> codebox-local (normal): forbidden, codebox-sandbox depends on codebox-core alone",
        ),
        (
            ("codebox-mcp", "codebox-local", None, false),
            "codebox-mcp -> codebox-local (normal): forbidden, codebox-mcp knows boxes only through",
        ),
        (
            ("codebox", "codebox-server", None, false),
            "codebox -> codebox-server (normal): the facade depends on backends and the server only optionally",
        ),
    ];
    for ((from, to, kind, optional), expected) in cases {
        let errors = violations(&with_edge(&meta, from, to, kind, optional));
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{from} -> {to}: expected {expected:?}, got {errors:?}"
        );
    }
    // Dev-dependencies do not ship: a backend may use the other in its tests.
    assert_eq!(
        violations(&with_edge(&meta, "codebox-local", "codebox-remote", Some("dev"), false)),
        Vec::<String>::new()
    );
}

#[test]
fn core_tokio_must_stay_behind_conformance() {
    let mut meta = metadata();
    let core = meta["packages"].as_array_mut().unwrap().iter_mut().find(|p| p["name"] == CORE).unwrap();
    core["features"]["default"] = json!(["conformance"]);
    core["features"]["runtime"] = json!(["dep:tokio"]);
    for dep in core["dependencies"].as_array_mut().unwrap() {
        if dep["name"] == "tokio" && dep["kind"].is_null() {
            dep["optional"] = json!(false);
        }
    }
    let errors = violations(&meta);
    for expected in [
        "codebox-core -> tokio (normal): must be optional",
        "codebox-core feature `runtime` enables `dep:tokio`: only `conformance` may",
        "codebox-core: `conformance` must not be a default feature",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "expected {expected:?}, got {errors:?}");
    }
}

#[test]
fn a_new_crate_needs_a_rule() {
    let mut meta = metadata();
    let mut extra = packages(&meta)[0].clone();
    extra["name"] = json!("codebox-extra");
    meta["packages"].as_array_mut().unwrap().push(extra);
    let errors = violations(&meta);
    assert!(
        errors.iter().any(|e| e.starts_with("codebox-extra: a workspace crate without a dependency rule")),
        "{errors:?}"
    );
}

/// xtask's leak check cannot depend on the workspace, so it spells the default session uid
/// range out: it must be the sandbox's, half-open the same way.
#[test]
fn xtask_knows_the_default_uid_range() {
    let leaks = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../xtask/src/leaks.rs")).unwrap();
    let range = codebox_local::DEFAULT_UID_RANGE;
    let spelled = |n: u32| {
        let digits = n.to_string();
        let (head, tail) = digits.split_at(digits.len() - 3);
        format!("{head}_{tail}")
    };
    let expected = format!("{}..{}", spelled(range.start), spelled(range.end));
    assert!(leaks.contains(&expected), "xtask/src/leaks.rs does not list the default uid range {expected}");
}
