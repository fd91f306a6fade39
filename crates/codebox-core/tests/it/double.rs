//! A small `CodeBox` test double: a plain Python process driven over stdin/stdout (see
//! `double_driver.py`), with files handled here in the test process. It exists only to
//! exercise the conformance suite in this crate; real backends live in their own crates.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use codebox_core::{
    BoxState, BoxStatus, ByteStream, Capabilities, CodeBox, CodeBoxError, CommandOutput, CommandSpec, EventStream,
    ExecEvent, FileInfo, Outcome, Result, RunOptions, normalize_box_path,
};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, mpsc};

const DRIVER: &str = include_str!("double_driver.py");

struct Process {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

#[derive(Debug)]
pub(crate) struct PythonDouble {
    dir: tempfile::TempDir,
    process: Arc<Mutex<Option<Process>>>,
    pid: Arc<AtomicU32>,
    interrupted: Arc<AtomicBool>,
    forget_state: bool,
    started: StdMutex<bool>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.child.id()).finish()
    }
}

impl PythonDouble {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            process: Arc::new(Mutex::new(None)),
            pid: Arc::new(AtomicU32::new(0)),
            interrupted: Arc::new(AtomicBool::new(false)),
            forget_state: false,
            started: StdMutex::new(false),
        }
    }

    /// A deliberately broken double that restarts its interpreter before every run.
    pub(crate) fn forgetting_state(mut self) -> Self {
        self.forget_state = true;
        self
    }

    async fn spawn(&self) -> Result<()> {
        let mut guard = self.process.lock().await;
        if let Some(mut old) = guard.take() {
            let _ = old.child.kill().await;
        }
        let mut child = Command::new(std::env::var("CODEBOX_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg("-u")
            .arg("-c")
            .arg(DRIVER)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CodeBoxError::io("spawning python3", e))?;
        self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        *guard = Some(Process { child, stdin, lines });
        Ok(())
    }

    async fn signal_interrupt(pid: u32) {
        let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status().await;
    }

    /// Resolve a caller's path beneath the box directory, refusing symlinks on the way.
    fn resolve(&self, path: &str) -> Result<PathBuf> {
        let rel = normalize_box_path(path)?;
        let mut full = self.dir.path().to_path_buf();
        for part in rel.components() {
            full.push(part);
            if full.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(CodeBoxError::unsafe_path(path, "it passes through a symlink"));
            }
        }
        Ok(full)
    }

    fn resolve_dir(&self, dir: &str) -> Result<PathBuf> {
        if dir.is_empty() || dir == "." { Ok(self.dir.path().to_path_buf()) } else { self.resolve(dir) }
    }

    fn info(&self, full: &Path) -> Result<FileInfo> {
        let meta = full.metadata().map_err(|e| not_found_or_io(e, full))?;
        let rel = full.strip_prefix(self.dir.path()).unwrap().to_string_lossy().into_owned();
        Ok(FileInfo {
            name: full.file_name().unwrap().to_string_lossy().into_owned(),
            path: rel,
            size: if meta.is_dir() { 0 } else { meta.len() },
            is_dir: meta.is_dir(),
            modified: meta.modified().ok(),
            file_kind: None,
            mode: None,
        })
    }
}

fn not_found_or_io(e: std::io::Error, path: &Path) -> CodeBoxError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CodeBoxError::not_found(path.display().to_string())
    } else {
        CodeBoxError::io(path.display().to_string(), e)
    }
}

#[async_trait]
impl CodeBox for PythonDouble {
    fn id(&self) -> &str {
        "python-double"
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::full(["python"]);
        caps.install = false;
        caps.packages = false;
        caps.commands = false;
        // No stat, make_dir or rename: the suite checks they are refused loudly.
        caps.file_ops = false;
        // No execution history either: the suite checks history and stats are refused loudly.
        caps.history = false;
        // One interpreter, no code contexts: the suite checks they are refused loudly.
        caps.contexts = false;
        // No ports: the suite checks connect_port is refused loudly.
        caps.ports = false;
        // Nor metrics: the suite checks they are refused loudly.
        caps.metrics = false;
        // Nor artifacts: the suite's artifact check is gated on the capability.
        caps.artifacts = false;
        // Nor background processes: the suite checks they are refused loudly.
        caps.processes = false;
        caps
    }

    async fn start(&self) -> Result<()> {
        if !*self.started.lock().unwrap() {
            self.spawn().await?;
            *self.started.lock().unwrap() = true;
        }
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        if let Some(mut p) = self.process.lock().await.take() {
            let _ = p.child.kill().await;
        }
        *self.started.lock().unwrap() = false;
        Ok(())
    }

    async fn status(&self) -> Result<BoxStatus> {
        let running = self.process.lock().await.is_some();
        Ok(BoxStatus::new(if running { BoxState::Idle } else { BoxState::Stopped }).with_kernel("python-double"))
    }

