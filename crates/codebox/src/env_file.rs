//! Settings from the process environment with a `.env` file behind it. The file is read here,
//! not in codebox-core, which does no I/O; `dotenvy` parses it.

use std::collections::HashMap;
use std::path::Path;

use codebox_core::{CodeBoxError, CodeBoxSettings, Result};

/// Read the process environment, falling back to a `.env` file for variables the environment
/// does not set. A missing file is not an error; a line the file format does not allow is.
///
/// The file takes `KEY=VALUE` lines with `#` comments, an optional `export `, single or double
/// quotes (multi-line values inside them) and `${VAR}` substitution, as `dotenvy` reads them.
/// Reading it never changes the process environment.
pub fn settings_from_env_and_file(path: impl AsRef<Path>) -> Result<CodeBoxSettings> {
    let path = path.as_ref();
    let file_vars = read_env_file(path)?;
    CodeBoxSettings::from_lookup(|name| std::env::var(name).ok().or_else(|| file_vars.get(name).cloned()))
}

/// One variable from the process environment, else from the `.env` file at `path`.
pub(crate) fn var_from_env_and_file(path: impl AsRef<Path>, name: &str) -> Result<Option<String>> {
    if let Ok(value) = std::env::var(name) {
        return Ok(Some(value));
    }
    Ok(read_env_file(path.as_ref())?.remove(name))
}

/// The variables `path` sets; none when there is no such file.
fn read_env_file(path: &Path) -> Result<HashMap<String, String>> {
    let failed = |e: dotenvy::Error| match e {
        dotenvy::Error::Io(e) => CodeBoxError::io(format!("reading {}", path.display()), e),
        other => CodeBoxError::invalid(format!("{}: {other}", path.display())),
    };
    match dotenvy::from_path_iter(path) {
        Ok(lines) => lines.map(|line| line.map_err(failed)).collect(),
        Err(e) if e.not_found() => Ok(HashMap::new()),
        Err(e) => Err(failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_files_fill_in_what_the_environment_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "# comment\nexport CODEBOX_FACTORY_ID='f-1'\nCODEBOX_KERNEL=\"python3\" \nCODEBOX_SESSION_ID=abc # trailing\n").unwrap();
        let vars = read_env_file(&path).unwrap();
        assert_eq!(vars["CODEBOX_FACTORY_ID"], "f-1");
        assert_eq!(vars["CODEBOX_KERNEL"], "python3");
        assert_eq!(vars["CODEBOX_SESSION_ID"], "abc");
        let s = settings_from_env_and_file(&path).unwrap();
        assert_eq!(s.factory_id.as_deref(), Some("f-1"));
        assert!(settings_from_env_and_file(dir.path().join("missing")).is_ok());
    }

    #[test]
    fn a_malformed_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CODEBOX_KERNEL='unterminated\n").unwrap();
        let err = settings_from_env_and_file(&path).unwrap_err();
        assert_eq!(err.kind(), codebox_core::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains(".env"), "{err}");
    }
}
