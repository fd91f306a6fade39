//! Pause and resume benchmark; prints one JSON object.
//!
//! A LocalBox with 100 MB of files (ten uploaded files of 10 MB) and 100 MB of variables
//! (`blob = os.urandom(100 << 20)`) is paused (`CodeBox::pause`: its namespace pickled, its
//! files copied and synced, the kernel stopped) and resumed (`LocalBox::resume`: a kernel
//! start, the files checked and copied back, the namespace loaded), `BENCH_PAUSE_RUNS`
//! times (default 3). Beside them, the cold start of the same box (`start()` + `1+1`), so
//! that the resume's cost beyond a kernel start shows; and the snapshot's size on disk.
//! Targets (issue 14): a pause within 2 s, a resume within 1 s beyond a kernel start.
#![allow(clippy::print_stdout, reason = "a benchmark prints its JSON report on stdout")]

use std::time::Instant;

use anyhow::{Result, bail};
use codebox_core::{CodeBox, CodeBoxExt, SnapshotRung};
use codebox_local::LocalBox;
use serde_json::json;

use codebox_bench::{env_usize, ms, pct, summary};

/// Bytes of files, and of variables, the box holds.
const BYTES: usize = 100 << 20;
const FILES: usize = 10;

/// The cold start of a box like the one paused: start and a first result.
async fn cold_start() -> Result<f64> {
    let t0 = Instant::now();
    let lb = LocalBox::builder().build()?;
    lb.start().await?;
    let ex = lb.exec("1+1").await?;
    let elapsed = ms(t0.elapsed());
    if ex.text() != "2" {
        bail!("cold start: 1+1 gave {:?}", ex.text());
    }
    lb.stop().await?;
    Ok(elapsed)
}

/// One pause and resume: (pause ms, resume ms, bytes on disk).
async fn pause_and_resume(run: usize) -> Result<(f64, f64, u64)> {
    let state = snapshot_dir(run)?;
    let lb = LocalBox::builder().with_state_dir(&state).build()?;
    lb.start().await?;
    let chunk: Vec<u8> = (0..BYTES / FILES).map(|i| (i * 7 + i / 4093) as u8).collect();
    for i in 0..FILES {
        lb.upload_bytes(&format!("data/part{i}.bin"), chunk.clone()).await?;
    }
    let ex = lb.exec(&format!("import os\nblob = os.urandom({BYTES})\nprint(len(blob))")).await?;
    if ex.stdout() != format!("{BYTES}\n") {
        bail!("making the variables: {ex:?}");
    }
    let t0 = Instant::now();
    let report = lb.pause().await?;
    let pause_ms = ms(t0.elapsed());
    if report.rung != SnapshotRung::Namespace || !report.unrestored.is_empty() {
        bail!("the pause did not keep everything: {report:?}");
    }
    let t0 = Instant::now();
    let (back, _) = LocalBox::resume(&state).await?;
    let resume_ms = ms(t0.elapsed());
    let ex = back.exec("print(len(blob), os.path.getsize('data/part9.bin'))").await?;
    if ex.stdout() != format!("{BYTES} {}\n", BYTES / FILES) {
        bail!("the resumed box lacks its state: {ex:?}");
    }
    back.stop().await?;
    let _ = std::fs::remove_dir_all(&state);
    Ok((pause_ms, resume_ms, report.bytes_on_disk))
}

/// A fresh directory for run `run`'s snapshot, under the system's temporary directory.
fn snapshot_dir(run: usize) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("codebox-bench-pause-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = env_usize("BENCH_PAUSE_RUNS", 3).max(1);
    // The managed environment is provisioned (untimed) by a first start.
    cold_start().await?;
    let (mut starts, mut pauses, mut resumes, mut disk) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for run in 0..runs {
        starts.push(cold_start().await?);
        let (pause_ms, resume_ms, bytes) = pause_and_resume(run).await?;
        pauses.push(pause_ms);
        resumes.push(resume_ms);
        disk = disk.max(bytes);
    }
    let beyond_start = pct(&resumes, 0.5) - pct(&starts, 0.5);
    let report = json!({
        "bench": "pause",
        "files_bytes": BYTES,
        "variables_bytes": BYTES,
        "pause_ms": summary(&pauses),
        "resume_ms": summary(&resumes),
        "cold_start_ms": summary(&starts),
        "resume_beyond_start_p50_ms": beyond_start,
        "disk_bytes": disk,
        "targets": {
            "pause_ms_max": 2000.0,
            "resume_beyond_start_ms_max": 1000.0,
            "pause_met": pct(&pauses, 0.5) <= 2000.0,
            "resume_met": beyond_start <= 1000.0,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
