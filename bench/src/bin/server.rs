//! The CodeBox server on loopback: execution round trips through the server next to LocalBox
//! direct, upload and download throughput with the server's peak RSS growth, and many
//! sessions executing at once. Prints one JSON object.
//!
//! The server runs in this process (so its memory is this process's memory) on
//! 127.0.0.1:0, backed by LocalBox kernels; the client is RemoteBox. Options:
//! `--quick` (fewer iterations and smaller transfers, for a smoke run).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use codebox_core::{CodeBox, RunOptions};
use codebox_local::{KernelPool, LocalBox, LocalBoxBuilder};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig, factory_fn};
use futures::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "bench-key";
const MIB: u64 = 1 << 20;

struct Plan {
    round_trips: usize,
    transfers: Vec<u64>,
    sessions: usize,
    executions_per_session: usize,
    wide_sessions: usize,
    wide_executions: usize,
}

fn percentiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    json!({
        "n": samples.len(),
        "p50_ms": round3(at(0.5)),
        "p90_ms": round3(at(0.9)),
        "p99_ms": round3(at(0.99)),
        "mean_ms": round3(samples.iter().sum::<f64>() / samples.len() as f64),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// (VmRSS, VmHWM) of this process in bytes.
fn memory() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
        let kb: u64 = line.split_whitespace().nth(1).context("malformed status line")?.parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset the peak RSS (VmHWM) to the current RSS.
fn reset_peak() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM through /proc/self/clear_refs")
}

async fn time_run(codebox: &dyn CodeBox, i: usize) -> Result<f64> {
    let code = format!("{i}");
    let started = Instant::now();
    let ex = codebox.run(&code, RunOptions::default()).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if ex.result().and_then(|r| r.plain()) != Some(code) {
        bail!("unexpected result: {:?}", ex.result());
    }
    Ok(ms)
}

/// Round trips of the two boxes, alternating so that load on the machine hits both alike.
async fn time_runs(a: &dyn CodeBox, b: &dyn CodeBox, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    for i in 0..20 {
        time_run(a, i).await?;
        time_run(b, i).await?;
    }
    let (mut sa, mut sb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            sa.push(time_run(a, i).await?);
            sb.push(time_run(b, i).await?);
        } else {
            sb.push(time_run(b, i).await?);
            sa.push(time_run(a, i).await?);
        }
    }
    Ok((sa, sb))
}

/// A stream of `total` bytes in 1 MiB chunks, all views of one buffer.
fn payload(total: u64) -> codebox_core::ByteStream {
    let chunk = Bytes::from(vec![0x5au8; MIB as usize]);
    let mut left = total;
    Box::pin(futures::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(MIB);
        left -= n;
        Some(Ok(chunk.slice(..n as usize)))
    })))
}

async fn transfer(remote: &dyn CodeBox, size: u64) -> Result<Value> {
    let name = format!("bench-{}.bin", size / MIB);
    let (rss_before, _) = memory()?;
    reset_peak()?;
    let started = Instant::now();
    let info = remote.upload(&name, payload(size)).await?;
    let up_secs = started.elapsed().as_secs_f64();
    let (_, up_peak) = memory()?;
    if info.size != size {
        bail!("uploaded {} bytes, the server wrote {}", size, info.size);
    }

    let (rss_mid, _) = memory()?;
    reset_peak()?;
    let started = Instant::now();
    let mut stream = remote.download(&name).await?;
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk?.len() as u64;
    }
    let down_secs = started.elapsed().as_secs_f64();
    let (_, down_peak) = memory()?;
    if got != size {
        bail!("downloaded {got} of {size} bytes");
    }
    remote.delete_file(&name).await?;
    let gib = size as f64 / (1u64 << 30) as f64;
    Ok(json!({
        "bytes": size,
        "upload_gib_per_s": round3(gib / up_secs),
        "download_gib_per_s": round3(gib / down_secs),
        "upload_peak_rss_growth_mib": round3(up_peak.saturating_sub(rss_before) as f64 / MIB as f64),
        "download_peak_rss_growth_mib": round3(down_peak.saturating_sub(rss_mid) as f64 / MIB as f64),
    }))
}

