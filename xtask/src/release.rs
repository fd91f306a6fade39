//! `cargo xtask release VERSION`: bump every crate and internal pin together, move the
//! changelog's Unreleased section under the version, refresh Cargo.lock and check that every
//! publishable crate packages. Commits and tags only with `--commit`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use semver::Version;
use toml_edit::{DocumentMut, Item, TableLike};

use crate::changelog;
use crate::date::today_utc;
use crate::workspace::{cargo, git, output, root, run as run_cmd};

/// Options of `cargo xtask release`.
#[derive(Debug)]
pub(crate) struct Options {
    /// The new version, without a leading `v`.
    pub(crate) version: String,
    /// Commit the bump and create the tag `vVERSION`.
    pub(crate) commit: bool,
    /// Package without compiling each crate (`cargo publish --dry-run --no-verify`).
    pub(crate) no_verify: bool,
    /// The release date in the changelog (default: today, UTC).
    pub(crate) date: Option<String>,
}

/// One version string rewritten by [`bump_versions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The manifest, relative to the workspace root.
    pub(crate) file: PathBuf,
    /// The TOML key, e.g. `workspace.dependencies.codebox-core.version`.
    pub(crate) key: String,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// Runs the whole release preparation.
pub(crate) fn run(opts: &Options) -> Result<()> {
    let root = root();
    let new = parse_version(&opts.version)?;
    let tag = format!("v{new}");
    preflight(&root, &tag)?;
    let current = workspace_version(&root)?;
    ensure!(new > current, "the new version {new} must be greater than the current version {current}");

    // Everything that can refuse runs before the first file is written.
    let changelog_path = root.join("CHANGELOG.md");
    let text = std::fs::read_to_string(&changelog_path).context("reading CHANGELOG.md")?;
    let date = opts.date.clone().unwrap_or_else(today_utc);
    ensure!(is_iso_date(&date), "--date must be YYYY-MM-DD, got {date:?}");
    let released = changelog::release(&text, &new.to_string(), &date)?;

    let changes = bump_versions(&root, &current, &new)?;
    std::fs::write(&changelog_path, released).context("writing CHANGELOG.md")?;
    eprintln!("==> bumped {current} -> {new}:");
    for c in &changes {
        eprintln!("    {}: {} {} -> {}", c.file.display(), c.key, c.from, c.to);
    }
    eprintln!("    CHANGELOG.md: Unreleased -> [{new}] - {date}");

    eprintln!("==> refreshing Cargo.lock");
    run_cmd(cargo().args(["update", "--workspace"]))?;
    let stale = check_pins(&root, &new)?;
    ensure!(stale.is_empty(), "versions left behind after the bump:\n  {}", stale.join("\n  "));

    eprintln!("==> checking that every publishable crate packages");
    check_packaging(opts.no_verify)
        .context("packaging failed; the bump is left in the working tree for you to fix or revert")?;

    if opts.commit {
        let mut files: Vec<PathBuf> = changes.iter().map(|c| c.file.clone()).collect();
        files.sort();
        files.dedup();
        files.extend([PathBuf::from("CHANGELOG.md"), PathBuf::from("Cargo.lock")]);
        run_cmd(git(&root).arg("add").arg("--").args(&files))?;
        run_cmd(git(&root).args(["commit", "--quiet", "-m", &format!("Release {new}")]))?;
        run_cmd(git(&root).args(["tag", "--annotate", &tag, "-m", &format!("codebox {new}")]))?;
        eprintln!("==> committed and tagged {tag}; next: git push --follow-tags && cargo xtask publish");
    } else {
        eprintln!("==> release {new} prepared (not committed); review, then: cargo xtask release {new} --commit");
        eprintln!(
            "    or commit and tag by hand: git commit -am 'Release {new}' && git tag -a {tag} -m 'codebox {new}'"
        );
    }
    Ok(())
}