    async fn run_stream(&self, code: &str, options: RunOptions) -> Result<EventStream> {
        if self.forget_state {
            self.spawn().await?;
        }
        let (tx, rx) = mpsc::channel::<Result<ExecEvent>>(64);
        let process = self.process.clone();
        let pid = self.pid.clone();
        let interrupted = self.interrupted.clone();
        let request = serde_json::json!({ "code": code }).to_string() + "\n";
        tokio::spawn(async move {
            let started = Instant::now();
            let mut guard = process.lock().await;
            let Some(p) = guard.as_mut() else {
                let _ = tx.send(Err(CodeBoxError::not_running("not started"))).await;
                return;
            };
            interrupted.store(false, Ordering::SeqCst);
            if let Err(e) = p.stdin.write_all(request.as_bytes()).await {
                let _ = tx.send(Err(CodeBoxError::io("writing to the double", e))).await;
                return;
            }
            let deadline = options.timeout.map(|t| started + t);
            let mut timed_out = false;
            loop {
                let next = match deadline.filter(|_| !timed_out) {
                    Some(at) => match tokio::time::timeout_at(at.into(), p.lines.next_line()).await {
                        Ok(line) => line,
                        Err(_) => {
                            timed_out = true;
                            Self::signal_interrupt(pid.load(Ordering::SeqCst)).await;
                            continue;
                        }
                    },
                    None => p.lines.next_line().await,
                };
                let line = match next {
                    Ok(Some(line)) => line,
                    Ok(None) | Err(_) => {
                        let _ = tx.send(Err(CodeBoxError::protocol("the double exited"))).await;
                        return;
                    }
                };
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                if value["type"] == "done" {
                    let outcome = match value["outcome"].as_str() {
                        Some("error") => Outcome::Error,
                        Some("interrupted") if timed_out => Outcome::TimedOut,
                        Some("interrupted") => Outcome::Interrupted,
                        _ => Outcome::Ok,
                    };
                    let count = value["execution_count"].as_u64();
                    let _ = tx.send(Ok(ExecEvent::end(count, started.elapsed(), outcome))).await;
                    return;
                }
                let event: ExecEvent = serde_json::from_value(value).unwrap();
                let _ = tx.send(Ok(event)).await;
            }
        });
        Ok(Box::pin(tokio_stream(rx)))
    }

    async fn upload(&self, path: &str, mut content: ByteStream) -> Result<FileInfo> {
        let full = self.resolve(path)?;
        if let Some(parent) = full.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| CodeBoxError::io("mkdir", e))?;
        }
        let mut file = tokio::fs::File::create(&full).await.map_err(|e| CodeBoxError::io("create", e))?;
        while let Some(chunk) = content.next().await {
            file.write_all(&chunk?).await.map_err(|e| CodeBoxError::io("write", e))?;
        }
        file.flush().await.map_err(|e| CodeBoxError::io("flush", e))?;
        self.info(&full)
    }

    async fn download(&self, path: &str) -> Result<ByteStream> {
        let full = self.resolve(path)?;
        let mut file = tokio::fs::File::open(&full).await.map_err(|e| not_found_or_io(e, &full))?;
        let stream = async_stream(move |tx: mpsc::Sender<Result<Bytes>>| async move {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(CodeBoxError::io("read", e))).await;
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }

    async fn list_files(&self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>> {
        let root = self.resolve_dir(dir)?;
        let mut out = Vec::new();
        let mut pending = vec![root];
        while let Some(dir) = pending.pop() {
            let mut entries = tokio::fs::read_dir(&dir).await.map_err(|e| not_found_or_io(e, &dir))?;
            while let Some(entry) = entries.next_entry().await.map_err(|e| CodeBoxError::io("read_dir", e))? {
                let info = self.info(&entry.path())?;
                if recursive && info.is_dir {
                    pending.push(entry.path());
                }
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn delete_file(&self, path: &str) -> Result<()> {
        let full = self.resolve(path)?;
        let meta = tokio::fs::symlink_metadata(&full).await.map_err(|e| not_found_or_io(e, &full))?;
        let result =
            if meta.is_dir() { tokio::fs::remove_dir(&full).await } else { tokio::fs::remove_file(&full).await };
        result.map_err(|e| not_found_or_io(e, &full))
    }

    async fn install(&self, _packages: &[String]) -> Result<String> {
        Err(CodeBoxError::unsupported("install"))
    }

    async fn restart(&self) -> Result<()> {
        self.spawn().await
    }

    async fn interrupt(&self) -> Result<()> {
        Self::signal_interrupt(self.pid.load(Ordering::SeqCst)).await;
        Ok(())
    }

    async fn run_command(&self, _command: CommandSpec) -> Result<CommandOutput> {
        Err(CodeBoxError::unsupported("run_command"))
    }
}

fn tokio_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn async_stream<F, Fut>(producer: F) -> ByteStream
where
    F: FnOnce(mpsc::Sender<Result<Bytes>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream(rx))
}
