//! The conformance checks of a box's background processes
//! ([`CodeBox::start_process`] and the calls that follow one): output and exit codes,
//! signals, standard input, following a process again, listing, timeouts, unknown ids, and
//! (run last, since it stops the box) that no process outlives its box.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{CheckOutcome, Checked, ensure, expect_kind};
use crate::{
    CodeBox, CommandSpec, ErrorKind, ProcessEvent, ProcessExit, ProcessId, ProcessSignal, ProcessSpec, ProcessStream,
};

/// What a followed process did until its end.
#[derive(Debug, Default)]
struct Followed {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<ProcessExit>,
}

impl Followed {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(CommandSpec::new("sh").arg("-c").arg(script))
}

/// Start `spec` and take its first event, which must be `Start`.
async fn start(b: &dyn CodeBox, spec: ProcessSpec) -> Checked<(ProcessId, ProcessStream)> {
    let what = format!("start_process({:?} {:?})", spec.command.program, spec.command.args);
    let mut stream = b.start_process(spec).await.map_err(|e| format!("{what}: {e}"))?;
    match stream.next().await {
        Some(Ok(ProcessEvent::Start { pid })) => Ok((pid, stream)),
        other => Err(format!("{what}: the first event is {other:?}, not Start").into()),
    }
}

/// Read `stream` to its end, or until its stdout holds `until`.
async fn follow(stream: &mut ProcessStream, until: Option<&str>) -> Checked<Followed> {
    let mut seen = Followed::default();
    while let Some(event) = stream.next().await {
        match event.map_err(|e| format!("the process stream failed: {e}"))? {
            ProcessEvent::Start { pid } => return Err(format!("a second Start event (pid {pid})").into()),
            ProcessEvent::Stdout { data } => seen.stdout.extend_from_slice(&data),
            ProcessEvent::Stderr { data } => seen.stderr.extend_from_slice(&data),
            ProcessEvent::End(exit) => {
                seen.exit = Some(exit);
                ensure(stream.next().await.is_none(), || "an event arrived after End".into())?;
                return Ok(seen);
            }
        }
        if until.is_some_and(|u| seen.stdout().contains(u)) {
            return Ok(seen);
        }
    }
    match until {
        Some(u) => Err(format!("the stream ended before stdout held {u:?} (stdout {:?})", seen.stdout()).into()),
        None => {
            Err(format!("the stream ended without End (stdout {:?}, stderr {:?})", seen.stdout(), seen.stderr()).into())
        }
    }
}

fn exit_of(seen: &Followed) -> Checked<&ProcessExit> {
    seen.exit.as_ref().ok_or_else(|| "no End event".into())
}

/// Every check of background processes, in turn (`run_all` runs it as `processes`); a box
/// without the capability must refuse each call loudly.
pub async fn check_processes(b: &dyn CodeBox) -> CheckOutcome {
    if !b.capabilities().processes {
        expect_kind(b.start_process(sh("true")).await.map(|_| ()), ErrorKind::Unsupported, "start_process")?;
        expect_kind(b.processes().await.map(|_| ()), ErrorKind::Unsupported, "processes")?;
        return Ok("processes unsupported".into());
    }
    output_and_exit_codes(b).await?;
    same_confinement_as_commands(b).await?;
    signal_ends_a_background_process(b).await?;
    stdin_reaches_cat(b).await?;
    connect_after_the_stream_was_dropped(b).await?;
    listed_while_running(b).await?;
    timeout_kills(b).await?;
    unknown_ids_and_bad_input(b).await?;
    Ok(String::new())
}

/// Output arrives on its own stream, in order, and the exit code comes with the end.
async fn output_and_exit_codes(b: &dyn CodeBox) -> Checked<()> {
    let (_, mut stream) = start(b, sh("echo one; echo two >&2; echo three")).await?;
    let seen = follow(&mut stream, None).await?;
    ensure(seen.stdout() == "one\nthree\n" && seen.stderr() == "two\n", || format!("output: {seen:?}"))?;
    ensure(exit_of(&seen)?.success(), || format!("`echo` ended {:?}", seen.exit))?;

    let (_, mut stream) = start(b, sh("echo failing; exit 3")).await?;
    let seen = follow(&mut stream, None).await?;
    let exit = exit_of(&seen)?;
    ensure(exit.exit_code == Some(3) && !exit.timed_out && !exit.success(), || format!("`exit 3` ended {exit:?}"))?;
    ensure(seen.stdout() == "failing\n", || format!("output: {seen:?}"))
}

