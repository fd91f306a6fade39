//! Bursts and density of the default template through the CodeBox server on loopback:
//!
//! - **burst**: 16 (and 64) sessions requested at once, each answering one `1 + 1` cell; the
//!   time until every one has answered (target for 16: ≤ 1.5 s on a 2-core machine), with the
//!   slowest session's own creation and cell times;
//! - **cold first session**: a server with no pool, its environment already built: the first
//!   session's creation plus its first `1 + 1` cell (target ≤ 300 ms), beside jupyter_client's
//!   cold kernel start in the same run;
//! - **idle density**: the proportional set size (PSS, `/proc/<pid>/smaps_rollup`, so pages
//!   shared between kernels are split among them) of every process the idle sessions added,
//!   per session (target ≤ 15 MiB), with RSS per session beside it; the fork server's own
//!   share is counted, since it is a descendant too.
//!
//! Cold first session and idle density are measured twice: with lean kernels forked from the
//! fork server (the default) and with each kernel a Python of its own (`--no-fork-server`).
//!
//! The server runs in this process with the `codebox serve` defaults for the pool (2 kernels)
//! and the factory built as `codebox serve` builds it, without session uids (this binary may
//! not run as root). Options: `--quick` (a burst of 16 only, fewer cold runs);
//! `BENCH_BURSTS` (comma-separated sizes), `BENCH_COLD_RUNS`, `BENCH_IDLE_SESSIONS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use codebox_bench::{InProcessServer, env_usize, jupyter_client_reference, local_builder, ms, ratio, summary};
use codebox_core::{ApiKey, CodeBox};
use codebox_http::client::{ClientConfig, HttpClient, Request, RetryPolicy};
use codebox_local::LocalFactory;
use codebox_server::ServerConfig;
use http::Method;
use serde_json::{Value, json};

const KEY: &str = "bench-key";

/// `codebox serve`'s default pool size.
const DEFAULT_POOL: usize = 2;

/// A server in this process on 127.0.0.1:0; stops when dropped.
async fn serve(factory: Arc<LocalFactory>, max_sessions: usize) -> Result<InProcessServer> {
    // No request rate and room for the largest burst: a refusal would time the wait.
    let config = ServerConfig::new().with_api_key(KEY).with_rate_limit(0, 0).with_max_sessions(max_sessions);
    InProcessServer::start(config, factory).await
}

/// Sessions of one server, through its native API.
#[derive(Clone)]
struct Client {
    http: HttpClient,
    base: String,
    key: ApiKey,
}

/// One session's timings: creation (until the 201) and its first `1 + 1` cell.
struct Answered {
    id: String,
    create: Duration,
    cell: Duration,
}

impl Client {
    fn new(base: &str) -> Result<Self> {
        let http = HttpClient::new(ClientConfig::new().with_retry(RetryPolicy::none()))?;
        Ok(Self { http, base: base.to_owned(), key: ApiKey::new(KEY) })
    }

    /// Create a session and run `1 + 1` in it; checks the answer.
    async fn session_with_one_cell(&self) -> Result<Answered> {
        let started = Instant::now();
        let req =
            Request::new(Method::POST, &format!("{}/v1/sessions", self.base))?.bearer(&self.key)?.json(&json!({}))?;
        let info: Value = self.http.send(req).await?.json().await?;
        let create = started.elapsed();
        let id = info["id"].as_str().with_context(|| format!("no session id in {info}"))?.to_owned();
        let started = Instant::now();
        let req = Request::new(Method::POST, &format!("{}/v1/sessions/{id}/execute", self.base))?
            .bearer(&self.key)?
            .json(&json!({ "code": "1 + 1" }))?;
        let body = self.http.send(req).await?.bytes_limited(1 << 20).await?;
        let text = String::from_utf8_lossy(&body);
        let cell = started.elapsed();
        if !text.contains("\"2\"") {
            bail!("session {id} answered `1 + 1` with {text}");
        }
        Ok(Answered { id, create, cell })
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let req = Request::new(Method::DELETE, &format!("{}/v1/sessions/{id}", self.base))?.bearer(&self.key)?;
        self.http.send(req).await?.discard().await?;
        Ok(())
    }
}

/// `n` sessions requested at once, each answering one cell: the wall time until all had
/// answered, and the slowest session's creation and cell. The sessions are deleted after.
async fn burst(client: &Client, n: usize) -> Result<Value> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.session_with_one_cell().await })
        })
        .collect();
    let mut answered = Vec::with_capacity(n);
    for task in tasks {
        answered.push(task.await??);
    }
    let all = started.elapsed();
    let creates: Vec<f64> = answered.iter().map(|a| ms(a.create)).collect();
    let cells: Vec<f64> = answered.iter().map(|a| ms(a.cell)).collect();
    for a in &answered {
        client.delete(&a.id).await?;
    }
    Ok(json!({
        "sessions": n,
        "all_answered_ms": ms(all),
        "create_ms": summary(&creates),
        "first_cell_ms": summary(&cells),
    }))
}

/// PSS and RSS (KiB) of every process that descends from this one.
fn descendants_memory() -> (u64, u64) {
    let me = std::process::id();
    let mut parent_of = std::collections::HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return (0, 0) };
    let pids: Vec<u32> = rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for &pid in &pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent is the second field after the parenthesised command name.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parent_of.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| {
        while let Some(&parent) = parent_of.get(&pid) {
            if parent == me {
                return true;
            }
            if parent <= 1 {
                return false;
            }
            pid = parent;
        }
        false
    };
    let (mut pss, mut rss) = (0, 0);
    for &pid in pids.iter().filter(|&&p| p != me && descends(p)) {
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
        let field = |name: &str| {
            rollup
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        pss += field("Pss:");
        rss += field("Rss:");
    }
    (pss, rss)
}

