//! codebox-api Python clients, unchanged, against `codebox serve`.
//!
//! Each test starts the CodeBox server in-process (real HTTP on 127.0.0.1 port 0, one API
//! key, a factory of real LocalBox kernels), installs the real `codeboxapi` package from PyPI
//! into a virtualenv of its own (one per client version, cached under the target directory),
//! and runs `tests/python/compat_v*.py` under that virtualenv. The script drives every client
//! operation and asserts its result; it exits non-zero with the failure and otherwise prints a
//! JSON summary of what passed, which the test checks against the full list.

mod bad_input;
mod setup;

use setup::{ClientVenv, TestServer};

/// Every operation the 0.1 script must report, in order.
const V1_OPERATIONS: &[&str] = &[
    "start",
    "status",
    "run",
    "run_image",
    "upload",
    "list_files",
    "download",
    "install",
    "restart",
    "stop",
    "context_manager",
    "astart",
    "astatus",
    "arun",
    "aupload",
    "alist_files",
    "adownload",
    "ainstall",
    "arestart",
    "astop",
    "unknown_key_refused",
];

/// Every operation the 0.2 script must report, in order.
const V2_OPERATIONS: &[&str] = &[
    "healthcheck",
    "exec_ipython",
    "exec_bash",
    "stream_exec",
    "upload",
    "list_files",
    "stream_download",
    "download",
    "download_missing_404",
    "install",
    "list_packages",
    "show_variables",
    "restart",
    "session_by_client_id",
    "aexec",
    "aupload_astream_download",
    "alist_files_adownload",
    "arestart",
    "unknown_key_refused",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codeboxapi_0_1_client_works_unchanged() {
    let venv = ClientVenv::provision("0.1.19").await;
    let server = TestServer::start().await;
    let summary = venv.run_script("compat_v1.py", &server.url("/api/v1"), server.key(), &[]).await;
    assert_eq!(summary["client"], "codeboxapi 0.1.19");
    assert_eq!(summary["passed"], serde_json::json!(V1_OPERATIONS));
    // `stop` and the context manager ended every session the script started.
    assert_eq!(server.session_count().await, 0, "every session the client stopped is gone");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codeboxapi_0_2_client_works_unchanged() {
    let venv = ClientVenv::provision("0.2.6").await;
    let server = TestServer::start().await;
    let summary = venv.run_script("compat_v2.py", &server.url("/api/v2"), server.key(), &[]).await;
    assert_eq!(summary["client"], "codeboxapi 0.2.6");
    assert_eq!(summary["passed"], serde_json::json!(V2_OPERATIONS));
    // The 0.2 client never stops a session: the three ids it used (the main box, the other
    // box, and the async box) are live sessions of the server until it shuts down.
    assert_eq!(server.session_count().await, 3, "sessions are created on first use under the client's ids");
    server.shutdown().await;
}
