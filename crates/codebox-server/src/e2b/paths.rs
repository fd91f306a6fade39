//! E2B's paths in a box: E2B code names files under `/home/user`, the sandbox user's home,
//! or relative to it; in a codebox box that is the working directory.

use codebox_core::{CodeBoxError, Result};

/// The home of E2B's sandbox user: the box's working directory.
pub(crate) const HOME: &str = "/home/user";

/// The box path (relative to its working directory, `""` for the directory itself) of an
/// E2B path. Anything outside `/home/user` is refused, as every other route refuses a path
/// outside the box.
pub(crate) fn box_path(path: &str) -> Result<String> {
    let rest = if path == HOME {
        ""
    } else if let Some(rest) = path.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')) {
        rest
    } else if path.starts_with('/') {
        return Err(CodeBoxError::invalid(format!("{path:?} is outside {HOME}, the box's working directory")));
    } else {
        path
    };
    Ok(rest.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_the_working_directory_and_relative_paths_start_there() {
        assert_eq!(box_path("/home/user").unwrap(), "");
        assert_eq!(box_path("/home/user/").unwrap(), "");
        assert_eq!(box_path("/home/user/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(box_path("data/b.bin").unwrap(), "data/b.bin");
        assert!(box_path("/etc/passwd").is_err());
        assert!(box_path("/home/username").is_err());
    }
}
