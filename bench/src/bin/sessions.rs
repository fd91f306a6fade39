//! Session creation through the CodeBox server on loopback, per template: from a warm pool
//! (p50; target ≤ 15 ms), and the first session of a template whose environment is already
//! built (a cold kernel, p50), with a cold JavaScript session against a cold Python one
//! (ratio; target ≤ 1.5) and jupyter_client's cold kernel start as the reference, measured
//! in the same run. Prints one JSON object.
//!
//! The templates measured are [`TEMPLATES`]; one the server cannot make (not in its factory's
//! catalogue, or its kernel is not available here) is reported as `{"skipped": "reason"}`
//! rather than failing the run. A session is created with `POST /v1/sessions` naming its
//! template and timed until the server's 201; it is deleted before the next. Options:
//! `--quick` (fewer sessions, for a smoke run); `BENCH_SESSIONS`, `BENCH_COLD_RUNS` and
//! `BENCH_POOL_SIZE` override the counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use codebox_bench::{InProcessServer, env_usize, jupyter_client_reference, local_builder, ms, ratio, summary};
use codebox_core::{ApiKey, BoxFactory, CodeBox};
use codebox_http::client::{ClientConfig, HttpClient, Request, RetryPolicy};
use codebox_local::LocalFactory;
use codebox_server::ServerConfig;
use http::Method;
use serde_json::{Value, json};

const KEY: &str = "bench-key";

/// The templates the server pools and this bench measures, by name; adding one is a line.
const TEMPLATES: &[&str] = &["python", "javascript"];

/// The template the others' cold start is compared with.
const BASELINE: &str = "python";

/// How long the pool may take to have a ready kernel again before a pooled creation is timed.
const POOL_REFILL_WAIT: Duration = Duration::from_secs(60);

/// A server in this process on 127.0.0.1:0 in front of `factory`; stops when dropped.
async fn serve(factory: Arc<LocalFactory>) -> Result<InProcessServer> {
    // No request rate here: a creation refused for the key's rate would time the wait.
    InProcessServer::start(ServerConfig::new().with_api_key(KEY).with_rate_limit(0, 0), factory).await
}

/// Creates and deletes sessions of one server.
struct Sessions {
    http: HttpClient,
    base: String,
    key: ApiKey,
}

impl Sessions {
    fn new(base: &str) -> Result<Self> {
        // A refusal is a result to report, not to wait out.
        let http = HttpClient::new(ClientConfig::new().with_retry(RetryPolicy::none()))?;
        Ok(Self { http, base: base.to_owned(), key: ApiKey::new(KEY) })
    }

    /// Create a session of `template`: the time until the server answered 201, and its id.
    async fn create(&self, template: &str) -> Result<(Duration, String)> {
        let req = Request::new(Method::POST, &format!("{}/v1/sessions", self.base))?
            .bearer(&self.key)?
            .json(&json!({ "template": template }))?;
        let started = Instant::now();
        let resp = self.http.send(req).await?;
        let took = started.elapsed();
        let info: Value = resp.json().await?;
        let id = info["id"].as_str().context("the new session has no id")?.to_owned();
        Ok((took, id))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let req = Request::new(Method::DELETE, &format!("{}/v1/sessions/{id}", self.base))?.bearer(&self.key)?;
        self.http.send(req).await?.discard().await?;
        Ok(())
    }

    /// `runs` sessions of `template`, one at a time, each deleted before the next; before
    /// each, `ready` is awaited. The creation times in milliseconds.
    async fn time_creations<F, Fut>(&self, template: &str, runs: usize, ready: F) -> Result<Vec<f64>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            ready().await?;
            let (took, id) = self.create(template).await?;
            samples.push(ms(took));
            self.delete(&id).await?;
        }
        Ok(samples)
    }
}

/// Why the server cannot make sessions of `template`, if it cannot: a factory with a
/// catalogue must list it; one without makes only its default box, which runs Python.
fn unavailable(factory: &dyn BoxFactory, template: &str) -> Option<String> {
    let catalogue = factory.templates();
    if catalogue.is_empty() {
        return (template != BASELINE).then(|| {
            format!(
                "this build's factory has no template catalogue: it makes only its default (Python) box, and no \
                 {template} kernel is available"
            )
        });
    }
    (!catalogue.iter().any(|t| t.name == template)).then(|| {
        let names: Vec<&str> = catalogue.iter().map(|t| t.name.as_str()).collect();
        format!("the server has no template {template} (it has {})", names.join(", "))
    })
}

