//! LocalBox benchmark; prints one JSON object.
//!
//! - cold start to first result (`start()` + `1+1`), p50 over `BENCH_COLD_RUNS` (default 10),
//!   and in turn with it the time a fresh Python takes just to import ipykernel;
//! - cold start and warm round trips of the lean kernel (`python3-lean`);
//! - pooled start (`start()` with a ready kernel waiting in a `KernelPool`), p50;
//! - warm `1+1` and `print('x')` round trips, p50/p90/p99 over `BENCH_WARM_RUNS` (default 1000);
//! - 8 boxes x 200 executions at once, executions per second;
//! - 100 MiB upload and download, MiB/s;
//! - memory per LocalBox beyond its kernel (RSS growth of this process per started box);
//! - in the same run, the same measurements made by jupyter_client's BlockingKernelClient
//!   (`bench/reference/jupyter_client_ref.py`, same Python and kernel flags), and the ratios.
#![allow(clippy::print_stdout, reason = "a benchmark prints its JSON report on stdout")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{KernelPool, LEAN_KERNEL, LocalBox};
use futures::StreamExt;
use serde_json::json;

use codebox_bench::{KERNEL_FLAGS, env_usize, jupyter_client_reference, ms, ratio, summary};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// One cold start of `kernel`: `start()` plus `1+1`, in ms.
async fn cold_once(kernel: &str) -> Result<f64> {
    let t0 = Instant::now();
    let lb = LocalBox::builder().with_kernel(kernel).build()?;
    lb.start().await?;
    let ex = lb.exec("1+1").await?;
    let elapsed = ms(t0.elapsed());
    if ex.text() != "2" {
        bail!("cold start of {kernel}: 1+1 gave {:?}", ex.text());
    }
    lb.stop().await?;
    Ok(elapsed)
}

/// Cold starts of ipykernel and of the lean kernel, and a bare `import ipykernel.kernelapp`
/// in a fresh Python, in turn: the import bounds any ipykernel start from below, and timing
/// the three together shows where a cold start stands while the machine's speed drifts.
async fn cold_starts(python: &Path, runs: usize) -> Result<[Vec<f64>; 3]> {
    let [mut ipykernel, mut lean, mut imports] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..runs {
        ipykernel.push(cold_once("python3").await?);
        lean.push(cold_once(LEAN_KERNEL).await?);
        let t0 = Instant::now();
        let status = Command::new(python).args(["-c", "import ipykernel.kernelapp"]).status()?;
        imports.push(ms(t0.elapsed()));
        if !status.success() {
            bail!("{} cannot import ipykernel", python.display());
        }
    }
    Ok([ipykernel, lean, imports])
}

async fn pooled_start(runs: usize) -> Result<Vec<f64>> {
    let pool = KernelPool::new(1);
    let builder = LocalBox::builder().with_pool(pool.clone());
    pool.prewarm(&builder).await?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        // Wait (untimed) until the pool has refilled.
        let waited = Instant::now();
        while pool.ready() == 0 {
            if waited.elapsed() > Duration::from_secs(60) {
                bail!("the pool did not refill");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lb = builder.clone().build()?;
        let t0 = Instant::now();
        lb.start().await?;
        samples.push(ms(t0.elapsed()));
        if lb.exec("1+1").await?.text() != "2" {
            bail!("pooled box gave a wrong answer");
        }
        lb.stop().await?;
    }
    Ok(samples)
}

async fn warm(lb: &LocalBox, code: &str, runs: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let ex = lb.exec(code).await?;
        samples.push(ms(t0.elapsed()));
        if !ex.is_ok() {
            bail!("{code} failed: {ex:?}");
        }
    }
    Ok(samples)
}

async fn transfer(lb: &LocalBox, mib: usize) -> Result<(f64, f64)> {
    let chunk = Bytes::from(vec![42u8; 1 << 20]);
    let chunks = futures::stream::iter((0..mib).map(move |_| Ok(chunk.clone())));
    let t0 = Instant::now();
    lb.upload("bench.bin", Box::pin(chunks)).await?;
    let up = mib as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut total = 0usize;
    let mut stream = lb.download("bench.bin").await?;
    while let Some(c) = stream.next().await {
        total += c?.len();
    }
    let down = mib as f64 / t0.elapsed().as_secs_f64();
    if total != mib << 20 {
        bail!("downloaded {total} bytes");
    }
    lb.delete_file("bench.bin").await?;
    Ok((up, down))
}

/// Start `n` boxes and return them with the RSS growth of this process per box (the
/// kernels are other processes; this is what a box costs its owner).
async fn start_many(n: usize) -> Result<(Vec<LocalBox>, f64)> {
    let before = rss_kib();
    let mut boxes = Vec::new();
    for _ in 0..n {
        let lb = LocalBox::new()?;
        lb.start().await?;
        lb.exec("1+1").await?;
        boxes.push(lb);
    }
    let per_box_kib = (rss_kib().saturating_sub(before)) as f64 / n as f64;
    Ok((boxes, per_box_kib))
}