/// A process runs as `run_command` does: the same uid and working directory.
async fn same_confinement_as_commands(b: &dyn CodeBox) -> Checked<()> {
    let command = b.run_command(CommandSpec::new("sh").arg("-c").arg("id -u; pwd")).await;
    let command = command.map_err(|e| format!("run_command(id -u; pwd): {e}"))?;
    let (_, mut stream) = start(b, sh("id -u; pwd")).await?;
    let seen = follow(&mut stream, None).await?;
    ensure(seen.stdout() == command.stdout, || {
        format!("a process says {:?}, run_command {:?}", seen.stdout(), command.stdout)
    })
}

/// SIGTERM reaches the process itself: its handler runs and decides how it ends. SIGKILL
/// ends one that would run for ten minutes, and its end says so.
async fn signal_ends_a_background_process(b: &dyn CodeBox) -> Checked<()> {
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done";
    let (pid, mut stream) = start(b, sh(script)).await?;
    follow(&mut stream, Some("ready")).await?;
    b.signal_process(pid, ProcessSignal::Sigterm).await.map_err(|e| format!("signal_process({pid}): {e}"))?;
    let seen = follow(&mut stream, None).await?;
    let exit = exit_of(&seen)?;
    ensure(exit.exit_code == Some(7) && seen.stdout().contains("got-term"), || {
        format!("after SIGTERM its handler should have exited with 7: it ended {exit:?}, stdout {:?}", seen.stdout())
    })?;

    let (pid, mut stream) = start(b, sh("echo ready; exec sleep 600")).await?;
    follow(&mut stream, Some("ready")).await?;
    b.signal_process(pid, ProcessSignal::Sigkill).await.map_err(|e| format!("signal_process({pid}): {e}"))?;
    let seen = follow(&mut stream, None).await?;
    let exit = exit_of(&seen)?;
    // A sandbox's init between the box and the process may report the signal as the shell
    // convention 128 + the signal.
    ensure(exit.signal == Some(9) || exit.exit_code == Some(128 + 9), || format!("after SIGKILL it ended {exit:?}"))
}

/// What is written to a process's standard input reaches it, and closing it ends `cat`.
async fn stdin_reaches_cat(b: &dyn CodeBox) -> Checked<()> {
    let (pid, mut stream) = start(b, ProcessSpec::new(CommandSpec::new("cat")).with_stdin()).await?;
    b.process_input(pid, Bytes::from_static(b"hello cat\n")).await.map_err(|e| format!("process_input: {e}"))?;
    follow(&mut stream, Some("hello cat\n")).await?;
    b.process_input(pid, Bytes::from_static(b"second line\n")).await.map_err(|e| format!("process_input: {e}"))?;
    follow(&mut stream, Some("second line\n")).await?;
    b.close_process_input(pid).await.map_err(|e| format!("close_process_input: {e}"))?;
    let seen = follow(&mut stream, None).await?;
    ensure(exit_of(&seen)?.success(), || format!("cat ended {:?} after its input closed", seen.exit))
}

/// A process runs on when its stream is dropped, and `connect_process` follows it again.
async fn connect_after_the_stream_was_dropped(b: &dyn CodeBox) -> Checked<()> {
    let (pid, stream) = start(b, ProcessSpec::new(CommandSpec::new("cat")).with_stdin()).await?;
    drop(stream);
    let mut again = b.connect_process(pid).await.map_err(|e| format!("connect_process({pid}): {e}"))?;
    b.process_input(pid, Bytes::from_static(b"still here\n")).await.map_err(|e| format!("process_input: {e}"))?;
    follow(&mut again, Some("still here\n")).await?;
    b.close_process_input(pid).await.map_err(|e| format!("close_process_input: {e}"))?;
    let seen = follow(&mut again, None).await?;
    ensure(exit_of(&seen)?.success(), || format!("cat ended {:?}", seen.exit))?;
    // Ended: it is gone, whatever a box keeps of it for a late reader.
    let gone = b.signal_process(pid, ProcessSignal::Sigkill).await;
    expect_kind(gone, ErrorKind::NotFound, &format!("signal_process({pid}) after its end"))
}

