//! Process trees from `/proc`: a process's parent, the processes below one, and a signal that
//! reaches a process only while it is still below the one it was found under.

use std::collections::HashMap;

use rustix::process::Signal;

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parent_in_stat(&stat)
}

/// The parent pid in a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`. The command
/// name may hold anything, parentheses included: the last `)` ends it.
pub fn parent_in_stat(stat: &str) -> Option<i32> {
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
}

/// The processes below `ancestor` (not itself), by one pass over `/proc`; a process comes
/// before those it started.
pub fn descendants(ancestor: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some(ppid) = parent_in_stat(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![ancestor];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if child != ancestor {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// Whether `ancestor` is among `pid`'s ancestors.
pub fn is_below(ancestor: i32, pid: i32) -> bool {
    let mut at = pid;
    // Deeper than any tree a box's process limit lets it make.
    for _ in 0..4096 {
        match parent_of(at) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => at = parent,
            _ => return false,
        }
    }
    false
}

/// Send `signal` to `pid` if, pinned by a pidfd, it is still below `ancestor`. A pid read
/// from `/proc` may belong by now to another process (another session's): its own may have
/// ended and the number been reused. A pidfd names one process for good, so checking the
/// ancestry after opening it, and signalling through it, leave no such window.
pub fn signal_if_below(ancestor: i32, pid: i32, signal: Signal) {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else { return };
    let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else { return };
    if is_below(ancestor, pid) {
        let _ = rustix::process::pidfd_send_signal(&pidfd, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_survives_names_with_parentheses_and_spaces() {
        assert_eq!(parent_in_stat("42 (a (b) c) S 17 42 42 0 -1"), Some(17));
        assert_eq!(parent_in_stat("42 (x"), None);
    }

    #[test]
    fn a_child_is_below_this_process_and_signalled_only_while_it_is() {
        let me = i32::try_from(std::process::id()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(descendants(me).contains(&pid));
        assert!(is_below(me, pid));
        assert!(!is_below(pid, me));
        // A process is not below itself: left alone.
        signal_if_below(pid, pid, Signal::KILL);
        assert!(child.try_wait().unwrap().is_none(), "a process is not below itself");
        signal_if_below(me, pid, Signal::KILL);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
