//! Measurements for `cargo xtask bench ratelimit`; each mode prints
//! `key=value` lines for xtask to read.
//!
//! - `memory`: nanoseconds per in-memory decision (the backend alone, and the
//!   whole `Limiter::check` with policy lookup) next to `governor`'s keyed
//!   limiter, on the same keys in the same process.
//! - `check --addr A --certs DIR`: Check RPCs per second over mTLS.
//! - `redis --url U`: decisions per second through `Limiter::check` on a
//!   Redis policy, and the exact script call, for `redis-benchmark` to replay.

mod common;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::FutureExt;
use ratelimit::{
    Algorithm, Backend, Descriptor, FailureMode, Limit, Limiter, LimiterConfig, Owner, Policy,
    PolicySet, RedisConfig, RedisItem,
};
use server::proto::ratelimit::v1::rate_limit_client::RateLimitClient;
use server::proto::ratelimit::v1::{CheckRequest, check_request};

#[derive(Debug, clap::Parser)]
struct Args {
    /// Modes: memory | check | redis.
    mode: String,
    #[arg(long, default_value = "")]
    addr: String,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long, default_value = "")]
    url: String,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

/// Keys cycled through by the in-memory measurements: enough to defeat a
/// one-entry cache, few enough to stay in L2 like a hot working set.
const KEYS: usize = 4096;
/// Never reached in the measurement, so every decision admits.
const GENEROUS: u32 = 1_000_000_000;

fn per_decision_ns(seconds: f64, mut decide: impl FnMut(&String) -> bool, keys: &[String]) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut done = 0u64;
    while Instant::now() < deadline {
        // Batches keep the clock read out of the measured loop.
        for key in keys {
            black_box(decide(key));
        }
        done += keys.len() as u64;
    }
    start.elapsed().as_nanos() as f64 / done as f64
}

fn memory(args: &Args) -> Result<()> {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user-{i}")).collect();
    let limit = Limit::new(
        Algorithm::Gcra,
        u64::from(GENEROUS),
        Duration::from_secs(1),
        0,
    )?;
    let mut policies = PolicySet::default();
    policies.insert(Policy::new(
        "bench",
        limit,
        Backend::Memory,
        FailureMode::FailClosed,
    ));
    let limiter = Limiter::new(policies, LimiterConfig::default())?;
    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(GENEROUS).context("quota")?,
    ));
    let half = args.seconds / 2.0;
    // Warm both maps with every key before measuring.
    for key in &keys {
        limiter
            .memory()
            .check(Owner::Server, "bench", key, &limit, 1)?;
        let _ = governor.check_key(key);
    }
    let backend = per_decision_ns(
        half,
        |key| {
            limiter
                .memory()
                .check(Owner::Server, "bench", key, &limit, 1)
                .is_ok_and(|d| d.allowed)
        },
        &keys,
    );
    let governor_ns = per_decision_ns(half, |key| governor.check_key(key).is_ok(), &keys);
    let whole = per_decision_ns(
        half,
        |key| {
            limiter
                .check(&Descriptor::policy(key, 1, "bench"))
                .now_or_never()
                .is_some_and(|d| d.is_ok_and(|d| d.allowed))
        },
        &keys,
    );
    println!("backend_ns={backend:.1}");
    println!("limiter_ns={whole:.1}");
    println!("governor_ns={governor_ns:.1}");
    Ok(())
}

async fn check(args: &Args) -> Result<()> {
    let endpoint = common::mtls_endpoint(
        &args.addr,
        args.certs.as_deref().context("--certs is required")?,
        "admin",
    )?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(endpoint.connect().await?);
    }
    let workers = (0..args.concurrency)
        .map(|i| {
            let client = RateLimitClient::new(channels[i % channels.len()].clone());
            (client, format!("bench-{i}"))
        })
        .collect();
    let rate = common::closed_loop(args.seconds, workers, |(client, key)| {
        Box::pin(async move {
            let d = client
                .check(CheckRequest {
                    key: key.clone(),
                    cost: 1,
                    limit: Some(check_request::Limit::Policy("bench".to_owned())),
                })
                .await?
                .into_inner()
                .decision
                .context("no decision")?;
            anyhow::ensure!(d.allowed, "the bench policy denied a check");
            Ok(())
        })
    })
    .await?;
    println!("rate={rate:.1}");
    Ok(())
}

async fn redis(args: &Args) -> Result<()> {
    let limit = Limit::new(
        Algorithm::Gcra,
        u64::from(GENEROUS),
        Duration::from_secs(1),
        0,
    )?;
    let mut policies = PolicySet::default();
    policies.insert(Policy::new(
        "bench",
        limit,
        Backend::Redis,
        FailureMode::FailClosed,
    ));
    let limiter = Arc::new(Limiter::new(
        policies,
        LimiterConfig {
            redis: Some(RedisConfig {
                url: args.url.clone(),
                timeout: Duration::from_secs(1),
                ..RedisConfig::default()
            }),
            ..LimiterConfig::default()
        },
    )?);
    // The first call loads the script (NOSCRIPT, then EVAL) and connects.
    limiter
        .check(&Descriptor::policy("bench-key", 1, "bench"))
        .await?;
    let workers = (0..args.concurrency).map(|_| limiter.clone()).collect();
    let rate = common::closed_loop(args.seconds, workers, |limiter| {
        Box::pin(async move {
            let d = limiter
                .check(&Descriptor::policy("bench-key", 1, "bench"))
                .await?;
            // A denial here means Redis gave no answer (fail_closed), which would
            // flatter the rate: refuse to report it.
            anyhow::ensure!(d.allowed, "a decision failed: Redis gave no answer");
            Ok(())
        })
    })
    .await?;
    let redis = limiter.redis().context("redis backend")?;
    let call = redis.script_call(&[RedisItem {
        owner: Owner::Identity(""),
        namespace: "bench",
        key: "bench-key",
        limit: &limit,
        cost: 1,
    }]);
    println!("rate={rate:.1}");
    println!("sha={}", ratelimit::decide_script_sha());
    println!("keys={}", call.keys.join(" "));
    println!("args={}", call.args.join(" "));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    match args.mode.as_str() {
        "memory" => memory(&args),
        "check" => check(&args).await,
        "redis" => redis(&args).await,
        other => bail!("unknown mode {other}"),
    }
}
