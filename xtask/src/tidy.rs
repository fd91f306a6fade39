//! `cargo xtask tidy`: house rules that neither rustc nor clippy checks, over every tracked
//! Rust file and manifest.
//!
//! - every source file opens with a `//!` module comment (or the facade's README include);
//! - every `allow` attribute says why: a `reason = "..."`, or a `//` comment on its line or
//!   the line above;
//! - no `Result<_, String>` in a library crate's `src/` (errors are typed: thiserror or
//!   `CodeBoxError`);
//! - no file in `crates/*/src` is over [`MAX_LINES`] lines unless its opening comment has a
//!   line starting `//! Long file:` that says why;
//! - no unused dependency: every dependency a manifest declares is named in that package's
//!   sources or doctested Markdown (the check cargo-machete makes, on `cargo metadata`'s own crate names, so a
//!   renamed or hyphenated dependency is found under the name code uses).
//!
//! The crate dependency rules themselves (which crate may depend on which) are a test of the
//! `tests` package (`tests/tests/it/deps.rs`), run by the `test` step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::workspace::{cargo, git, root};

/// The longest a library source file may be without saying why.
pub(crate) const MAX_LINES: usize = 600;

/// Dependencies that no source file names, each with why it is declared anyway.
const USED_WITHOUT_A_NAME: &[(&str, &str, &str)] = &[
    // (package, dependency as code would name it, why)
];

/// One rule broken at one place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) path: PathBuf,
    pub(crate) line: usize,
    pub(crate) rule: &'static str,
    pub(crate) text: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}: {}", self.path.display(), self.line, self.rule, self.text)
    }
}

/// Runs every check over the workspace and fails listing every finding.
pub(crate) fn run() -> Result<()> {
    let root = root();
    let files = tracked_files(&root, "*.rs")?;
    let mut findings = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {}", path.display()))?;
        findings.extend(check_file(path, &text));
    }
    let docs = tracked_files(&root, "*.md")?;
    findings.extend(unused_dependencies(&root, &[files.as_slice(), docs.as_slice()].concat())?);
    if findings.is_empty() {
        eprintln!("    {} files tidy", files.len());
        return Ok(());
    }
    for f in &findings {
        eprintln!("{f}");
    }
    bail!("{} tidy finding(s)", findings.len())
}

/// The files git tracks whose names match `pattern` (so target/ and scratch files are never
/// read).
fn tracked_files(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let out = git(root).args(["ls-files", "-z", "--", pattern]).output().context("running git ls-files")?;
    if !out.status.success() {
        bail!("git ls-files failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        // A file git still lists but that is gone from the work tree (deleted, not yet staged).
        .filter(|p| root.join(p).is_file())
        .collect())
}

/// Whether `path` is library code: under `crates/*/src`, not the command-line application.
fn is_library_source(path: &Path) -> bool {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.len() >= 4 && parts[0] == "crates" && parts[2] == "src" && parts[1] != "codebox-cli"
}

/// The per-file rules.
pub(crate) fn check_file(path: &Path, text: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut found = |line: usize, rule: &'static str, text: String| {
        findings.push(Finding { path: path.to_path_buf(), line, rule, text });
    };
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().map(|l| l.trim()).find(|l| !l.is_empty()).unwrap_or("");
    if !(first.starts_with("//!") || first.starts_with("#![doc = include_str!(")) {
        found(1, "module comment", "the file must open with a `//!` comment saying what it is".into());
    }
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        if (code.starts_with("#[allow(") || code.starts_with("#![allow(")) && !allow_has_reason(&lines, i) {
            found(i + 1, "allow without a reason", format!("{}: add `reason = \"...\"` or a comment", code.trim()));
        }
    }
    if is_library_source(path) {
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if returns_string_error(code) {
                found(i + 1, "Result<_, String>", format!("{}: use a typed error", code.trim()));
            }
        }
        let long_ok = lines
            .iter()
            .take_while(|l| l.trim_start().starts_with("//!") || l.trim().is_empty())
            .any(|l| l.trim_start().starts_with("//! Long file:"));
        if lines.len() > MAX_LINES && !long_ok {
            found(
                lines.len(),
                "long file",
                format!("{} lines (over {MAX_LINES}): split it, or say why in a `//! Long file:` line", lines.len()),
            );
        }
    }
    findings
}

