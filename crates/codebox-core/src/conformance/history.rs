//! The conformance checks of a box's execution history and stats. They run the Dialect's
//! snippets, so they hold for a box of any language.

use super::{CheckOutcome, Dialect, ensure, exec, expect_kind};
use crate::{CodeBox, ErrorKind, ExecutionRecord, Outcome, code_hash};

/// More records than any check needs: the whole of a box's history.
const EVERYTHING: usize = 100_000;

/// Two executions, one that prints and one that raises, come back newest first with their
/// outcome, error name, output size, code head and hash; the stats count them. A backend
/// without a history (see [`Capabilities::history`](crate::Capabilities)) refuses loudly.
pub(super) async fn history_recorded(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    if !b.capabilities().history {
        expect_kind(b.history(10).await.map(|_| ()), ErrorKind::Unsupported, "history")?;
        expect_kind(b.execution_stats().await.map(|_| ()), ErrorKind::Unsupported, "execution_stats")?;
        return Ok("history unsupported".into());
    }
    let before = b.execution_stats().await.map_err(|e| format!("execution_stats() failed: {e}"))?;
    exec(b, &d.print_one_two_three).await?;
    exec(b, &d.raise_in_function).await?;
    let newest = b.history(2).await.map_err(|e| format!("history(2) failed: {e}"))?;
    let [raised, printed] = newest.as_slice() else {
        return Err(format!("history(2) gave {} records, not 2: {newest:?}", newest.len()).into());
    };
    check_record(raised, &d.raise_in_function, Outcome::Error)?;
    ensure(raised.error_name.as_deref() == Some(d.raised_name.as_str()), || {
        format!("the raising execution's error name is {:?}, not {:?}", raised.error_name, d.raised_name)
    })?;
    check_record(printed, &d.print_one_two_three, Outcome::Ok)?;
    ensure(printed.error_name.is_none(), || format!("an execution that raised nothing has {:?}", printed.error_name))?;
    ensure(printed.output_bytes >= 3, || format!("printing 1 2 3 recorded {} output bytes", printed.output_bytes))?;
    ensure(raised.started_at >= printed.started_at, || "history(2) is not newest first".into())?;
    let one = b.history(1).await.map_err(|e| format!("history(1) failed: {e}"))?;
    ensure(one.len() == 1 && one[0] == *raised, || format!("history(1) is not the newest record: {one:?}"))?;
    ensure(b.history(0).await.map_err(|e| e.to_string())?.is_empty(), || "history(0) is not empty".into())?;

    let stats = b.execution_stats().await.map_err(|e| format!("execution_stats() failed: {e}"))?;
    let count = |s: &crate::ExecutionStats, o: Outcome| s.by_outcome.get(&o).copied().unwrap_or(0);
    ensure(stats.total >= 2 && stats.total == stats.by_outcome.values().sum::<u64>(), || {
        format!("stats' total {} disagrees with its outcomes {:?}", stats.total, stats.by_outcome)
    })?;
    ensure(count(&stats, Outcome::Error) > count(&before, Outcome::Error) || stats.total == before.total, || {
        format!("the raising execution is not counted: before {before:?}, after {stats:?}")
    })?;
    ensure(stats.p50 <= stats.p95, || format!("p50 {:?} above p95 {:?}", stats.p50, stats.p95))?;
    let all = b.history(EVERYTHING).await.map_err(|e| e.to_string())?;
    ensure(all.len() as u64 == stats.total, || {
        format!("history has {} records, stats count {}", all.len(), stats.total)
    })?;
    let longest = all.iter().map(|r| r.duration).max().unwrap_or_default();
    ensure(stats.p95 <= longest && stats.mean <= longest, || {
        format!("stats {stats:?} past the longest execution {longest:?}")
    })?;
    Ok(format!("{} executions", stats.total))
}

fn check_record(record: &ExecutionRecord, code: &str, outcome: Outcome) -> CheckOutcome {
    ensure(record.outcome == outcome, || format!("{code:?} recorded as {:?}, not {outcome:?}", record.outcome))?;
    ensure(record.code_hash == code_hash(code), || {
        format!("{code:?} recorded with the hash of other code: {record:?}")
    })?;
    let head: String = code.chars().take(crate::CODE_HEAD_CHARS).collect();
    ensure(record.code_head == head, || format!("{code:?} recorded with head {:?}", record.code_head))?;
    ensure(record.context.is_none(), || format!("{code:?} in the box's own kernel recorded in {:?}", record.context))?;
    Ok(String::new())
}

/// After the restart check, the history still has the executions from before it: it belongs
/// to the box, not to its kernel.
pub(super) async fn history_kept_after_restart(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    if !b.capabilities().history || !b.capabilities().restart {
        return Ok("history or restart unsupported".into());
    }
    let all = b.history(EVERYTHING).await.map_err(|e| format!("history() after a restart failed: {e}"))?;
    let hash = code_hash(&d.raise_in_function);
    ensure(all.iter().any(|r| r.code_hash == hash), || {
        format!("executions from before the restart are gone: {} records left", all.len())
    })?;
    Ok(format!("{} executions", all.len()))
}
