//! CHANGELOG.md in Keep a Changelog form: moving `## [Unreleased]` under a released version.

use anyhow::{Result, bail};

const UNRELEASED: &str = "## [Unreleased]";

/// Moves the body of `## [Unreleased]` under `## [version] - date`, leaving an empty
/// Unreleased section above it, and updates the `[Unreleased]:` link reference if there is one
/// (`.../compare/vPREV...HEAD` or, before the first release, `.../commits/HEAD`).
pub(crate) fn release(text: &str, version: &str, date: &str) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim().eq_ignore_ascii_case(UNRELEASED)) else {
        bail!("CHANGELOG.md has no `{UNRELEASED}` heading");
    };
    let heading = format!("## [{version}]");
    if lines.iter().any(|l| l.trim() == heading || l.starts_with(&format!("{heading} "))) {
        bail!("CHANGELOG.md already has a `{heading}` section");
    }
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## ") || is_link_definition(l))
        .map_or(lines.len(), |i| start + 1 + i);
    let body = &lines[start + 1..end];
    if body.iter().all(|l| l.trim().is_empty()) {
        bail!("the `{UNRELEASED}` section of CHANGELOG.md is empty: describe the release there first");
    }
    let body = trim_blank(body);

    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.push(UNRELEASED.to_owned());
    out.push(String::new());
    out.push(format!("{heading} - {date}"));
    out.push(String::new());
    out.extend(body.iter().map(|l| l.to_string()));
    out.push(String::new());
    let mut rest: Vec<String> = lines[end..].iter().map(|l| l.to_string()).collect();
    update_links(&mut rest, version);
    out.extend(rest);
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    Ok(out.join("\n") + "\n")
}

fn is_link_definition(line: &str) -> bool {
    line.starts_with('[') && line.contains("]: ")
}

fn trim_blank<'a>(mut lines: &'a [&'a str]) -> &'a [&'a str] {
    while lines.first().is_some_and(|l| l.trim().is_empty()) {
        lines = &lines[1..];
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines = &lines[..lines.len() - 1];
    }
    lines
}

fn update_links(lines: &mut Vec<String>, version: &str) {
    let Some(i) = lines.iter().position(|l| l.to_lowercase().starts_with("[unreleased]: ")) else {
        return;
    };
    let (label, url) =
        lines[i].split_once("]: ").map(|(a, b)| (format!("{a}]"), b.trim().to_owned())).unwrap_or_default();
    let (unreleased, released) = if let Some((base, range)) = url.split_once("/compare/") {
        let previous = range.strip_suffix("...HEAD").unwrap_or(range);
        (format!("{base}/compare/v{version}...HEAD"), format!("{base}/compare/{previous}...v{version}"))
    } else if let Some((base, _)) = url.split_once("/commits/") {
        (format!("{base}/compare/v{version}...HEAD"), format!("{base}/releases/tag/v{version}"))
    } else {
        return;
    };
    lines[i] = format!("{label}: {unreleased}");
    lines.insert(i + 1, format!("[{version}]: {released}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "# Changelog\n\nAll notable changes.\n\n## [Unreleased]\n\n### Added\n\n- The `CodeBox` trait.\n- LocalBox.\n\n[Unreleased]: https://github.com/o/r/commits/HEAD\n";

    #[test]
    fn first_release_moves_unreleased_and_links_the_tag() {
        let out = release(FIRST, "0.1.0", "2026-11-21").unwrap();
        assert_eq!(
            out,
            "# Changelog\n\nAll notable changes.\n\n## [Unreleased]\n\n## [0.1.0] - 2026-11-21\n\n### Added\n\n- The `CodeBox` trait.\n- LocalBox.\n\n[Unreleased]: https://github.com/o/r/compare/v0.1.0...HEAD\n[0.1.0]: https://github.com/o/r/releases/tag/v0.1.0\n"
        );
    }

    #[test]
    fn later_release_compares_with_the_previous_tag() {
        let text = "## [Unreleased]\n### Fixed\n- A bug.\n## [0.1.0] - 2026-11-21\n### Added\n- All.\n\n[Unreleased]: https://github.com/o/r/compare/v0.1.0...HEAD\n[0.1.0]: https://github.com/o/r/releases/tag/v0.1.0\n";
        let out = release(text, "0.2.0", "2026-12-01").unwrap();
        assert_eq!(
            out,
            "## [Unreleased]\n\n## [0.2.0] - 2026-12-01\n\n### Fixed\n- A bug.\n\n## [0.1.0] - 2026-11-21\n### Added\n- All.\n\n[Unreleased]: https://github.com/o/r/compare/v0.2.0...HEAD\n[0.2.0]: https://github.com/o/r/compare/v0.1.0...v0.2.0\n[0.1.0]: https://github.com/o/r/releases/tag/v0.1.0\n"
        );
    }

    #[test]
    fn empty_unreleased_section_is_refused() {
        let err = release("## [Unreleased]\n\n## [0.1.0] - 2026-11-21\n- x\n", "0.2.0", "d").unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }

    #[test]
    fn missing_heading_and_existing_version_are_refused() {
        let err = release("# Changelog\n", "0.1.0", "d").unwrap_err();
        assert!(err.to_string().contains("no `## [Unreleased]` heading"), "{err}");
        let err = release("## [Unreleased]\n- x\n## [0.1.0] - 2026-11-21\n- y\n", "0.1.0", "d").unwrap_err();
        assert!(err.to_string().contains("already has a `## [0.1.0]` section"), "{err}");
    }
}