// Failures are reported on stderr and counted in the result.
#[allow(clippy::print_stderr)]
async fn concurrent(base: &str, sessions: usize, per_session: usize) -> Result<Value> {
    let mut boxes = Vec::new();
    let started = Instant::now();
    let starts = futures::future::join_all((0..sessions).map(|_| async move {
        let remote = RemoteBox::builder().with_base_url(base).with_api_key(KEY).build()?;
        remote.start().await?;
        Ok::<_, codebox_core::CodeBoxError>(remote)
    }))
    .await;
    let mut start_errors = 0;
    for s in starts {
        match s {
            Ok(b) => boxes.push(b),
            Err(e) => {
                eprintln!("session start failed: {e}");
                start_errors += 1;
            }
        }
    }
    let start_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let results = futures::future::join_all(boxes.iter().map(|b| async move {
        let mut latencies = Vec::with_capacity(per_session);
        let mut errors = 0usize;
        for i in 0..per_session {
            let t = Instant::now();
            match b.run(&format!("x = {i}; x * 2"), RunOptions::default()).await {
                Ok(ex) if ex.result().and_then(|r| r.plain()) == Some((i * 2).to_string()) => {
                    latencies.push(t.elapsed().as_secs_f64() * 1e3)
                }
                Ok(ex) => {
                    eprintln!("wrong result: {:?}", ex.result());
                    errors += 1;
                }
                Err(e) => {
                    eprintln!("execution failed: {e}");
                    errors += 1;
                }
            }
        }
        (latencies, errors)
    }))
    .await;
    let wall = started.elapsed().as_secs_f64();
    let errors: usize = results.iter().map(|(_, e)| e).sum();
    let latencies: Vec<f64> = results.into_iter().flat_map(|(l, _)| l).collect();
    let done = latencies.len();
    for b in &boxes {
        b.stop().await?;
    }
    Ok(json!({
        "sessions": sessions,
        "executions_per_session": per_session,
        "session_start_errors": start_errors,
        "sessions_started_in_s": round3(start_secs),
        "execution_errors": errors,
        "executions_ok": done,
        "wall_s": round3(wall),
        "executions_per_s": round3(done as f64 / wall),
        "latency": if latencies.is_empty() { Value::Null } else { percentiles(latencies) },
    }))
}

fn local_builder() -> LocalBoxBuilder {
    let mut builder = LocalBox::builder();
    if let Ok(python) = std::env::var("CODEBOX_PYTHON") {
        builder = builder.with_python(python);
    }
    builder
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            round_trips: 100,
            transfers: vec![16 * MIB],
            sessions: 4,
            executions_per_session: 10,
            wide_sessions: 8,
            wide_executions: 5,
        }
    } else {
        Plan {
            round_trips: 500,
            transfers: vec![100 * MIB, 1024 * MIB],
            sessions: 32,
            executions_per_session: 100,
            wide_sessions: 64,
            wide_executions: 20,
        }
    };

    // LocalBox direct, for reference.
    let direct = local_builder().build()?;
    direct.start().await?;
    let mut direct_transfers = serde_json::Map::new();
    for size in &plan.transfers {
        direct_transfers.insert(format!("{}_mib", size / MIB), transfer(&direct, *size).await?);
    }

    // The server, in this process, with a warm pool like `codebox serve`.
    let pool = KernelPool::new(2);
    let builder = local_builder().with_pool(pool.clone());
    pool.prewarm(&builder).await?;
    let factory = factory_fn(move |request| {
        let builder = builder.clone();
        async move {
            let builder = match request.kernel {
                Some(k) => builder.with_kernel(k),
                None => builder,
            };
            Ok(Arc::new(builder.build()?) as Arc<dyn CodeBox>)
        }
    });
    let config = ServerConfig::new()
        .with_addr("127.0.0.1:0".parse()?)
        .with_api_key(KEY)
        // No request rate: the measured loops run past `codebox serve`'s default of 50 a
        // second, and a refusal would end the run.
        .with_rate_limit(0, 0)
        .with_max_sessions(plan.sessions.max(plan.wide_sessions) + 8)
        .with_max_upload_bytes(2 << 30);
    let server = Server::bind(config, factory).await?;
    let base = format!("http://{}", server.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));

    let remote = RemoteBox::builder().with_base_url(&base).with_api_key(KEY).build()?;
    remote.start().await?;
    let (direct_samples, remote_samples) = time_runs(&direct, &remote, plan.round_trips).await?;
    direct.stop().await?;
    let direct_p50 = percentiles(direct_samples.clone())["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let remote_p50 = percentiles(remote_samples.clone())["p50_ms"].as_f64().unwrap_or(f64::NAN);

    let mut transfers = serde_json::Map::new();
    for size in &plan.transfers {
        transfers.insert(format!("{}_mib", size / MIB), transfer(&remote, *size).await?);
    }
    remote.stop().await?;

    let concurrency = concurrent(&base, plan.sessions, plan.executions_per_session).await?;
    let wide = concurrent(&base, plan.wide_sessions, plan.wide_executions).await?;

    let _ = stop_tx.send(());
    serving.await??;

    let report = json!({
        "round_trip": {
            "code": "an integer literal (e.g. `7`), one execution at a time after 20 warm-up runs, local and server alternating",
            "local_direct": percentiles(direct_samples),
            "through_server": percentiles(remote_samples),
            "p50_added_ms": round3(remote_p50 - direct_p50),
            "p50_ratio_vs_local": round3(remote_p50 / direct_p50),
        },
        "transfer": {"through_server": transfers, "local_direct": direct_transfers},
        "concurrent": concurrency,
        "concurrent_wide": wide,
    });
    // The one JSON object on stdout is this binary's result.
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    Ok(())
}
