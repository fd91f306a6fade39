//! E2B benchmark; prints one JSON object.
//!
//! p50 round trip of `1 + 1`, three ways, side by side:
//! - E2B's SDK (`e2b-code-interpreter`, `Sandbox.run_code`) against an in-process `codebox
//!   serve` (LocalBox sessions), run as a subprocess (`bench/reference/e2b_ref.py`, from the
//!   venv in `target/e2b-venv`);
//! - our native API on the same server (RemoteBox `exec`);
//! - the codebox-api 0.2 Python client against its own server, the nearest equivalent a
//!   codebox-api user had (`bench/reference/codeboxapi_v2_ref.py`, as the `remote` bench).
//!
//! The target: the SDK through the server no slower than the native API plus 0.5 ms.
//! `BENCH_ROUNDS` (default 200) sets the number of timed executions per setup.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use codebox_bench::reference::{PythonServer, e2b_python, e2b_round_trips};
use codebox_core::{CodeBox, CodeBoxExt, CodeBoxSettings};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::RemoteBox;
use codebox_server::{Server, ServerConfig};

const KEY: &str = "bench-key";
const WARMUP: usize = 20;
const BLOCKS: usize = 5;
/// How much slower than the native API the SDK may be, in milliseconds.
const TARGET_OVERHEAD_MS: f64 = 0.5;

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// `rounds` timed executions of `1 + 1` on `remote` (ms), after `warmup` untimed ones.
async fn native_round_trips(remote: &RemoteBox, rounds: usize, warmup: usize) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        remote.exec("1 + 1").await?;
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let ex = remote.exec("1 + 1").await?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        if ex.text() != "2" {
            bail!("unexpected output {:?}", ex.text());
        }
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = codebox_bench::env_usize("BENCH_ROUNDS", 200);

    // No request rate: the SDK's rounds come faster than a tenant's default allowance.
    let config = ServerConfig::new().with_addr("127.0.0.1:0".parse()?).with_api_key(KEY).with_rate_limit(0, 0);
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
    let e2b = Arc::new(tokio::task::spawn_blocking(e2b_python).await??);
    let python = Arc::new(tokio::task::spawn_blocking(PythonServer::start).await??);

    // Blocks of each setup in turn, so that a change of machine load hits all three alike.
    let (mut e2b_ms, mut native_ms, mut python_ms) = (Vec::new(), Vec::new(), Vec::new());
    for block in 0..BLOCKS {
        let warmup = if block == 0 { WARMUP } else { 2 };
        let per_block = rounds.div_ceil(BLOCKS);
        native_ms.extend(native_round_trips(&remote, per_block, warmup).await?);
        let (sdk, url) = (Arc::clone(&e2b), base.clone());
        // Every block makes its sandbox: a few more untimed rounds warm its kernel.
        let sdk_warmup = warmup.max(5);
        e2b_ms.extend(
            tokio::task::spawn_blocking(move || e2b_round_trips(&sdk, &url, KEY, per_block, sdk_warmup)).await??,
        );
        let py = Arc::clone(&python);
        python_ms.extend(tokio::task::spawn_blocking(move || py.round_trips(per_block, warmup)).await??);
    }
    let (e2b_p50, native_p50, python_p50) = (p50(e2b_ms), p50(native_ms), p50(python_ms));
    drop(python);
    remote.stop().await?;
    let _ = stop.send(());
    let _ = serving.await;

    let report = serde_json::json!({
        "bench": "e2b",
        "rounds": rounds,
        "blocks": BLOCKS,
        "run_code_1_plus_1_p50_ms": {
            "e2b_sdk_codebox_serve": e2b_p50,
            "native_api_codebox_serve": native_p50,
            "python_codeboxapi_0_2": python_p50,
        },
        "ratio_e2b_sdk_to_native_api": e2b_p50 / native_p50,
        "ratio_e2b_sdk_to_python_codeboxapi_0_2": e2b_p50 / python_p50,
        "overhead_e2b_sdk_over_native_api_ms": e2b_p50 - native_p50,
        "target_overhead_e2b_sdk_over_native_api_ms_max": TARGET_OVERHEAD_MS,
    });
    #[allow(clippy::print_stdout, reason = "the JSON report goes to stdout")]
    {
        println!("{report}");
    }
    Ok(())
}