/// An `allow` attribute at `lines[i]` gives its reason in the attribute, on its own line after
/// `//`, or in a comment on the line above (possibly above further attributes).
fn allow_has_reason(lines: &[&str], i: usize) -> bool {
    let line = lines[i];
    if line.contains("reason") || line.contains("//") {
        return true;
    }
    // A multi-line attribute: look ahead to its closing `]`.
    for next in lines.iter().skip(i + 1).take(6) {
        if next.contains("reason") || next.contains("//") {
            return true;
        }
        if next.trim_end().ends_with(")]") {
            break;
        }
    }
    let mut j = i;
    while j > 0 {
        j -= 1;
        let above = lines[j].trim_start();
        if above.starts_with("//") && !above.starts_with("///") && !above.starts_with("//!") {
            return true;
        }
        if !above.starts_with("#[") {
            return false;
        }
    }
    false
}

/// Whether `code` names a `Result` whose error type is `String`.
fn returns_string_error(code: &str) -> bool {
    let mut rest = code;
    while let Some(at) = rest.find("Result<") {
        let after = &rest[at + "Result<".len()..];
        // The generic arguments up to the matching `>`.
        let mut depth = 1usize;
        let mut end = None;
        for (k, c) in after.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(k);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { return false };
        let args = &after[..end];
        let mut depth = 0usize;
        let mut last_top_comma = None;
        for (k, c) in args.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => last_top_comma = Some(k),
                _ => {}
            }
        }
        if let Some(comma) = last_top_comma
            && matches!(args[comma + 1..].trim(), "String" | "std::string::String")
        {
            return true;
        }
        rest = &after[end..];
    }
    false
}

/// Every dependency a workspace package declares but none of its files names.
fn unused_dependencies(root: &Path, files: &[PathBuf]) -> Result<Vec<Finding>> {
    let out =
        cargo().args(["metadata", "--format-version", "1", "--locked"]).output().context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let members: Vec<&str> =
        meta["workspace_members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let packages: BTreeMap<&str, &Value> =
        meta["packages"].as_array().into_iter().flatten().filter_map(|p| Some((p["id"].as_str()?, p))).collect();
    let nodes = meta["resolve"]["nodes"].as_array().context("cargo metadata has no resolve graph")?;
    let mut findings = Vec::new();
    for node in nodes {
        let Some(id) = node["id"].as_str() else { continue };
        if !members.contains(&id) {
            continue;
        }
        let package = packages[id];
        let name = package["name"].as_str().unwrap_or_default();
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().unwrap_or(root).strip_prefix(root).unwrap_or(Path::new("")).to_path_buf();
        let sources = package_sources(root, &dir, files, &members_dirs(&packages, &members, root))?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let Some(crate_name) = dep["name"].as_str() else { continue };
            if USED_WITHOUT_A_NAME.iter().any(|(p, d, _)| *p == name && *d == crate_name) {
                continue;
            }
            if !sources.iter().any(|text| names_crate(text, crate_name)) {
                findings.push(Finding {
                    path: dir.join("Cargo.toml"),
                    line: 0,
                    rule: "unused dependency",
                    text: format!("{name} declares `{crate_name}` but no file of it uses it"),
                });
            }
        }
    }
    Ok(findings)
}

