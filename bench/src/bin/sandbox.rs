//! Sandbox benchmark; prints one JSON object.
//!
//! In one run, with and without bubblewrap (isolation `none` against `bubblewrap`, runs
//! interleaved so that drift hits both alike):
//! - cold start to first result (`start()` + `1+1`), p50 over `BENCH_COLD_RUNS` (default 20),
//!   and the median of the paired differences (each sandboxed start minus the unsandboxed
//!   start just before it): a cold start varies by tens of milliseconds from one to the
//!   next, and pairing cancels the drift that the difference of two medians keeps;
//! - warm `1+1` round trips on two live boxes, alternating, p50/p90/p99 over
//!   `BENCH_WARM_RUNS` (default 500) each;
//! - the raw cost of the sandbox itself: spawning `true` directly and under the same bwrap
//!   command line, p50 over 50 runs;
//! - the overheads against the targets (warm p50 at most +5 %, cold start at most +15 ms).
//!
//! Both sides execute their kernel (`with_fork_server(false)`), so the difference is what
//! bubblewrap costs; the cold start of a bubblewrap box whose lean kernel is forked from the
//! fork server (the default there) is measured beside them, interleaved too.
#![allow(clippy::print_stdout, reason = "a benchmark prints its JSON report on stdout")]

use std::time::Instant;

use anyhow::{Result, bail};
use codebox_core::{CodeBox, CodeBoxExt};
use codebox_local::{Isolation, LocalBox, SandboxPolicy};
use serde_json::json;

use codebox_bench::{env_usize, ms, pct, summary};

fn boxed(isolation: Isolation, fork: bool) -> Result<LocalBox> {
    let policy =
        SandboxPolicy::default().with_isolation(isolation).with_require_isolation(isolation != Isolation::None);
    Ok(LocalBox::builder().with_sandbox(policy).with_fork_server(fork).build()?)
}

async fn cold_once(isolation: Isolation, fork: bool) -> Result<f64> {
    let t0 = Instant::now();
    let lb = boxed(isolation, fork)?;
    lb.start().await?;
    let ex = lb.exec("1+1").await?;
    let elapsed = ms(t0.elapsed());
    if ex.text() != "2" {
        bail!("cold start ({isolation:?}): 1+1 gave {:?}", ex.text());
    }
    let want = if isolation == Isolation::None { "none" } else { "bubblewrap" };
    let got = lb.status().await?.isolation;
    if got.as_deref() != Some(want) {
        bail!("asked for {want}, the box reports {got:?}");
    }
    lb.stop().await?;
    Ok(elapsed)
}

/// Warm `1+1` round trips on two live boxes, one without and one with the sandbox,
/// alternating so that load on the machine hits both alike.
async fn warm(runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let plain = boxed(Isolation::None, false)?;
    let sandboxed = boxed(Isolation::Bubblewrap, false)?;
    plain.start().await?;
    sandboxed.start().await?;
    for _ in 0..50 {
        plain.exec("1+1").await?;
        sandboxed.exec("1+1").await?;
    }
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        for (lb, samples) in [(&plain, &mut a), (&sandboxed, &mut b)] {
            let t0 = Instant::now();
            let ex = lb.exec("1+1").await?;
            samples.push(ms(t0.elapsed()));
            if ex.text() != "2" {
                bail!("warm: 1+1 gave {:?}", ex.text());
            }
        }
    }
    plain.stop().await?;
    sandboxed.stop().await?;
    Ok((a, b))
}

/// Spawning `true` directly and through bwrap with the kernel's sandbox options.
fn raw_spawn(runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let Some(mut bwrap_true) = codebox_sandbox::bare_bubblewrap(&["true"]) else {
        bail!("bubblewrap does not work here: {:?}", codebox_local::probe().bubblewrap);
    };
    let (mut direct, mut sandboxed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        std::process::Command::new("true").status()?;
        direct.push(ms(t0.elapsed()));
        let t0 = Instant::now();
        let st = bwrap_true.status()?;
        sandboxed.push(ms(t0.elapsed()));
        if !st.success() {
            bail!("bwrap true failed: {st}");
        }
    }
    Ok((direct, sandboxed))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cold_runs = env_usize("BENCH_COLD_RUNS", 20);
    let warm_runs = env_usize("BENCH_WARM_RUNS", 500);
    // The managed environment is provisioned (untimed) by a first start.
    cold_once(Isolation::None, false).await?;
    cold_once(Isolation::Bubblewrap, false).await?;
    cold_once(Isolation::Bubblewrap, true).await?;
    let (mut cold_none, mut cold_bwrap, mut cold_forked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cold_runs {
        cold_none.push(cold_once(Isolation::None, false).await?);
        cold_bwrap.push(cold_once(Isolation::Bubblewrap, false).await?);
        cold_forked.push(cold_once(Isolation::Bubblewrap, true).await?);
    }
    let (warm_none, warm_bwrap) = warm(warm_runs).await?;
    let (spawn_direct, spawn_bwrap) = raw_spawn(50)?;
    let warm_ratio = pct(&warm_bwrap, 0.5) / pct(&warm_none, 0.5);
    let cold_delta = pct(&cold_bwrap, 0.5) - pct(&cold_none, 0.5);
    let paired: Vec<f64> = cold_bwrap.iter().zip(&cold_none).map(|(b, n)| b - n).collect();
    let paired_delta = pct(&paired, 0.5);
    let spawn_delta = pct(&spawn_bwrap, 0.5) - pct(&spawn_direct, 0.5);
    let report = json!({
        "bench": "sandbox",
        "cold_start_ms": {
            "none": summary(&cold_none),
            "bubblewrap": summary(&cold_bwrap),
            "bubblewrap_forked_from_the_fork_server": summary(&cold_forked),
        },
        "warm_exec_ms": {"none": summary(&warm_none), "bubblewrap": summary(&warm_bwrap)},
        "spawn_true_ms": {"direct": summary(&spawn_direct), "bubblewrap": summary(&spawn_bwrap)},
        "overhead": {
            "warm_p50_ratio": warm_ratio,
            "cold_start_p50_delta_ms": cold_delta,
            "cold_start_paired_delta_p50_ms": paired_delta,
            "spawn_p50_delta_ms": spawn_delta,
            "cold_start_p50_forked_over_executed_bubblewrap": pct(&cold_forked, 0.5) / pct(&cold_bwrap, 0.5),
        },
        "targets": {
            "warm_p50_ratio_max": 1.05,
            "cold_start_delta_ms_max": 15.0,
            "warm_met": warm_ratio <= 1.05,
            "cold_met": paired_delta <= 15.0,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