/// `cargo publish --workspace --dry-run` where cargo has it (1.90 and later): it packages every
/// publishable crate and builds each against its packaged siblings. Older cargo: `cargo
/// package` per crate in dependency order, building only the crates with no workspace
/// dependency (the others would need their siblings on the registry).
fn check_packaging(no_verify: bool) -> Result<()> {
    let help = output(cargo().args(["publish", "--help"]))?;
    if help.contains("--workspace") {
        let mut cmd = cargo();
        cmd.args(["publish", "--workspace", "--dry-run", "--allow-dirty", "--locked"]);
        if no_verify {
            cmd.arg("--no-verify");
        }
        return run_cmd(&mut cmd);
    }
    let meta = crate::workspace::Metadata::load()?;
    let order = meta.publish_order()?;
    let internal: Vec<&str> = meta.packages.iter().map(|p| p.name.as_str()).collect();
    for pkg in order {
        let mut cmd = cargo();
        cmd.args(["package", "--allow-dirty", "--locked", "--package", &pkg.name]);
        let has_sibling = pkg
            .dependencies
            .iter()
            .any(|d| d.kind != crate::workspace::DepKind::Dev && internal.contains(&d.name.as_str()));
        if no_verify || has_sibling {
            cmd.arg("--no-verify");
        }
        run_cmd(&mut cmd)?;
    }
    Ok(())
}

fn is_iso_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split('-').collect();
    let number = |s: &str, len: usize, max: u32| {
        s.len() == len
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u32>().is_ok_and(|n| (1..=max).contains(&n))
    };
    matches!(parts[..], [y, m, d] if number(y, 4, 9999) && number(m, 2, 12) && number(d, 2, 31))
}

fn parse_version(v: &str) -> Result<Version> {
    if let Some(rest) = v.strip_prefix('v') {
        bail!("write the version without the leading `v`: {rest}");
    }
    Version::parse(v).with_context(|| format!("`{v}` is not a semantic version (like 1.2.3)"))
}

/// Refuses a working tree with changes (tracked or not) and an existing tag.
pub(crate) fn preflight(root: &Path, tag: &str) -> Result<()> {
    let status = output(git(root).args(["status", "--porcelain"])).context("is this a git checkout?")?;
    if !status.trim().is_empty() {
        let shown: Vec<&str> = status.lines().take(10).collect();
        bail!("the working tree is not clean; commit or remove these first:\n  {}", shown.join("\n  "));
    }
    let exists = git(root)
        .args(["rev-parse", "--quiet", "--verify", &format!("refs/tags/{tag}")])
        .output()
        .context("running git rev-parse")?
        .status
        .success();
    ensure!(!exists, "the tag {tag} already exists");
    Ok(())
}

/// `[workspace.package] version` of the root manifest.
pub(crate) fn workspace_version(root: &Path) -> Result<Version> {
    let doc = read(&root.join("Cargo.toml"))?;
    let v = doc
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(Item::as_str)
        .context("Cargo.toml has no [workspace.package] version")?;
    parse_version(v)
}

