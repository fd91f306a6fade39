//! `packages`: what the box's Python environment has, read by the box's own Python inside
//! the box (the host never reads the tenant's packages directory), its own installs first.

use std::sync::Arc;
use std::time::Duration;

use codebox_core::{CodeBoxError, PackageInfo, Result};

use super::supervisor::Inner;

/// How long listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The least output kept for the listing, whatever the box's output limit: a large
/// environment's JSON must arrive whole to be read at all.
const LIST_OUTPUT_FLOOR: usize = 4 << 20;

/// Run by the box's Python with the box's packages directory (or `""`) as its argument:
/// prints `[[name, version, own], ...]`, one entry per distribution in `sys.path` order, the
/// first of each name (the one an import finds). The current directory, first on `sys.path`
/// for `-c`, is dropped before anything is imported, so a file of the box cannot stand in
/// for `json` or `importlib`; a distribution whose metadata cannot be read (a broken
/// `.dist-info` the box made) is left out rather than failing the whole listing.
const LIST_SCRIPT: &str = r#"import sys
if sys.path and sys.path[0] in ('', '.'):
    del sys.path[0]
import json, os, re
from importlib import metadata
own = os.path.realpath(sys.argv[1]) if sys.argv[1] else None
seen, found = set(), []
for entry in list(sys.path):
    is_own = own is not None and os.path.realpath(entry or '.') == own
    for dist in metadata.distributions(path=[entry]):
        try:
            name, version = dist.metadata['Name'], dist.version
        except Exception:
            continue
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            continue
        key = re.sub(r'[-_.]+', '-', name).lower()
        if key not in seen:
            seen.add(key)
            found.append([name, version, is_own])
sys.stdout.write(json.dumps(found))
"#;

/// The packages the box's kernels import, the box's own installs first, then by name.
pub(super) async fn packages(inner: &Arc<Inner>) -> Result<Vec<PackageInfo>> {
    let h = inner.handle().await?;
    if !inner.runs_python() {
        return Err(CodeBoxError::unsupported(format!(
            "packages: kernel {:?} does not run Python, whose packages are listed",
            inner.config.kernel
        )));
    }
    // An unconfined box installs into the environment it shares with this machine, where its
    // own installs cannot be told from the rest.
    let own_dir = h.confinement.packages_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
    let python = h.python.to_string_lossy().into_owned();
    let mut process =
        h.process(&inner.config, &python, vec!["-c".into(), LIST_SCRIPT.into(), own_dir], h.root.path().to_owned());
    process.timeout = Some(LIST_TIMEOUT);
    process.output_limit = process.output_limit.max(LIST_OUTPUT_FLOOR);
    let out = process.run().await?;
    if !out.success() {
        return Err(CodeBoxError::protocol(format!(
            "listing the box's packages failed (exit {:?}): {}",
            out.exit_code,
            out.stderr.trim()
        )));
    }
    parse_listing(&out.stdout)
}

/// Read the script's output and order it: own installs first, then by name, case aside.
fn parse_listing(stdout: &str) -> Result<Vec<PackageInfo>> {
    let entries: Vec<(String, String, bool)> = serde_json::from_str(stdout).map_err(|e| {
        CodeBoxError::protocol(format!("the box's package listing is not what its Python prints: {e}")).with_source(e)
    })?;
    let mut packages: Vec<PackageInfo> =
        entries.into_iter().map(|(name, version, own)| PackageInfo::new(name, version, own)).collect();
    packages.sort_by_cached_key(|p| (!p.installed_by_box, p.name.to_lowercase()));
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_installs_come_first_then_names_in_order() {
        let listed = parse_listing(r#"[["zeta","1",false],["Alpha","2",false],["six","1.16.0",true]]"#).unwrap();
        let names: Vec<_> = listed.iter().map(|p| (p.name.as_str(), p.installed_by_box)).collect();
        assert_eq!(names, [("six", true), ("Alpha", false), ("zeta", false)]);
    }

    #[test]
    fn output_that_is_not_a_listing_is_a_protocol_error() {
        let err = parse_listing("Traceback (most recent call last)").unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::Protocol, "{err}");
        assert!(parse_listing(r#"[["six"]]"#).is_err());
    }
}