/// The directories of every workspace package, so a package's sources stop at a nested one.
fn members_dirs(packages: &BTreeMap<&str, &Value>, members: &[&str], root: &Path) -> Vec<PathBuf> {
    members
        .iter()
        .filter_map(|id| packages.get(id))
        .filter_map(|p| Path::new(p["manifest_path"].as_str()?).parent().map(Path::to_path_buf))
        .filter_map(|d| d.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect()
}

/// The text of every tracked file of the package in `dir` (not of a package nested in it):
/// its Rust sources, and its Markdown, whose code blocks are doctests when a crate includes it.
fn package_sources(root: &Path, dir: &Path, files: &[PathBuf], all_dirs: &[PathBuf]) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for file in files {
        if !file.starts_with(dir) {
            continue;
        }
        // The deepest package directory holding the file owns it.
        let owner = all_dirs.iter().filter(|d| file.starts_with(d)).max_by_key(|d| d.components().count());
        if owner.is_some_and(|o| o != dir) {
            continue;
        }
        texts.push(std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {}", file.display()))?);
    }
    Ok(texts)
}

/// Whether `text` names the crate `name` as a path root (`name::`, `use name`, `extern crate
/// name`, a `#[name::...]` attribute) rather than only as part of a longer identifier.
fn names_crate(text: &str, name: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(name) {
        let start = from + at;
        let end = start + name.len();
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let after_ok = end == bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        if before_ok && after_ok {
            let after = &text[end..];
            let before = text[..start].trim_end();
            if after.starts_with("::")
                || before.ends_with("use")
                || before.ends_with("extern crate")
                || after.trim_start().starts_with("as ")
                || after.starts_with(';')
            {
                return true;
            }
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(path: &str, text: &str) -> Vec<&'static str> {
        check_file(Path::new(path), text).into_iter().map(|f| f.rule).collect()
    }

    #[test]
    fn a_file_without_a_module_comment_is_found() {
        assert_eq!(rules("xtask/src/a.rs", "use std::fs;\n"), ["module comment"]);
        assert!(rules("xtask/src/a.rs", "\n//! What this is.\nuse std::fs;\n").is_empty());
        assert!(rules("crates/codebox/src/lib.rs", "#![doc = include_str!(\"../README.md\")]\n").is_empty());
    }

    #[test]
    fn an_allow_needs_a_reason_somewhere_near() {
        let bare = "//! x\n#[allow(dead_code)]\nfn f() {}\n";
        assert_eq!(rules("xtask/src/a.rs", bare), ["allow without a reason"]);
        for ok in [
            "//! x\n#[allow(dead_code)] // kept for the next release\nfn f() {}\n",
            "//! x\n// kept for the next release\n#[allow(dead_code)]\nfn f() {}\n",
            "//! x\n// why\n#[cfg(test)]\n#[allow(dead_code)]\nfn f() {}\n",
            "//! x\n#[allow(dead_code, reason = \"kept\")]\nfn f() {}\n",
            "//! x\n#[allow(\n    dead_code,\n    reason = \"kept\"\n)]\nfn f() {}\n",
        ] {
            assert!(rules("xtask/src/a.rs", ok).is_empty(), "{ok}");
        }
        // A doc comment above says what the item is, not why the lint is off.
        assert_eq!(
            rules("xtask/src/a.rs", "//! x\n/// f.\n#[allow(dead_code)]\nfn f() {}\n"),
            ["allow without a reason"]
        );
    }

    #[test]
    fn string_errors_are_found_in_library_code_only() {
        let text = "//! x\nfn f() -> Result<u8, String> { Ok(1) }\n";
        assert_eq!(rules("crates/codebox-core/src/a.rs", text), ["Result<_, String>"]);
        assert!(rules("crates/codebox-cli/src/a.rs", text).is_empty());
        assert!(rules("crates/codebox-core/tests/it/a.rs", text).is_empty());
        assert!(returns_string_error("fn f() -> std::result::Result<Vec<(u8, u8)>, String>"));
        assert!(returns_string_error("fn f() -> Result<(), std::string::String>"));
        assert!(!returns_string_error("fn f() -> Result<String, Error>"));
        assert!(!returns_string_error("fn f() -> Result<HashMap<String, String>>"));
        assert!(!returns_string_error("fn f() -> Result<String>"));
        // In a comment it is prose.
        assert!(rules("crates/codebox-core/src/a.rs", "//! x\n// was Result<u8, String>\n").is_empty());
    }

    #[test]
    fn a_long_library_file_must_say_why() {
        let body = "fn f() {}\n".repeat(MAX_LINES);
        assert_eq!(rules("crates/codebox-core/src/a.rs", &format!("//! x\n{body}")), ["long file"]);
        assert!(
            rules("crates/codebox-core/src/a.rs", &format!("//! x\n//!\n//! Long file: one state machine.\n{body}"))
                .is_empty()
        );
        assert!(rules("xtask/src/a.rs", &format!("//! x\n{body}")).is_empty());
    }

    #[test]
    fn a_crate_is_named_as_a_path_root_only() {
        assert!(names_crate("use serde_json::Value;", "serde_json"));
        assert!(names_crate("let v = serde_json::json!({});", "serde_json"));
        assert!(names_crate("use tempfile;", "tempfile"));
        assert!(names_crate("#[tokio::test]", "tokio"));
        assert!(names_crate("extern crate alloc as a;", "alloc"));
        assert!(!names_crate("let serde_json_like = 1; // serde_json", "serde_json"));
        assert!(!names_crate("my_tokio::spawn()", "tokio"));
    }
}
