//! LocalBox passes the conformance suite every backend runs.

use codebox_core::CodeBox;
use codebox_core::conformance::{ConformanceOptions, processes_end_with_the_box, run_all};

#[tokio::test]
async fn local_box_passes_the_conformance_suite() {
    let lb = crate::builder().build().unwrap();
    let report = run_all(&lb, &ConformanceOptions::default().with_require_matplotlib(true)).await;
    // Stops the box: last.
    let ended = processes_end_with_the_box(&lb).await;
    lb.stop().await.unwrap();
    report.assert_all_passed();
    ended.unwrap();
}

#[tokio::test]
async fn the_suite_runs_through_a_trait_object() {
    let lb: std::sync::Arc<dyn CodeBox> = std::sync::Arc::new(crate::builder().build().unwrap());
    lb.start().await.unwrap();
    let ex = lb.run("6*7", Default::default()).await.unwrap();
    assert_eq!(ex.text(), "42");
    lb.stop().await.unwrap();
}