/// A running process is listed, with its tag; an ended one is not.
async fn listed_while_running(b: &dyn CodeBox) -> Checked<()> {
    let spec = sh("echo ready; exec sleep 600").with_tag("conformance-sleeper");
    let (pid, mut stream) = start(b, spec).await?;
    follow(&mut stream, Some("ready")).await?;
    let listed = b.processes().await.map_err(|e| format!("processes(): {e}"))?;
    let found = listed.iter().find(|p| p.pid == pid);
    ensure(
        found.is_some_and(|p| p.spec.tag.as_deref() == Some("conformance-sleeper") && p.spec.command.program == "sh"),
        || format!("process {pid} is not listed as started: {listed:?}"),
    )?;
    b.signal_process(pid, ProcessSignal::Sigkill).await.map_err(|e| format!("signal_process({pid}): {e}"))?;
    let seen = follow(&mut stream, None).await?;
    ensure(!exit_of(&seen)?.success(), || format!("after SIGKILL it ended {:?}", seen.exit))?;
    let listed = b.processes().await.map_err(|e| format!("processes(): {e}"))?;
    ensure(listed.iter().all(|p| p.pid != pid), || format!("process {pid} is listed after its end: {listed:?}"))
}

/// A process past its timeout is killed, and its end says it timed out.
async fn timeout_kills(b: &dyn CodeBox) -> Checked<()> {
    let mut command = CommandSpec::new("sleep").arg("600");
    command.timeout = Some(Duration::from_secs(1));
    let (_, mut stream) = start(b, ProcessSpec::new(command)).await?;
    let seen = follow(&mut stream, None).await?;
    let exit = exit_of(&seen)?;
    ensure(exit.timed_out && !exit.success(), || format!("`sleep 600` with a 1 s timeout ended {exit:?}"))
}

/// Ids no process has are `NotFound`; input to a process started without it, and a
/// process without a program, are `InvalidInput`.
async fn unknown_ids_and_bad_input(b: &dyn CodeBox) -> Checked<()> {
    let nobody: ProcessId = 999_999;
    expect_kind(b.connect_process(nobody).await.map(|_| ()), ErrorKind::NotFound, "connect_process(999999)")?;
    let input = b.process_input(nobody, Bytes::from_static(b"x")).await;
    expect_kind(input, ErrorKind::NotFound, "process_input(999999)")?;
    expect_kind(b.close_process_input(nobody).await, ErrorKind::NotFound, "close_process_input(999999)")?;
    let signal = b.signal_process(nobody, ProcessSignal::Sigterm).await;
    expect_kind(signal, ErrorKind::NotFound, "signal_process(999999)")?;
    let empty = b.start_process(ProcessSpec::new(CommandSpec::new(""))).await.map(|_| ());
    expect_kind(empty, ErrorKind::InvalidInput, "start_process without a program")?;

    let (pid, mut stream) = start(b, sh("echo ready; exec sleep 600")).await?;
    follow(&mut stream, Some("ready")).await?;
    let input = b.process_input(pid, Bytes::from_static(b"x")).await;
    expect_kind(input, ErrorKind::InvalidInput, "process_input to a process started without stdin")?;
    b.signal_process(pid, ProcessSignal::Sigkill).await.map_err(|e| format!("signal_process({pid}): {e}"))?;
    follow(&mut stream, None).await.map(|_| ())
}

/// A process running when the box stops ends with it: its stream ends (with `End`, or an
/// error saying the box went away) rather than waiting forever. Stops the box, so run it
/// last, after [`run_all`](super::run_all).
pub async fn processes_end_with_the_box(b: &dyn CodeBox) -> CheckOutcome {
    if !b.capabilities().processes {
        return Ok("processes unsupported".into());
    }
    let (_, mut stream) = start(b, sh("echo ready; exec sleep 600")).await?;
    follow(&mut stream, Some("ready")).await?;
    b.stop().await.map_err(|e| format!("stop(): {e}"))?;
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        let mut last = None;
        while let Some(event) = stream.next().await {
            last = Some(event);
        }
        last
    });
    match rest.await {
        Ok(Some(Ok(ProcessEvent::End(exit)))) => {
            ensure(!exit.success(), || format!("the box stopped, and its process ended {exit:?}"))?;
            Ok(format!("ended {exit:?}"))
        }
        Ok(Some(Err(e))) => Ok(format!("the stream failed: {e}")),
        Ok(other) => Err(format!("after stop the stream's last event is {other:?}").into()),
        Err(_) => Err("a process still streamed 60 s after its box stopped".into()),
    }
}
