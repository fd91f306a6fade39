//! E2B's paths in a box: E2B code names files under `/home/user`, the sandbox user's home,
//! or relative to it; in a codebox box that is the working directory.

use codebox_core::{CodeBoxError, Result, normalize_box_path};

/// The home of E2B's sandbox user: the box's working directory.
pub(crate) const HOME: &str = "/home/user";

/// The box path (relative to its working directory, `""` for the directory itself) of an
/// E2B path. Anything outside `/home/user` is refused, as every other route refuses a path
/// outside the box; so is a path that climbs out of it with `..`.
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
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest == "." {
        return Ok(String::new());
    }
    let normalized = normalize_box_path(rest)?;
    normalized.to_str().map(str::to_owned).ok_or_else(|| CodeBoxError::invalid("the path does not decode to UTF-8"))
}

/// The E2B path of a box path (relative to the box's working directory).
pub(crate) fn e2b_path(box_path: &str) -> String {
    match box_path.trim_matches('/') {
        "" | "." => HOME.to_owned(),
        rest => format!("{HOME}/{rest}"),
    }
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
        assert!(box_path("/home/user/../etc/passwd").is_err());
        assert!(box_path("../x").is_err());
        assert_eq!(e2b_path(""), "/home/user");
        assert_eq!(e2b_path("a/b.txt"), "/home/user/a/b.txt");
    }
}