async fn concurrent(boxes: &[LocalBox], per_box: usize) -> Result<f64> {
    let t0 = Instant::now();
    let runs = boxes.iter().map(|lb| async move {
        for _ in 0..per_box {
            lb.exec("1+1").await?;
        }
        Ok::<_, codebox_core::CodeBoxError>(())
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    Ok((boxes.len() * per_box) as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cold_runs = env_usize("BENCH_COLD_RUNS", 10);
    let warm_runs = env_usize("BENCH_WARM_RUNS", 1000);
    let boxes = env_usize("BENCH_BOXES", 8);
    let per_box = env_usize("BENCH_PER_BOX", 200);
    let mib = env_usize("BENCH_TRANSFER_MIB", 100);

    // Provision (if needed) before anything is timed.
    let probe = LocalBox::new()?;
    probe.start().await?;
    let python = probe.python().await.context("the box's Python")?;
    probe.stop().await?;

    // First, while the allocator has little freed memory to reuse: the RSS growth per box.
    let (many, per_box_kib) = start_many(boxes).await?;
    let exec_per_s = concurrent(&many, per_box).await?;
    for b in &many {
        b.stop().await?;
    }
    drop(many);

    let [cold, lean_cold, imports] = cold_starts(&python, cold_runs).await?;
    let pooled = pooled_start(cold_runs).await?;

    let lb = LocalBox::new()?;
    lb.start().await?;
    warm(&lb, "1+1", 50).await?;
    let w_add = warm(&lb, "1+1", warm_runs).await?;
    let w_print = warm(&lb, "print('x')", warm_runs).await?;
    let (up, down) = transfer(&lb, mib).await?;
    lb.stop().await?;

    let lean = LocalBox::builder().with_kernel(LEAN_KERNEL).build()?;
    lean.start().await?;
    warm(&lean, "1+1", 50).await?;
    let lean_add = warm(&lean, "1+1", warm_runs).await?;
    let lean_print = warm(&lean, "print('x')", warm_runs).await?;
    lean.stop().await?;

    let reference = jupyter_client_reference(&python, cold_runs, warm_runs, boxes, per_box)?;
    let ours = json!({
        "cold_start_ms": summary(&cold),
        "ipykernel_import_ms": summary(&imports),
        "pooled_start_ms": summary(&pooled),
        "warm_1plus1_ms": summary(&w_add),
        "warm_print_ms": summary(&w_print),
        "concurrent": {"boxes": boxes, "per_box": per_box, "exec_per_s": exec_per_s},
        "upload_mib_per_s": up,
        "download_mib_per_s": down,
        "transfer_mib": mib,
        "rss_per_box_kib": per_box_kib,
    });
    let lean = json!({
        "kernel": LEAN_KERNEL,
        "cold_start_ms": summary(&lean_cold),
        "warm_1plus1_ms": summary(&lean_add),
        "warm_print_ms": summary(&lean_print),
    });
    let ratios = json!({
        "warm_1plus1_p50": ratio(&ours["warm_1plus1_ms"]["p50"], &reference["warm_1plus1_ms"]["p50"]),
        "warm_print_p50": ratio(&ours["warm_print_ms"]["p50"], &reference["warm_print_ms"]["p50"]),
        "cold_start_p50": ratio(&ours["cold_start_ms"]["p50"], &reference["cold_start_ms"]["p50"]),
        "cold_start_over_ipykernel_import_p50": ratio(&ours["cold_start_ms"]["p50"], &ours["ipykernel_import_ms"]["p50"]),
        "lean_kernel_warm_1plus1_p50": ratio(&lean["warm_1plus1_ms"]["p50"], &reference["warm_1plus1_ms"]["p50"]),
        "lean_kernel_cold_start_p50": ratio(&lean["cold_start_ms"]["p50"], &reference["cold_start_ms"]["p50"]),
        "concurrent_exec_per_s": ratio(&ours["concurrent"]["exec_per_s"], &reference["concurrent"]["exec_per_s"]),
    });
    let targets = json!({
        "warm_1plus1_p50_ratio_max": 0.9,
        "cold_start_p50_ms_max": 260.0,
        "pooled_start_p50_ms_max": 15.0,
        "concurrent_ratio_min": 1.0,
        "rss_per_box_kib_max": 2048.0,
    });
    let out = json!({
        "bench": "local",
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "reference_transport": "tcp (jupyter_client default); LocalBox uses ipc",
        "python": python,
        "kernel_flags": KERNEL_FLAGS,
        "local_box": ours,
        "local_box_lean_kernel": lean,
        "jupyter_client_reference": reference,
        "ratios_local_over_reference": ratios,
        "targets": targets,
    });
    println!("{out}");
    Ok(())
}
