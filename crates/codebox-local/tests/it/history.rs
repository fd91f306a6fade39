//! A LocalBox's execution history: kernel and bash cells, abandoned streams, restarts, and
//! the ring's bound.

use codebox_core::{CodeBox, CodeBoxExt, ExecEvent, Outcome, RunOptions, code_hash};
use codebox_local::HISTORY_CAPACITY;
use futures::StreamExt;

use crate::started;

#[tokio::test]
async fn kernel_and_bash_cells_are_recorded_newest_first_and_kept_across_a_restart() {
    let lb = started().await;
    assert!(lb.capabilities().history);
    assert!(lb.history(10).await.unwrap().is_empty(), "a new box has a history");
    lb.exec("print('abc')").await.unwrap();
    let bash = RunOptions::new().with_language("bash");
    lb.run("echo hi; exit 3", bash).await.unwrap();
    let long = format!("x = 1  # {}", "y".repeat(500));
    lb.exec(&long).await.unwrap();

    let records = lb.history(10).await.unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    let [long_cell, bash_cell, print_cell] = records.as_slice() else { unreachable!() };
    assert_eq!(print_cell.outcome, Outcome::Ok);
    assert_eq!(print_cell.count, Some(1));
    assert_eq!(print_cell.output_bytes, 4);
    assert_eq!(print_cell.code_head, "print('abc')");
    assert_eq!(bash_cell.outcome, Outcome::Error);
    assert_eq!(bash_cell.error_name.as_deref(), Some("BashError"));
    assert_eq!(bash_cell.count, None);
    assert_eq!(long_cell.code_head.chars().count(), 200);
    assert_eq!(long_cell.code_hash, code_hash(&long));

    lb.restart().await.unwrap();
    lb.exec("1").await.unwrap();
    let after = lb.history(10).await.unwrap();
    assert_eq!(after.len(), 4);
    assert_eq!(after[1..], records[..], "a restart changed the history");
    let stats = lb.execution_stats().await.unwrap();
    assert_eq!(stats.total, 4);
    assert_eq!(stats.by_outcome.get(&Outcome::Ok), Some(&3));
    assert_eq!(stats.by_outcome.get(&Outcome::Error), Some(&1));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn an_execution_whose_stream_was_dropped_is_recorded_as_it_ended() {
    let lb = started().await;
    let code = "import time; print('sleeping', flush=True); time.sleep(60)";
    let mut stream = lb.run_stream(code, RunOptions::default()).await.unwrap();
    // Dropped once the cell is surely running, so that the interrupt reaches the cell.
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::stdout("sleeping\n"));
    drop(stream);
    // The next execution waits until the abandoned one has ended.
    lb.exec("2").await.unwrap();
    let records = lb.history(10).await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1].outcome, Outcome::Interrupted);
    assert_eq!(records[1].error_name.as_deref(), Some("KeyboardInterrupt"));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn the_history_keeps_only_the_newest_executions() {
    let lb = started().await;
    for i in 0..HISTORY_CAPACITY + 5 {
        lb.exec(&format!("{i}")).await.unwrap();
    }
    let records = lb.history(usize::MAX).await.unwrap();
    assert_eq!(records.len(), HISTORY_CAPACITY);
    assert_eq!(records[0].code_head, format!("{}", HISTORY_CAPACITY + 4));
    assert_eq!(records[HISTORY_CAPACITY - 1].code_head, "5");
    assert_eq!(lb.execution_stats().await.unwrap().total, HISTORY_CAPACITY as u64);
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn an_execution_that_kills_its_kernel_is_recorded_with_its_outcome() {
    let lb = started().await;
    lb.exec("1").await.unwrap();
    let err = lb.exec("import os; os._exit(1)").await.unwrap_err();
    assert_eq!(err.kind(), codebox_core::ErrorKind::KernelDied, "{err}");
    let records = lb.history(1).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].code_head, "import os; os._exit(1)");
    assert_eq!(records[0].outcome, Outcome::Error);
    assert_eq!(records[0].error_name.as_deref(), Some("kernel_died"));
    // The box comes back and keeps counting.
    assert_eq!(lb.exec("2").await.unwrap().text(), "2");
    let stats = lb.execution_stats().await.unwrap();
    assert_eq!((stats.total, stats.by_outcome.get(&Outcome::Error)), (3, Some(&1)));
    lb.stop().await.unwrap();
}

#[tokio::test]
async fn a_box_without_execution_tracking_keeps_no_history_and_says_so() {
    let lb = crate::builder().with_execution_tracking(false).build().unwrap();
    lb.start().await.unwrap();
    let caps = lb.capabilities();
    assert!(!caps.history && !caps.artifacts, "{caps:?}");
    let ex = lb.run("open('made.txt', 'w').write('x')", RunOptions::new().with_save_images(true)).await.unwrap();
    assert!(ex.artifacts().is_empty() && !ex.artifacts_truncated, "{ex:?}");
    for err in [lb.history(5).await.unwrap_err(), lb.execution_stats().await.unwrap_err()] {
        assert_eq!(err.kind(), codebox_core::ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("without execution tracking"), "{err}");
    }
    lb.stop().await.unwrap();
}
