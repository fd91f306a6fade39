//! The conformance check of code contexts: several kernel states in one box. It runs the
//! Dialect's snippets, so it holds for a box of any language.

use std::time::Duration;

use futures::StreamExt;

use super::{CheckOutcome, Checked, Dialect, describe, ensure, exec, expect_kind};
use crate::{
    CodeBox, CodeBoxExt, ContextInfo, DEFAULT_CONTEXT, ErrorKind, ExecEvent, Execution, Outcome, RunOptions, code_hash,
};

/// A context id no box makes.
const UNKNOWN: &str = "conformance-no-such-context";

/// How long one context may wait on another's execution before the check says they do not
/// run side by side (a guard against a hang, not a measure of speed).
const SIDE_BY_SIDE: Duration = Duration::from_secs(60);

async fn exec_in(b: &dyn CodeBox, context: &str, code: &str) -> Checked<Execution> {
    b.run(code, RunOptions::new().with_context(context))
        .await
        .map_err(|e| format!("run({code:?}) in context {context:?} failed: {e}").into())
}

/// What `conformance_ctx` reads as in `context`: its value, or the error's name.
async fn value_in(b: &dyn CodeBox, context: &str) -> Checked<String> {
    let ex = exec_in(b, context, "conformance_ctx").await?;
    Ok(match ex.error() {
        Some(err) => err.name.clone(),
        None => ex.text(),
    })
}

/// Variables stay in their context and files are shared; a context starts in its `cwd`;
/// executions of two contexts run side by side, and an interrupt or a timeout in one leaves
/// the other's variables; a restart clears one context only; unknown and deleted contexts
/// are `NotFound`, the default one cannot be deleted, and `bash` (no state) is no context's
/// language. A backend without contexts refuses them loudly.
pub(super) async fn contexts(b: &dyn CodeBox, d: &Dialect, timeout: Duration) -> CheckOutcome {
    if !b.capabilities().contexts {
        expect_kind(b.create_context(None, None).await.map(|_| ()), ErrorKind::Unsupported, "create_context")?;
        expect_kind(b.contexts().await.map(|_| ()), ErrorKind::Unsupported, "contexts")?;
        expect_kind(b.delete_context(UNKNOWN).await, ErrorKind::Unsupported, "delete_context")?;
        return Ok("contexts unsupported".into());
    }
    let listed = b.contexts().await.map_err(|e| format!("contexts() failed: {e}"))?;
    let first = listed.first().ok_or("contexts() lists not even the default context")?;
    ensure(first.id == DEFAULT_CONTEXT && first.default, || {
        format!("the first context is not the default: {listed:?}")
    })?;

    b.upload_bytes("conformance/hello.txt", "hello from upload").await.map_err(|e| e.to_string())?;
    b.upload_bytes("conformance/ctx/conformance/hello.txt", "hello from the context's directory")
        .await
        .map_err(|e| e.to_string())?;
    let a = b.create_context(None, None).await.map_err(|e| format!("create_context() failed: {e}"))?;
    let c = b
        .create_context(None, Some("conformance/ctx"))
        .await
        .map_err(|e| format!("create_context(cwd conformance/ctx) failed: {e}"))?;
    check_made(&a, None)?;
    check_made(&c, Some("conformance/ctx"))?;
    ensure(a.id != c.id, || format!("two contexts share the id {:?}", a.id))?;
    let listed = b.contexts().await.map_err(|e| format!("contexts() failed: {e}"))?;
    for made in [&a, &c] {
        ensure(listed.contains(made), || format!("contexts() lacks {made:?}: {listed:?}"))?;
    }

    // Variables stay in their context.
    exec(b, &d.set_x).await?;
    exec_in(b, &a.id, &d.set_context_value).await?;
    ensure(value_in(b, &a.id).await? == "7", || "a context lost its own variable".into())?;
    for (other, name) in [(c.id.as_str(), "another context"), (DEFAULT_CONTEXT, "the default context")] {
        let seen = value_in(b, other).await?;
        ensure(seen == d.undefined_name_error, || format!("{name} sees a context's variable: {seen:?}"))?;
    }
    let ex = exec_in(b, &a.id, &d.x_plus_one).await?;
    ensure(ex.error().is_some_and(|e| e.name == d.undefined_name_error), || {
        format!("a context sees the default context's variable: {}", describe(&ex))
    })?;

    // Files are shared, and a context starts in its own directory.
    let ex = exec_in(b, &a.id, &d.print_hello_file).await?;
    ensure(ex.stdout() == "hello from upload\n", || {
        format!("a context does not see the box's files: {}", describe(&ex))
    })?;
    let ex = exec_in(b, &c.id, &d.print_hello_file).await?;
    ensure(ex.stdout() == "hello from the context's directory\n", || {
        format!("a context does not start in its cwd: {}", describe(&ex))
    })?;
    let _ = b.delete_file("conformance/made.txt").await;
    exec_in(b, &a.id, &d.write_made_file).await?;
    let made = b.download_bytes("conformance/made.txt").await.map_err(|e| format!("a context's file: {e}"))?;
    ensure(made.as_ref() == b"made by code", || format!("a context's file reads {made:?}"))?;

    // Side by side: one context answers while another runs, and an interrupt of that one
    // leaves the first alone.
    side_by_side_and_interrupt(b, d, &a.id, &c.id).await?;
    let ex = b
        .run(&d.print_sleeping_then_wait, RunOptions::new().with_context(&c.id).with_timeout(timeout))
        .await
        .map_err(|e| format!("a timed-out execution in a context should be data: {e}"))?;
    ensure(ex.outcome == Outcome::TimedOut, || format!("expected TimedOut in a context: {}", describe(&ex)))?;
    ensure(value_in(b, &a.id).await? == "7", || "a timeout in one context cleared another's variable".into())?;
    let ex = exec(b, &d.x_plus_one).await?;
    ensure(ex.text() == "42", || format!("the default context lost its state: {}", describe(&ex)))?;

    // A restart clears one context only.
    exec_in(b, &c.id, &d.set_context_value).await?;
    b.restart_context(&c.id).await.map_err(|e| format!("restart_context: {e}"))?;
    let seen = value_in(b, &c.id).await?;
    ensure(seen == d.undefined_name_error, || format!("a variable survived restart_context: {seen:?}"))?;
    ensure(value_in(b, &a.id).await? == "7", || "restarting one context cleared another".into())?;

    if b.capabilities().history {
        let records = b.history(1000).await.map_err(|e| format!("history() failed: {e}"))?;
        let hash = code_hash(&d.set_context_value);
        let in_a = records.iter().find(|r| r.code_hash == hash && r.context.as_deref() == Some(a.id.as_str()));
        ensure(in_a.is_some(), || format!("no history record names context {:?}", a.id))?;
    }

    refusals(b, &a, &c).await?;
    Ok(format!("contexts {} and {}", a.id, c.id))
}

