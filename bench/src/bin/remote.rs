//! RemoteBox benchmark; prints one JSON object.
//!
//! - p50 execution round trip of a tiny cell: RemoteBox against an in-process `codebox
//!   serve` (LocalBox sessions), LocalBox direct, each with the default kernel (the lean
//!   `python3-lean`) and with ipykernel (`python3`), and the Python codeboxapi 0.2 client against
//!   its own server (`bench/reference/codeboxapi_v2_ref.py`, run as a subprocess against
//!   `uvicorn codeboxapi.api:app` from the venv cached in `target/codeboxapi-venv`);
//! - a 1 GiB download through RemoteBox to a file, with the client's RSS growth.
//!
//! `BENCH_ROUNDS` (default 200) sets the number of timed executions per setup.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use codebox_bench::reference::{PythonServer, tempfile_dir};
use codebox_core::{CodeBox, CodeBoxExt, CodeBoxSettings};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const KEY: &str = "bench-key";
const WARMUP: usize = 20;
const BLOCKS: usize = 5;
/// ipykernel's kernel name.
const IPYKERNEL: &str = "python3";

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Round-trip samples (ms) of a tiny cell on each box: `rounds` in a row on one box, then
/// the next, as the Python reference measures its box. (Alternating boxes execution by
/// execution would leave every kernel idle, and its caches cold, between two of its runs.)
async fn round_trips(boxes: &[&dyn CodeBox], rounds: usize, warmup: usize) -> Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(rounds); boxes.len()];
    for (b, samples) in boxes.iter().zip(samples.iter_mut()) {
        for _ in 0..warmup {
            b.exec("1 + 1").await?;
        }
        for _ in 0..rounds {
            let start = Instant::now();
            let ex = b.exec("1 + 1").await?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            if ex.text() != "2" {
                bail!("unexpected output {:?}", ex.text());
            }
        }
    }
    Ok(samples)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// Download `path` to a file, sampling RSS; returns (bytes, seconds, peak RSS growth).
async fn download_to_file(b: &RemoteBox, path: &str, dest: &Path) -> Result<(u64, f64, u64)> {
    let before = rss_bytes();
    let mut peak = before;
    let start = Instant::now();
    let mut file = tokio::fs::File::create(dest).await?;
    let mut stream = b.download(path).await?;
    let mut total = 0u64;
    let mut next_sample = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        file.write_all(&chunk).await?;
        if total >= next_sample {
            peak = peak.max(rss_bytes());
            next_sample = total + (16 << 20);
        }
    }
    file.flush().await?;
    let secs = start.elapsed().as_secs_f64();
    peak = peak.max(rss_bytes());
    Ok((total, secs, peak.saturating_sub(before)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(200);

    // No request rate: the timed loop runs past the default rate, and a refusal is no sample.
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse()?).with_api_key(KEY).with_rate_limit(0, 0);
    // Every session gets its own LocalBox.
    let factory = LocalFactory::builder(LocalBox::builder()).build()?;
    let server = Server::bind(config, Arc::new(factory)).await?;
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    let settings = CodeBoxSettings::new().with_api_key(KEY).with_base_url(&base);
    let remote = RemoteBox::from_settings(&settings)?;
    remote.start().await?;
    let local = LocalBox::builder().build()?;
    local.start().await?;
    // ipykernel, the `python-ipykernel` template's kernel, beside the default.
    let remote_ipykernel = codebox_remote::RemoteBoxBuilder::from_settings(&settings).with_kernel(IPYKERNEL).build()?;
    remote_ipykernel.start().await?;
    let local_ipykernel = LocalBox::builder().with_kernel(IPYKERNEL).build()?;
    local_ipykernel.start().await?;
    let python = Arc::new(tokio::task::spawn_blocking(PythonServer::start).await??);
    let load_before = load_average();
    // Blocks of each setup in turn, so that a change of machine load hits all three alike.
    let (mut remote_ms, mut local_ms, mut python_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut remote_ipykernel_ms, mut local_ipykernel_ms) = (Vec::new(), Vec::new());
    for block in 0..BLOCKS {
        let warmup = if block == 0 { WARMUP } else { 2 };
        let per_block = rounds.div_ceil(BLOCKS);
        let mut rust = round_trips(&[&remote, &local, &remote_ipykernel, &local_ipykernel], per_block, warmup).await?;
        local_ipykernel_ms.append(&mut rust[3]);
        remote_ipykernel_ms.append(&mut rust[2]);
        local_ms.append(&mut rust[1]);
        remote_ms.append(&mut rust[0]);
        let py = Arc::clone(&python);
        python_ms.extend(tokio::task::spawn_blocking(move || py.round_trips(per_block, warmup)).await??);
    }
    let load_after = load_average();
    let (remote_p50, local_p50, python_p50) = (p50(remote_ms), p50(local_ms), p50(python_ms));
    let (remote_ipykernel_p50, local_ipykernel_p50) = (p50(remote_ipykernel_ms), p50(local_ipykernel_ms));
    drop(python);
    local.stop().await?;
    local_ipykernel.stop().await?;
    remote_ipykernel.stop().await?;

    // 1 GiB download: the file is made by code in the box, then streamed to a local file.
    remote.exec("with open('big.bin', 'wb') as f:\n    f.truncate(1 << 30)").await?;
    let dir = tempfile_dir()?;
    let dest = dir.join("big.bin");
    let (bytes, secs, rss_growth) = download_to_file(&remote, "big.bin", &dest).await?;
    let _ = std::fs::remove_dir_all(&dir);
    remote.stop().await?;
    let _ = stop.send(());
    let _ = serving.await;

    let report = serde_json::json!({
        "bench": "remote",
        "rounds": rounds,
        "blocks": BLOCKS,
        "load_average_1m": [load_before, load_after],
        "exec_p50_ms": {
            "remote_box_codebox_serve": remote_p50,
            "local_box_direct": local_p50,
            "python_codeboxapi_0_2": python_p50,
            "remote_box_codebox_serve_ipykernel": remote_ipykernel_p50,
            "local_box_direct_ipykernel": local_ipykernel_p50,
        },
        "ratio_remote_to_python": remote_p50 / python_p50,
        "ratio_remote_to_local": remote_p50 / local_p50,
        "ratio_remote_ipykernel_to_python": remote_ipykernel_p50 / python_p50,
        "ratio_remote_ipykernel_to_local_ipykernel": remote_ipykernel_p50 / local_ipykernel_p50,
        "target_ratio_remote_to_python_max": 0.5,
        "download_1gib": {
            "bytes": bytes,
            "seconds": secs,
            "mib_per_s": bytes as f64 / (1 << 20) as f64 / secs,
            "client_rss_growth_mib": rss_growth as f64 / (1 << 20) as f64,
            "target_rss_growth_mib_max": 32,
        },
    });
    #[allow(clippy::print_stdout, reason = "the JSON report goes to stdout")]
    {
        println!("{report}");
    }
    Ok(())
}
