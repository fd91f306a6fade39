//! codebox-core's own integration tests: the conformance suite against a test double.

mod double;
mod props;

use codebox_core::CodeBox;
use codebox_core::conformance::{ConformanceOptions, run_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_against_the_test_double() {
    let double = double::PythonDouble::new();
    let report = run_all(&double, &ConformanceOptions::default()).await;
    double.stop().await.unwrap();
    report.assert_all_passed();
    assert!(report.checks.len() >= 15, "{}", report.summary());
}

#[tokio::test]
async fn a_broken_box_fails_the_suite_with_named_checks() {
    // The suite must catch a backend that forgets state between runs.
    let amnesiac = double::PythonDouble::new().forgetting_state();
    let report = run_all(&amnesiac, &ConformanceOptions::default()).await;
    amnesiac.stop().await.unwrap();
    let failed: Vec<&str> = report.failures().iter().map(|c| c.name).collect();
    assert!(failed.contains(&"state_persists"), "{}", report.summary());
    assert!(!report.passed());
}
