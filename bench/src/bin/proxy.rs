//! What nginx in front of `codebox serve` costs; prints one JSON object.
//!
//! One in-process server (LocalBox sessions, node `codebox-0`) and a real nginx running the
//! shipped routing (`deploy/nginx/codebox.conf`) with that server as its only pod. One
//! session, reached by two RemoteBoxes: one straight at the server, one through nginx. Both
//! run `1 + 1` in alternating blocks, so that the kernel, the machine's load and its caches
//! are the same for both; the report gives each p50 and the difference, nginx's added
//! latency (target ≤ 0.3 ms).
//!
//! `BENCH_ROUNDS` (default 400) sets the number of timed executions per path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use codebox_bench::{env_usize, summary};
use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{LocalBox, LocalFactory};
use codebox_remote::RemoteBox;
use codebox_server::{NodeId, Server, ServerConfig};

const KEY: &str = "bench-key";
const WARMUP: usize = 30;
const BLOCKS: usize = 8;
/// The added p50 the design aims at.
const TARGET_ADDED_P50_MS: f64 = 0.3;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// nginx with the shipped routing and `backend` as the only pod, `codebox-0`.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    fn start(backend: &str) -> Result<Self> {
        let program = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("nginx is not installed (`cargo xtask ci`'s setup installs the Debian package nginx)")?;
        let dir = std::env::temp_dir().join(format!("codebox-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let routing = std::fs::read_to_string(repo_file("deploy/nginx/codebox.conf"))?
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.join("codebox.conf"), routing)?;
        let prefix = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\nhttp {{\n  \
             access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
             fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path \
             {prefix}/scgi;\n  split_clients \"$codebox_session\" $codebox_hashed_node {{ * codebox-0; }}\n  map \
             $codebox_node $codebox_backend {{ default codebox-0; }}\n  upstream codebox-0 {{ server {backend}; \
             keepalive 8; }}\n  include {prefix}/codebox.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new(program)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Self { child, dir, port };
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if up.elapsed() > Duration::from_secs(30) {
                bail!("nginx did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }
}

/// `rounds` timed executions of `1 + 1` on `b` (ms), after `warmup` untimed ones.
async fn round_trips(b: &RemoteBox, rounds: usize, warmup: usize, into: &mut Vec<f64>) -> Result<()> {
    for _ in 0..warmup {
        b.exec("1 + 1").await?;
    }
    for _ in 0..rounds {
        let start = Instant::now();
        let ex = b.exec("1 + 1").await?;
        into.push(start.elapsed().as_secs_f64() * 1e3);
        if ex.text() != "2" {
            bail!("unexpected output {:?}", ex.text());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = env_usize("BENCH_ROUNDS", 400);
    // A benchmark sends requests back to back, past a key's default rate: no limit.
    let config = ServerConfig::new()
        .with_addr("127.0.0.1:0".parse()?)
        .with_api_key(KEY)
        .with_rate_limit(0, 0)
        .with_node_id(NodeId::new("codebox-0")?);
    let factory = LocalFactory::builder(LocalBox::builder()).build()?;
    let server = Server::bind(config, Arc::new(factory)).await?;
    let direct_url = format!("http://{}", server.local_addr());
    let nginx = Nginx::start(&server.local_addr().to_string())?;
    let proxied_url = format!("http://127.0.0.1:{}", nginx.port);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    // The session is made through nginx (under an id RemoteBox chooses, which nginx hashes to
    // the only pod); the direct box attaches to it.
    let proxied = RemoteBox::builder().with_base_url(&proxied_url).with_api_key(KEY).build()?;
    proxied.start().await?;
    let direct =
        RemoteBox::builder().with_base_url(&direct_url).with_api_key(KEY).with_session_id(proxied.id()).build()?;
    direct.start().await?;
    if direct.id() != proxied.id() {
        bail!("the direct box is on session {}, not {}", direct.id(), proxied.id());
    }

    let (mut direct_ms, mut proxied_ms) = (Vec::new(), Vec::new());
    let per_block = rounds.div_ceil(BLOCKS);
    for block in 0..BLOCKS {
        let warmup = if block == 0 { WARMUP } else { 3 };
        round_trips(&direct, per_block, warmup, &mut direct_ms).await?;
        round_trips(&proxied, per_block, warmup, &mut proxied_ms).await?;
    }
    proxied.stop().await?;
    drop(nginx);
    let _ = stop.send(());
    let _ = serving.await;

    let (direct_summary, proxied_summary) = (summary(&direct_ms), summary(&proxied_ms));
    let added =
        proxied_summary["p50"].as_f64().unwrap_or(f64::NAN) - direct_summary["p50"].as_f64().unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "bench": "proxy",
        "rounds": rounds,
        "blocks": BLOCKS,
        "session": proxied.id(),
        "exec_ms": {"direct": direct_summary, "through_nginx": proxied_summary},
        "nginx_added_p50_ms": added,
        "target_nginx_added_p50_ms_max": TARGET_ADDED_P50_MS,
        "within_target": added <= TARGET_ADDED_P50_MS,
    });
    #[allow(clippy::print_stdout, reason = "the JSON report goes to stdout")]
    {
        println!("{report}");
    }
    Ok(())
}