/// Rewrites every version that moves with a release, from `old` to `new`, keeping each
/// manifest's formatting: `[workspace.package] version`, each member's literal
/// `[package] version` equal to `old`, and every dependency with both `path` and `version` (the
/// internal pins, in `[workspace.dependencies]` and in members). An internal pin that does not
/// name `old` is an error, and then nothing is written.
pub(crate) fn bump_versions(root: &Path, old: &Version, new: &Version) -> Result<Vec<Change>> {
    let (old, new) = (old.to_string(), new.to_string());
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    let mut edited = Vec::new();
    for file in manifests(root)? {
        let path = root.join(&file);
        let mut doc = read(&path)?;
        let before = changes.len();
        visit_versions(&mut doc, &mut |key, kind, value| {
            let current = value.as_str().map(str::to_owned);
            let Some(current) = current else { return };
            let next = match kind {
                VersionKind::Package if current == old => new.clone(),
                VersionKind::Package => return,
                VersionKind::Pin => {
                    let op_len = current.find(|c: char| c.is_ascii_digit()).unwrap_or(current.len());
                    let (op, v) = current.split_at(op_len);
                    if v != old {
                        problems.push(format!("{}: {key} is {current:?}, expected it to pin {old}", file.display()));
                        return;
                    }
                    format!("{op}{new}")
                }
            };
            let decor = value.decor().clone();
            *value = toml_edit::Value::from(next.as_str());
            *value.decor_mut() = decor;
            changes.push(Change { file: file.clone(), key: key.to_owned(), from: current, to: next });
        });
        if changes.len() > before {
            edited.push((path, doc));
        }
    }
    ensure!(problems.is_empty(), "internal pins out of step with the workspace version:\n  {}", problems.join("\n  "));
    ensure!(
        changes.iter().any(|c| c.file == Path::new("Cargo.toml") && c.key == "workspace.package.version"),
        "Cargo.toml: [workspace.package] version is not {old}"
    );
    for (path, doc) in edited {
        std::fs::write(&path, doc.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(changes)
}

/// Every version that should equal `version` but does not (empty when the bump is complete).
pub(crate) fn check_pins(root: &Path, version: &Version) -> Result<Vec<String>> {
    let want = version.to_string();
    let mut stale = Vec::new();
    for file in manifests(root)? {
        let mut doc = read(&root.join(&file))?;
        visit_versions(&mut doc, &mut |key, kind, value| {
            let current = value.as_str().unwrap_or_default();
            let digits = current.trim_start_matches(|c: char| !c.is_ascii_digit());
            let wrong = match kind {
                VersionKind::Package => key == "workspace.package.version" && current != want,
                VersionKind::Pin => digits != want,
            };
            if wrong {
                stale.push(format!("{}: {key} is {current:?}", file.display()));
            }
        });
    }
    Ok(stale)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionKind {
    /// `[workspace.package] version` or a member's `[package] version`.
    Package,
    /// The `version` of a dependency that also has a `path`.
    Pin,
}

/// Calls `f` with every package version and internal dependency version in `doc`.
fn visit_versions(doc: &mut DocumentMut, f: &mut dyn FnMut(&str, VersionKind, &mut toml_edit::Value)) {
    let table = doc.as_table_mut();
    if let Some(v) = table
        .get_mut("workspace")
        .and_then(|w| w.get_mut("package"))
        .and_then(|p| p.get_mut("version"))
        .and_then(Item::as_value_mut)
    {
        f("workspace.package.version", VersionKind::Package, v);
    }
    if let Some(v) = table.get_mut("package").and_then(|p| p.get_mut("version")).and_then(Item::as_value_mut) {
        // `version.workspace = true` is a table, not a string: nothing to bump.
        if v.is_str() {
            f("package.version", VersionKind::Package, v);
        }
    }
    if let Some(deps) = table.get_mut("workspace").and_then(|w| w.get_mut("dependencies")) {
        visit_pins("workspace.dependencies", deps, f);
    }
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = table.get_mut(section) {
            visit_pins(section, deps, f);
        }
    }
    if let Some(targets) = table.get_mut("target").and_then(Item::as_table_like_mut) {
        for (cfg, target) in targets.iter_mut() {
            for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(deps) = target.get_mut(section) {
                    visit_pins(&format!("target.{cfg}.{section}"), deps, f);
                }
            }
        }
    }
}

fn visit_pins(prefix: &str, deps: &mut Item, f: &mut dyn FnMut(&str, VersionKind, &mut toml_edit::Value)) {
    let Some(deps) = deps.as_table_like_mut() else { return };
    for (name, dep) in deps.iter_mut() {
        let Some(dep): Option<&mut dyn TableLike> = dep.as_table_like_mut() else { continue };
        if !dep.contains_key("path") {
            continue;
        }
        if let Some(v) = dep.get_mut("version").and_then(Item::as_value_mut) {
            f(&format!("{prefix}.{name}.version"), VersionKind::Pin, v);
        }
    }
}

/// The root manifest and every member's, relative to `root`.
pub(crate) fn manifests(root: &Path) -> Result<Vec<PathBuf>> {
    let doc = read(&root.join("Cargo.toml"))?;
    let list = |key: &str| -> Vec<String> {
        doc.get("workspace")
            .and_then(|w| w.get(key))
            .and_then(Item::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let exclude = list("exclude");
    let mut dirs = Vec::new();
    for member in list("members") {
        if let Some(parent) = member.strip_suffix("/*") {
            let mut found: Vec<String> = std::fs::read_dir(root.join(parent))
                .with_context(|| format!("listing workspace members {member}"))?
                .filter_map(Result::ok)
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .map(|e| format!("{parent}/{}", e.file_name().to_string_lossy()))
                .collect();
            found.sort();
            dirs.extend(found);
        } else {
            ensure!(!member.contains(['*', '?', '[']), "unsupported member pattern {member:?} in Cargo.toml");
            dirs.push(member);
        }
    }
    let mut files = vec![PathBuf::from("Cargo.toml")];
    files.extend(dirs.into_iter().filter(|d| !exclude.contains(d)).map(|d| Path::new(&d).join("Cargo.toml")));
    Ok(files)
}

fn read(path: &Path) -> Result<DocumentMut> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse().with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A copy of this workspace's manifests and changelog in a temporary directory.
    fn copy_of_workspace() -> tempfile::TempDir {
        let real = root();
        let tmp = tempfile::tempdir().unwrap();
        for file in manifests(&real).unwrap().into_iter().chain([PathBuf::from("CHANGELOG.md")]) {
            let to = tmp.path().join(&file);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(real.join(&file), &to).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
        }
        tmp
    }

    fn next_minor(v: &Version) -> Version {
        Version::new(v.major, v.minor + 1, 0)
    }

    #[test]
    fn bump_moves_every_version_and_pin_together_and_nothing_else() {
        let tmp = copy_of_workspace();
        let dir = tmp.path();
        let old = workspace_version(dir).unwrap();
        let new = next_minor(&old);
        let before: Vec<(PathBuf, String)> = manifests(dir)
            .unwrap()
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(&f)).unwrap();
                (f, text)
            })
            .collect();

        let changes = bump_versions(dir, &old, &new).unwrap();

        assert_eq!(workspace_version(dir).unwrap(), new);
        assert_eq!(check_pins(dir, &new).unwrap(), Vec::<String>::new());
        // Every internal crate of [workspace.dependencies] is pinned to exactly the new version.
        let root_doc = read(&dir.join("Cargo.toml")).unwrap();
        let deps = root_doc["workspace"]["dependencies"].as_table_like().unwrap();
        let pinned: Vec<&str> = deps.iter().filter(|(_, d)| d.get("path").is_some()).map(|(n, _)| n).collect();
        for name in [
            "codebox-core",
            "codebox-http",
            "codebox-sandbox",
            "codebox-local",
            "codebox-remote",
            "codebox-server",
            "codebox",
        ] {
            assert!(pinned.contains(&name), "{name} is not an internal pin: {pinned:?}");
        }
        for name in &pinned {
            assert_eq!(deps.get(name).unwrap()["version"].as_str(), Some(format!("={new}").as_str()), "{name}");
        }
        assert_eq!(changes.iter().filter(|c| c.key.starts_with("workspace.dependencies.")).count(), pinned.len());
        // External requirements are untouched, and so is a member with a version of its own.
        assert_eq!(deps.get("tokio").unwrap()["version"].as_str(), Some("1"));
        let xtask = read(&dir.join("xtask/Cargo.toml")).unwrap();
        assert_eq!(xtask["package"]["version"].as_str(), Some("0.0.0"));
        // Formatting and comments survive: only the version strings differ.
        for (file, text) in before {
            let expected = text
                .replace(&format!("\"={old}\""), &format!("\"={new}\""))
                .replace(&format!("version = \"{old}\""), &format!("version = \"{new}\""));
            assert_eq!(std::fs::read_to_string(dir.join(&file)).unwrap(), expected, "{}", file.display());
        }

        // The changelog of the copy moves its Unreleased notes under the new version.
        let changelog = std::fs::read_to_string(dir.join("CHANGELOG.md")).unwrap();
        // The notes: from the Unreleased heading to the next section or the link definitions.
        let unreleased: String = changelog
            .split("## [Unreleased]")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("## ") && !l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned();
        assert!(!unreleased.is_empty(), "the real CHANGELOG.md has no Unreleased notes");
        let released = changelog::release(&changelog, &new.to_string(), "2030-01-02").unwrap();
        let heading = format!("## [Unreleased]\n\n## [{new}] - 2030-01-02\n\n");
        let at = released.find(&heading).expect("new version heading under an empty Unreleased");
        assert!(released[at + heading.len()..].starts_with(unreleased.lines().next().unwrap()), "{released}");
        assert!(released.contains(&unreleased), "{released}");
    }

    #[test]
    fn pin_out_of_step_is_refused_and_nothing_is_written() {
        let tmp = copy_of_workspace();
        let dir = tmp.path();
        let old = workspace_version(dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let needle = format!("codebox-http = {{ path = \"crates/codebox-http\", version = \"={old}\"");
        assert!(text.contains(&needle), "unexpected root manifest layout");
        let broken = text.replace(&needle, "codebox-http = { path = \"crates/codebox-http\", version = \"=0.0.1\"");
        std::fs::write(&manifest, &broken).unwrap();

        let err = bump_versions(dir, &old, &next_minor(&old)).unwrap_err().to_string();
        assert!(err.contains("Cargo.toml: workspace.dependencies.codebox-http.version is \"=0.0.1\""), "{err}");
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), broken);
        assert_eq!(workspace_version(dir).unwrap(), old);
    }

    #[test]
    fn member_pins_and_literal_versions_are_bumped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"crates/*\"]\n\n[workspace.package]\nversion = \"1.2.3\" # the release\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("crates/a")).unwrap();
        std::fs::create_dir_all(dir.join("crates/b")).unwrap();
        std::fs::write(dir.join("crates/a/Cargo.toml"), "[package]\nname = \"a\"\nversion = \"1.2.3\"\n").unwrap();
        std::fs::write(
            dir.join("crates/b/Cargo.toml"),
            "[package]\nname = \"b\"\nversion.workspace = true\n\n[dependencies]\na = { path = \"../a\", version = \"^1.2.3\" }\nserde = \"1.2.3\"\n\n[target.'cfg(unix)'.dev-dependencies.a]\npath = \"../a\"\nversion = \"=1.2.3\"\n",
        )
        .unwrap();

        let changes = bump_versions(dir, &Version::new(1, 2, 3), &Version::new(2, 0, 0)).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "workspace.package.version",
                "package.version",
                "dependencies.a.version",
                "target.'cfg(unix)'.dev-dependencies.a.version"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("Cargo.toml")).unwrap(),
            "[workspace]\nmembers = [\"crates/*\"]\n\n[workspace.package]\nversion = \"2.0.0\" # the release\n"
        );
        let b = std::fs::read_to_string(dir.join("crates/b/Cargo.toml")).unwrap();
        assert!(b.contains("a = { path = \"../a\", version = \"^2.0.0\" }"), "{b}");
        assert!(b.contains("serde = \"1.2.3\""), "{b}");
        assert!(b.contains("version = \"=2.0.0\""), "{b}");
    }

    fn git_in(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn preflight_refuses_dirty_tree_and_existing_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git_in(dir, &["init", "--quiet"]);
        std::fs::write(dir.join("Cargo.toml"), "[workspace]\n").unwrap();
        git_in(dir, &["add", "Cargo.toml"]);
        git_in(dir, &["commit", "--quiet", "-m", "init"]);
        preflight(dir, "v0.2.0").unwrap();

        std::fs::write(dir.join("new.rs"), "").unwrap();
        let err = preflight(dir, "v0.2.0").unwrap_err().to_string();
        assert!(err.contains("not clean") && err.contains("new.rs"), "{err}");
        std::fs::remove_file(dir.join("new.rs")).unwrap();

        std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        let err = preflight(dir, "v0.2.0").unwrap_err().to_string();
        assert!(err.contains("not clean") && err.contains("Cargo.toml"), "{err}");
        git_in(dir, &["commit", "--quiet", "-am", "members"]);

        git_in(dir, &["tag", "v0.2.0"]);
        assert_eq!(preflight(dir, "v0.2.0").unwrap_err().to_string(), "the tag v0.2.0 already exists");
        preflight(dir, "v0.3.0").unwrap();
    }

    #[test]
    fn release_date_must_be_iso() {
        assert!(is_iso_date("2026-11-21"));
        for bad in ["2026-13-01", "2026-1-01", "21/11/2026", "2026-11-21T00:00", "", "2026-00-10"] {
            assert!(!is_iso_date(bad), "{bad}");
        }
    }

    #[test]
    fn version_argument_is_validated() {
        assert!(parse_version("v1.0.0").unwrap_err().to_string().contains("without the leading `v`"));
        assert!(parse_version("1.0").unwrap_err().to_string().contains("not a semantic version"));
        assert_eq!(parse_version("1.0.0-rc.1").unwrap(), Version::parse("1.0.0-rc.1").unwrap());
    }
}
