//! How many sessions a host's memory holds, for a server that is not told.

/// Memory counted for each session when the session cap follows from a host's memory
/// ([`max_sessions_for_memory`]). An idle session of the default template holds about 10 MiB
/// (PSS, every process of it; 18 MiB with `--no-fork-server`: `cargo xtask bench --only
/// burst`); the rest is headroom for the sessions working at any moment, which may each grow
/// to their own memory limit.
pub const SESSION_MEMORY_ALLOWANCE: u64 = 64 << 20;

/// The session cap for a host with `bytes` of memory: what is left after a reserve for the
/// server itself and the page cache (an eighth of the memory, and at least the smaller of
/// 1 GiB and half of it), divided by [`SESSION_MEMORY_ALLOWANCE`]; at least 1. For example
/// 336 sessions on 24 GiB, 16 in a 2 GiB container, 4 in 512 MiB.
pub fn max_sessions_for_memory(bytes: u64) -> usize {
    let reserve = (bytes / 8).max((1u64 << 30).min(bytes / 2));
    usize::try_from(bytes.saturating_sub(reserve) / SESSION_MEMORY_ALLOWANCE).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cap_follows_memory() {
        assert_eq!(max_sessions_for_memory(24 << 30), 336);
        assert_eq!(max_sessions_for_memory(2 << 30), 16);
        assert_eq!(max_sessions_for_memory(512 << 20), 4);
        assert_eq!(max_sessions_for_memory(64 << 20), 1, "a tiny host still serves one session");
        assert_eq!(max_sessions_for_memory(0), 1);
        assert!(max_sessions_for_memory(256 << 30) > max_sessions_for_memory(24 << 30));
    }
}
