//! Unit tests of the error type: kinds, statuses, retry rules and display.

use super::*;

#[test]
fn http_kind_follows_status() {
    assert_eq!(CodeBoxError::from(HttpError::new(404, "x")).kind(), ErrorKind::NotFound);
    assert_eq!(CodeBoxError::from(HttpError::new(401, "x")).kind(), ErrorKind::Authentication);
    assert_eq!(CodeBoxError::from(HttpError::new(429, "x")).kind(), ErrorKind::RateLimited);
    assert_eq!(CodeBoxError::from(HttpError::new(413, "x")).kind(), ErrorKind::TooLarge);
}

#[test]
fn retryable_errors() {
    assert!(CodeBoxError::from(HttpError::new(503, "busy")).is_retryable());
    assert!(CodeBoxError::from(HttpError::new(429, "slow down")).is_retryable());
    assert!(!CodeBoxError::from(HttpError::new(500, "bug")).is_retryable());
    let exec = CodeBoxError::Timeout { kind: TimeoutKind::Execution, after: None, state_lost: false };
    assert!(!exec.is_retryable(), "an execution is never retried");
    let read = CodeBoxError::Timeout { kind: TimeoutKind::Read, after: None, state_lost: false };
    assert!(read.is_retryable());
}

#[test]
fn messages_name_the_cause() {
    let e = CodeBoxError::KernelDied { cause: KernelDeath::Signaled { signal: 11 } };
    assert_eq!(e.to_string(), "kernel died: killed by signal 11 (SIGSEGV)");
    let e =
        CodeBoxError::Timeout { kind: TimeoutKind::Execution, after: Some(Duration::from_secs(2)), state_lost: true };
    assert!(e.to_string().contains("state was lost"), "{e}");
    let e = CodeBoxError::RateLimited { retry_after: Some(Duration::from_secs(3)) };
    assert_eq!(e.to_string(), "rate limited; retry after 3.0s");
}

#[test]
fn a_full_disk_is_storage_full_and_a_too_big_file_too_large() {
    let io = |errno: i32| CodeBoxError::io("writing", std::io::Error::from_raw_os_error(errno));
    // ENOSPC, EDQUOT and EFBIG on Linux.
    assert_eq!(io(28).kind(), ErrorKind::StorageFull);
    assert_eq!(io(122).kind(), ErrorKind::StorageFull);
    assert_eq!(io(27).kind(), ErrorKind::TooLarge);
    assert_eq!(io(2).kind(), ErrorKind::Io);
    assert_eq!(CodeBoxError::from(HttpError::new(507, "full")).kind(), ErrorKind::StorageFull);
}

#[test]
fn failures_of_the_callers_input_are_not_server_faults() {
    let io = |errno: i32| CodeBoxError::io("running", std::io::Error::from_raw_os_error(errno));
    // ENAMETOOLONG and E2BIG on Linux; EINVAL from the kernel stays an I/O error.
    assert_eq!(io(36).kind(), ErrorKind::InvalidInput);
    assert_eq!(io(7).kind(), ErrorKind::TooLarge);
    assert_eq!(io(22).kind(), ErrorKind::Io);
    let nul = std::process::Command::new("a\0b").spawn().unwrap_err();
    assert_eq!(CodeBoxError::io("running", nul).kind(), ErrorKind::InvalidInput);
}

#[test]
fn causes_are_kept_where_the_variant_has_room_for_one() {
    use std::error::Error as _;
    let cause = || std::io::Error::other("the cause");
    for err in [
        CodeBoxError::protocol("bad line").with_source(cause()),
        CodeBoxError::invalid("bad JSON").with_source(cause()),
        CodeBoxError::kernel_start("no kernel").with_source(cause()),
        CodeBoxError::connection("cut").with_source(cause()),
    ] {
        assert_eq!(err.source().map(|s| s.to_string()).as_deref(), Some("the cause"), "{err:?}");
    }
    let without = CodeBoxError::not_found("x").with_source(cause());
    assert!(without.source().is_none());
    assert_eq!(CodeBoxError::too_large("a listing of 10 entries").kind(), ErrorKind::TooLarge);
}

#[test]
fn kind_names_round_trip_through_json() {
    for kind in [ErrorKind::NotFound, ErrorKind::KernelDied, ErrorKind::UnsafePath, ErrorKind::StorageFull] {
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
    }
}
