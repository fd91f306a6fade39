//! What execution tracking (history and artifacts) costs a LocalBox; prints one JSON object.
//!
//! - the warm `1 + 1` round trip of two boxes, one with execution tracking and one without
//!   (`with_execution_tracking(false)`), on ipykernel and on the lean kernel, run alternately
//!   in the same process (`BENCH_WARM_RUNS` pairs, default 1000), reported as p50s and as the
//!   ratio on/off (target: at most 1.03);
//! - the same round trip with tracking in a working directory of `BENCH_TRACKING_TREES` files
//!   (comma-separated counts, default `10,100000`; in directories of 1000), against a box
//!   without tracking: what following a large working directory for artifacts costs an
//!   execution that writes nothing, and its first execution, which sets the watches up.
#![allow(clippy::print_stdout, reason = "a benchmark prints its JSON report on stdout")]

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{LEAN_KERNEL, LocalBox};
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

async fn once(lb: &LocalBox) -> Result<f64> {
    let t0 = Instant::now();
    let ex = lb.exec("1 + 1").await?;
    let elapsed = ms(t0.elapsed());
    if ex.text() != "2" {
        bail!("1 + 1 gave {:?}", ex.text());
    }
    Ok(elapsed)
}

/// `runs` round trips of each box, alternating which goes first, after a warm-up.
async fn alternate(on: &LocalBox, off: &LocalBox, runs: usize) -> Result<Value> {
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