/// `n` idle sessions (one cell each, then left alone): what they added in PSS and RSS, per
/// session, in MiB. Measured on a server with no pool, so only the sessions' processes count.
async fn idle_density(client: &Client, n: usize) -> Result<Value> {
    let (pss_before, rss_before) = descendants_memory();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(client.session_with_one_cell().await?.id);
    }
    // Let the kernels settle (lazy imports, garbage collection) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pss_after, rss_after) = descendants_memory();
    for id in &ids {
        client.delete(id).await?;
    }
    let per =
        |before: u64, after: u64| (after.saturating_sub(before) as f64 / 1024.0 / n as f64 * 100.0).round() / 100.0;
    Ok(json!({
        "sessions": n,
        "pss_mib_per_session": per(pss_before, pss_after),
        "rss_mib_per_session": per(rss_before, rss_after),
        "sessions_per_gib_by_pss": ratio(&json!(1024.0), &json!(per(pss_before, pss_after))),
    }))
}

/// On a server of `boxes` with no pool (room for `max_sessions`): the cold first session's
/// times (`runs` of them, each session deleted after) and the PSS of `idle` idle sessions.
async fn cold_and_idle(
    boxes: codebox_local::LocalBoxBuilder,
    max_sessions: usize,
    runs: usize,
    idle: usize,
) -> Result<(Value, Value)> {
    let factory = Arc::new(LocalFactory::builder(boxes).with_pool_size(0).build()?);
    let server = serve(factory, max_sessions).await?;
    let client = Client::new(&server.base)?;
    let mut cold = Vec::with_capacity(runs);
    for _ in 0..runs {
        let a = client.session_with_one_cell().await?;
        cold.push(ms(a.create + a.cell));
        client.delete(&a.id).await?;
    }
    let density = idle_density(&client, idle).await?;
    Ok((summary(&cold), density))
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let bursts: Vec<usize> = std::env::var("BENCH_BURSTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| if quick { vec![16] } else { vec![16, 64] });
    let cold_runs = env_usize("BENCH_COLD_RUNS", if quick { 3 } else { 8 });
    let idle_sessions = env_usize("BENCH_IDLE_SESSIONS", if quick { 4 } else { 8 });
    let largest = bursts.iter().copied().max().unwrap_or(16).max(idle_sessions);

    // Build (provision) the environment before anything is timed.
    let probe = local_builder().build()?;
    probe.start().await?;
    let python = probe.python().await.context("the box's Python")?;
    probe.stop().await?;

    // Bursts: `codebox serve`'s default pool, warm before each burst.
    let factory = Arc::new(LocalFactory::builder(local_builder()).with_pool_size(DEFAULT_POOL).build()?);
    factory.prewarm_in_background();
    let server = serve(Arc::clone(&factory), largest + DEFAULT_POOL).await?;
    let client = Client::new(&server.base)?;
    let mut burst_results = serde_json::Map::new();
    for &n in &bursts {
        let deadline = Instant::now() + Duration::from_secs(60);
        while factory.pool().is_some_and(|p| p.ready() < DEFAULT_POOL) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        burst_results.insert(n.to_string(), burst(&client, n).await?);
    }
    drop(server);

    // Cold first session and idle density: no pool; then the same with every kernel started
    // as a Python of its own (`--no-fork-server`), the reference for what forking saves.
    let (cold, density) = cold_and_idle(local_builder(), largest, cold_runs, idle_sessions).await?;
    let (executed_cold, executed_density) =
        cold_and_idle(local_builder().with_fork_server(false), largest, cold_runs, idle_sessions).await?;

    let reference = jupyter_client_reference(&python, cold_runs, 1, 1, 1)?;
    let ratios = json!({
        "cold_first_session_p50_over_reference_cold_start": ratio(&cold["p50"], &reference["cold_start_ms"]["p50"]),
        "cold_first_session_p50_forked_over_executed": ratio(&cold["p50"], &executed_cold["p50"]),
        "idle_pss_forked_over_executed": ratio(&density["pss_mib_per_session"], &executed_density["pss_mib_per_session"]),
        "burst_16_all_answered_over_target": ratio(&burst_results.get("16").map_or(Value::Null, |b| b["all_answered_ms"].clone()), &json!(1500.0)),
    });
    let out = json!({
        "bench": "burst",
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "python": python,
        "what": "default template through the server on loopback: N sessions at once each answering `1 + 1`; a cold first session (create + first cell, no pool); PSS of idle sessions",
        "pool_size": DEFAULT_POOL,
        "burst": burst_results,
        "cold_first_session_ms": cold,
        "idle": density,
        "executed_kernels": {
            "what": "the same server with --no-fork-server: every kernel a Python of its own",
            "cold_first_session_ms": executed_cold,
            "idle": executed_density,
        },
        "jupyter_client_reference": reference,
        "ratios": ratios,
        "targets": {
            "burst_16_all_answered_ms_max": 1500.0,
            "cold_first_session_ms_max": 300.0,
            "idle_pss_mib_per_session_max": 15.0,
        },
    });
    // The one JSON object on stdout is this binary's result.
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    Ok(())
}
