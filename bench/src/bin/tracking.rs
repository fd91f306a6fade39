//! What execution tracking (history and artifacts) costs a LocalBox; prints one JSON object.
//!
//! - the warm `1 + 1` round trip of two boxes, one with execution tracking and one without
//!   (`with_execution_tracking(false)`), on ipykernel and on the lean kernel, run alternately
//!   in the same process (`BENCH_WARM_RUNS` pairs, default 1000), reported as p50s and as the
//!   ratio on/off (target: at most 1.03);
//! - the same round trip with tracking in a working directory of `BENCH_TRACKING_TREES` files
//!   (comma-separated counts, default `10,100000`; in directories of 1000), against a box
//!   without tracking: what following a large working directory for artifacts costs an
//!   execution that writes nothing, and its first execution, which sets the watches up;
//! - the same round trip through two servers in this process, one as `codebox serve` runs by
//!   default (history and artifacts on, every session's metrics sampled each 5 s) and one with
//!   all three off (`with_execution_tracking(false)`, `metrics_interval` 0), alternately with
//!   one RemoteBox each: what the three cost together on the path users take.
#![allow(clippy::print_stdout, reason = "a benchmark prints its JSON report on stdout")]

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{LEAN_KERNEL, LocalBox};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig, factory_fn};
use serde_json::{Value, json};

use codebox_bench::{env_usize, ms, ratio, summary};

/// Started boxes of `kernel`, with and without tracking, optionally in `workdir`.
async fn pair(kernel: &str, workdir: Option<&Path>) -> Result<(LocalBox, LocalBox)> {
    let mut on = LocalBox::builder().with_kernel(kernel);
    if let Some(dir) = workdir {
        on = on.with_working_dir(dir);
    }
    let on = on.build()?;
    let off = LocalBox::builder().with_kernel(kernel).with_execution_tracking(false).build()?;
    on.start().await?;
    off.start().await?;
    Ok((on, off))
}

async fn once(lb: &dyn CodeBox) -> Result<f64> {
    let t0 = Instant::now();
    let ex = lb.exec("1 + 1").await?;
    let elapsed = ms(t0.elapsed());
    if ex.text() != "2" {
        bail!("1 + 1 gave {:?}", ex.text());
    }
    Ok(elapsed)
}

/// `runs` round trips of each box, alternating which goes first, after a warm-up.
async fn alternate(on: &dyn CodeBox, off: &dyn CodeBox, runs: usize) -> Result<Value> {
    for _ in 0..50 {
        once(on).await?;
        once(off).await?;
    }
    let (mut with, mut without) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        if i % 2 == 0 {
            with.push(once(on).await?);
            without.push(once(off).await?);
        } else {
            without.push(once(off).await?);
            with.push(once(on).await?);
        }
    }
    let (with, without) = (summary(&with), summary(&without));
    let r = ratio(&with["p50"], &without["p50"]);
    Ok(json!({"tracking_on_ms": with, "tracking_off_ms": without, "ratio_on_over_off_p50": r}))
}

const KEY: &str = "bench-tracking-key";

/// A server in this process whose sessions are LocalBoxes of the default kernel, with history,
/// artifacts and metrics sampling all on (as `codebox serve` runs by default) or all off.
/// Returns its base URL and the sender that stops it.
async fn tracking_server(tracking: bool) -> Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let factory = factory_fn(move |_request| async move {
        let b = LocalBox::builder().with_execution_tracking(tracking).build()?;
        Ok(std::sync::Arc::new(b) as std::sync::Arc<dyn CodeBox>)
    });
    // No request rate: a round trip refused for the key's rate would time the wait.
    let mut config = ServerConfig::new().with_addr("127.0.0.1:0".parse()?).with_api_key(KEY).with_rate_limit(0, 0);
    if !tracking {
        config = config.with_metrics_interval(std::time::Duration::ZERO);
    }
    let server = Server::bind(config, factory).await?;
    let base = format!("http://{}", server.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));
    Ok((base, stop_tx))
}

/// The warm `1 + 1` round trip through a server with everything on against one with
/// everything off, alternating.
async fn through_servers(runs: usize) -> Result<Value> {
    let (on_url, stop_on) = tracking_server(true).await?;
    let (off_url, stop_off) = tracking_server(false).await?;
    let on = RemoteBox::builder().with_base_url(&on_url).with_api_key(KEY).build()?;
    let off = RemoteBox::builder().with_base_url(&off_url).with_api_key(KEY).build()?;
    on.start().await?;
    off.start().await?;
    let started = Instant::now();
    let mut measured = alternate(&on, &off, runs).await?;
    measured["wall_s"] = json!(started.elapsed().as_secs_f64());
    on.stop().await?;
    off.stop().await?;
    let _ = (stop_on.send(()), stop_off.send(()));
    Ok(measured)
}

/// A tree of `files` empty files in directories of 1000 below `dir`.
fn make_tree(dir: &Path, files: usize) -> Result<()> {
    for d in 0..files.div_ceil(1000) {
        let sub = dir.join(format!("d{d}"));
        std::fs::create_dir(&sub)?;
        for f in 0..(files - d * 1000).min(1000) {
            std::fs::File::create(sub.join(format!("f{f}")))?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = env_usize("BENCH_WARM_RUNS", 1000);
    let trees: Vec<usize> = std::env::var("BENCH_TRACKING_TREES")
        .unwrap_or_else(|_| "10,100000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();

    let mut kernels = serde_json::Map::new();
    for kernel in ["python3", LEAN_KERNEL] {
        let (on, off) = pair(kernel, None).await?;
        kernels.insert(kernel.to_owned(), alternate(&on, &off, runs).await?);
        on.stop().await?;
        off.stop().await?;
    }

    // Through the server: history, artifacts and metrics sampling together.
    let server = through_servers(runs).await?;

    let mut scans = serde_json::Map::new();
    for files in trees {
        let dir = tempfile_dir()?;
        make_tree(&dir, files)?;
        let (on, off) = pair(LEAN_KERNEL, Some(&dir)).await?;
        // The first execution of a tracking box sets its watches up: a walk of the tree.
        let first = json!({"tracking_on_ms": once(&on).await?, "tracking_off_ms": once(&off).await?});
        let mut measured = alternate(&on, &off, runs.min(200)).await?;
        measured["first_execution"] = first;
        let added = measured["tracking_on_ms"]["p50"].as_f64().unwrap_or(0.0)
            - measured["tracking_off_ms"]["p50"].as_f64().unwrap_or(0.0);
        scans.insert(format!("{files}_files"), json!({"lean_kernel": measured, "overhead_p50_ms": added}));
        on.stop().await?;
        off.stop().await?;
        std::fs::remove_dir_all(&dir)?;
    }

    let out = json!({
        "bench": "tracking",
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "warm_1plus1_pairs": runs,
        "warm_1plus1": kernels,
        "warm_1plus1_through_server_history_artifacts_and_metrics_sampling": server,
        "tracking_in_a_working_directory_of": scans,
        "targets": {"ratio_on_over_off_p50_max": 1.03},
    });
    println!("{out}");
    Ok(())
}

/// A fresh directory under the system's temporary directory, left for the caller to remove.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("codebox-bench-tracking-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