/// Wait until the factory's pool has a ready kernel for `template`: its `pool_stats` when it
/// reports them, else the one pool of a factory without a catalogue.
async fn pool_ready(factory: &LocalFactory, template: &str) -> Result<()> {
    let deadline = Instant::now() + POOL_REFILL_WAIT;
    loop {
        let stats = factory.pool_stats();
        let ready = match stats.iter().find(|s| s.template == template) {
            Some(pool) => pool.ready > 0,
            None if stats.is_empty() => factory.pool().is_some_and(|p| p.ready() > 0),
            None => bail!("the server keeps no pool for template {template}"),
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the pool for {template} had no ready kernel after {POOL_REFILL_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The measurement of one template: `measure`'s summary, or `{"skipped": reason}`.
// A template that cannot be measured is reported on stderr as well as in the result.
#[allow(clippy::print_stderr)]
async fn or_skipped(
    factory: &dyn BoxFactory,
    template: &str,
    measure: impl std::future::Future<Output = Result<Vec<f64>>>,
) -> Value {
    if let Some(reason) = unavailable(factory, template) {
        return json!({ "skipped": reason });
    }
    match measure.await {
        Ok(samples) => summary(&samples),
        Err(e) => {
            eprintln!("{template}: {e:#}");
            json!({ "skipped": format!("creating a {template} session failed: {e:#}") })
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sessions = env_usize("BENCH_SESSIONS", if quick { 5 } else { 30 });
    let cold_runs = env_usize("BENCH_COLD_RUNS", if quick { 3 } else { 10 });
    let pool_size = env_usize("BENCH_POOL_SIZE", 2);

    // Build (provision) the environment before anything is timed: every session below is of
    // a template whose environment is already built.
    let probe = local_builder().build()?;
    probe.start().await?;
    let python = probe.python().await.context("the box's Python")?;
    probe.stop().await?;

    // Pooled: a server whose factory keeps `pool_size` ready kernels per pooled template.
    let pooled_factory = Arc::new(
        TEMPLATES
            .iter()
            .fold(LocalFactory::builder(local_builder()), |factory, template| factory.with_pool(*template, pool_size))
            .build()?,
    );
    pooled_factory.prewarm_in_background();
    let pooled_server = serve(Arc::clone(&pooled_factory)).await?;
    let pooled_sessions = Sessions::new(&pooled_server.base)?;
    let mut pooled = serde_json::Map::new();
    for &template in TEMPLATES {
        let factory = Arc::clone(&pooled_factory);
        let measure = async {
            // A few sessions first, so that the pool has been asked for this template.
            pooled_sessions.time_creations(template, 2, || pool_ready(&factory, template)).await?;
            pooled_sessions.time_creations(template, sessions, || pool_ready(&factory, template)).await
        };
        pooled.insert(template.to_owned(), or_skipped(pooled_factory.as_ref(), template, measure).await);
    }
    let pool_stats = serde_json::to_value(pooled_factory.pool_stats())?;
    drop(pooled_server);

    // Cold: no pool, so each session starts its kernel; the environment is built already.
    let cold_factory = Arc::new(LocalFactory::builder(local_builder()).build()?);
    let cold_server = serve(Arc::clone(&cold_factory)).await?;
    let cold_sessions = Sessions::new(&cold_server.base)?;
    let mut cold = serde_json::Map::new();
    for &template in TEMPLATES {
        let measure = cold_sessions.time_creations(template, cold_runs, || async { Ok(()) });
        cold.insert(template.to_owned(), or_skipped(cold_factory.as_ref(), template, measure).await);
    }
    drop(cold_server);

    let reference = jupyter_client_reference(&python, cold_runs, 1, 1, 1)?;
    let reference_cold = &reference["cold_start_ms"]["p50"];
    let baseline_cold = &cold[BASELINE]["p50"];
    let mut ratios = serde_json::Map::new();
    for &template in TEMPLATES {
        let name = |what: &str| format!("{template}_{what}");
        ratios.insert(
            name("pooled_create_p50_over_reference_cold_start"),
            ratio(&pooled[template]["p50"], reference_cold),
        );
        ratios
            .insert(name("first_session_p50_over_reference_cold_start"), ratio(&cold[template]["p50"], reference_cold));
        if template != BASELINE {
            let compared = match cold[template].get("skipped") {
                Some(reason) => json!({ "skipped": reason }),
                None => ratio(&cold[template]["p50"], baseline_cold),
            };
            ratios.insert(format!("cold_{template}_over_cold_{BASELINE}_p50"), compared);
        }
    }

    let out = json!({
        "bench": "sessions",
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "python": python,
        "what": "POST /v1/sessions {\"template\": NAME} through the server on loopback until its 201, one at a time, each session deleted before the next",
        "templates": TEMPLATES,
        "pool_size": pool_size,
        "pooled_create_ms": pooled,
        "pool_stats": pool_stats,
        "first_session_built_environment_ms": cold,
        "jupyter_client_reference": reference,
        "ratios": ratios,
        "targets": {
            "pooled_create_p50_ms_max": 15.0,
            "cold_javascript_over_cold_python_ratio_max": 1.5,
        },
    });
    // The one JSON object on stdout is this binary's result.
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    Ok(())
}