fn check_made(info: &ContextInfo, cwd: Option<&str>) -> Checked<()> {
    ensure(!info.default && info.id != DEFAULT_CONTEXT && !info.id.is_empty(), || {
        format!("a made context looks like the default: {info:?}")
    })?;
    ensure(!info.language.is_empty(), || format!("a made context names no language: {info:?}"))?;
    ensure(info.cwd.as_deref() == cwd, || format!("a context made with cwd {cwd:?} reports {info:?}"))
}

async fn side_by_side_and_interrupt(b: &dyn CodeBox, d: &Dialect, a: &str, c: &str) -> Checked<()> {
    let mut stream = b
        .run_stream(&d.print_waiting_then_wait, RunOptions::new().with_context(c))
        .await
        .map_err(|e| format!("run_stream in a context: {e}"))?;
    loop {
        match stream.next().await {
            Some(Ok(ExecEvent::Stdout { text })) if text.contains("waiting") => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("a context's stream failed: {e}").into()),
            None => return Err("a context's stream ended before its code printed".into()),
        }
    }
    let answer = tokio::time::timeout(SIDE_BY_SIDE, value_in(b, a)).await;
    let answered = match answer {
        Ok(seen) => seen?,
        Err(_) => {
            let _ = b.interrupt_context(c).await;
            return Err("a context waited for another context's execution: they do not run side by side".into());
        }
    };
    ensure(answered == "7", || format!("a context read {answered:?} while another ran"))?;
    b.interrupt_context(c).await.map_err(|e| format!("interrupt_context: {e}"))?;
    let rest = Execution::collect(stream).await.map_err(|e| e.to_string())?;
    ensure(rest.outcome == Outcome::Interrupted, || format!("expected Interrupted in a context: {}", describe(&rest)))?;
    ensure(value_in(b, a).await? == "7", || "an interrupt in one context cleared another's variable".into())?;
    let alive = d.quoted("alive");
    let after = exec_in(b, c, &alive).await?;
    ensure(after.text() == alive, || format!("the interrupted context is not usable: {}", describe(&after)))
}

async fn refusals(b: &dyn CodeBox, a: &ContextInfo, c: &ContextInfo) -> Checked<()> {
    let not_found = |r: crate::Result<()>, what: &str, id: &str| -> Checked<()> {
        match r {
            Err(e) if e.kind() == ErrorKind::NotFound && e.to_string().contains(id) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(format!("{what}: the error does not name {id:?}: {e}").into())
            }
            other => expect_kind(other, ErrorKind::NotFound, what),
        }
    };
    let run_in = |id: &str| b.run("1", RunOptions::new().with_context(id));
    not_found(run_in(UNKNOWN).await.map(|_| ()), "run in an unknown context", UNKNOWN)?;
    not_found(b.restart_context(UNKNOWN).await, "restart_context of an unknown context", UNKNOWN)?;
    not_found(b.interrupt_context(UNKNOWN).await, "interrupt_context of an unknown context", UNKNOWN)?;
    not_found(b.delete_context(UNKNOWN).await, "delete_context of an unknown context", UNKNOWN)?;
    expect_kind(b.delete_context(DEFAULT_CONTEXT).await, ErrorKind::InvalidInput, "delete_context(\"default\")")?;
    expect_kind(b.create_context(Some("bash"), None).await.map(|_| ()), ErrorKind::InvalidInput, "a bash context")?;
    expect_kind(
        b.create_context(None, Some("conformance/no-such-dir")).await.map(|_| ()),
        ErrorKind::NotFound,
        "a context in a missing directory",
    )?;
    expect_kind(
        b.create_context(None, Some("../conformance-escape")).await.map(|_| ()),
        ErrorKind::UnsafePath,
        "a context outside the box",
    )?;

    b.delete_context(&a.id).await.map_err(|e| format!("delete_context: {e}"))?;
    not_found(run_in(&a.id).await.map(|_| ()), "run in a deleted context", &a.id)?;
    not_found(b.delete_context(&a.id).await, "deleting a context twice", &a.id)?;
    not_found(b.restart_context(&a.id).await, "restart_context of a deleted context", &a.id)?;
    b.delete_context(&c.id).await.map_err(|e| format!("delete_context: {e}"))?;
    let left = b.contexts().await.map_err(|e| format!("contexts() failed: {e}"))?;
    ensure(left.len() == 1 && left[0].default, || format!("deleted contexts are still listed: {left:?}"))?;
    let alive = exec(b, "1 + 1").await?;
    ensure(alive.text() == "2", || format!("the default context is not usable: {}", describe(&alive)))
}
