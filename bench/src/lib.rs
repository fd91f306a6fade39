//! Shared helpers for the benchmark binaries in `src/bin/`.

pub mod reference;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The flags LocalBox passes to ipykernel (kept in step with `codebox-local`'s kernelspec).
pub const KERNEL_FLAGS: &[&str] =
    &["--HistoryManager.hist_file=:memory:", "--InteractiveShell.colors=nocolor", "--IPKernelApp.quiet=True"];

/// A `usize` from the environment (the benchmarks' size knobs), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `q` quantile (0..=1) of `samples`, nearest rank. `samples` must not be empty.
pub fn pct(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((q * s.len() as f64) as usize).min(s.len() - 1)]
}

/// `{p50, p90, p99, n}` of `samples`.
pub fn summary(samples: &[f64]) -> Value {
    json!({"p50": pct(samples, 0.5), "p90": pct(samples, 0.9), "p99": pct(samples, 0.99), "n": samples.len()})
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The reference measurements of `bench/reference/jupyter_client_ref.py` (jupyter_client and
/// ipykernel from `python`, with LocalBox's kernel flags): `cold_runs` cold starts, `warm_runs`
/// round trips, and `boxes` kernels running `per_box` executions each at once.
pub fn jupyter_client_reference(
    python: &Path,
    cold_runs: usize,
    warm_runs: usize,
    boxes: usize,
    per_box: usize,
) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/jupyter_client_ref.py");
    let cfg = json!({
        "flags": KERNEL_FLAGS, "cold_runs": cold_runs, "warm_runs": warm_runs,
        "boxes": boxes, "per_box": per_box, "warmup": 50.min(warm_runs),
    });
    let out = Command::new(python)
        .arg(&script)
        .arg(cfg.to_string())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("the reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("parsing the reference's JSON")
}

/// `ours / theirs` to three decimals, or null when either is missing or `theirs` is not positive.
pub fn ratio(ours: &Value, theirs: &Value) -> Value {
    match (ours.as_f64(), theirs.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// A LocalBox builder with `CODEBOX_PYTHON` applied when it is set.
pub fn local_builder() -> codebox_local::LocalBoxBuilder {
    let mut builder = codebox_local::LocalBox::builder();
    if let Ok(python) = std::env::var("CODEBOX_PYTHON") {
        builder = builder.with_python(python);
    }
    builder
}

/// A server in this process on 127.0.0.1:0; it stops when dropped.
#[derive(Debug)]
pub struct InProcessServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl InProcessServer {
    /// Serve `factory` with `config` (its address is replaced by 127.0.0.1:0).
    pub async fn start(
        config: codebox_server::ServerConfig,
        factory: std::sync::Arc<dyn codebox_core::BoxFactory>,
    ) -> Result<Self> {
        let server = codebox_server::Server::bind(config.with_addr("127.0.0.1:0".parse()?), factory).await?;
        let base = format!("http://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Ok(Self { base, _stop: stop })
    }
}
