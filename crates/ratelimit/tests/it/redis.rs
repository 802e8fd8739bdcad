//! The Redis backend against a real `redis-server` started by each test.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use ratelimit::{
    Algorithm, Backend, CapacityError, CheckError, Descriptor, FailureMode, Limit, Limiter,
    LimiterConfig, Owner, Policy, PolicySet, RedisConfig,
};

const ALL: [Algorithm; 5] = [
    Algorithm::SlidingWindowLog,
    Algorithm::SlidingWindowCounter,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
    Algorithm::FixedWindow,
];

/// A private `redis-server` on a free port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--loglevel", "warning"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it with: apt-get install redis-server"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped server must be continued to die promptly on some kernels.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_policy(name: &str, limit: Limit, mode: FailureMode) -> Policy {
    Policy::new(name, limit, Backend::Redis, mode)
}

fn limiter(url: &str, timeout: Duration, policies: &[Policy]) -> Limiter {
    limiter_with(
        RedisConfig {
            url: url.to_owned(),
            timeout,
            ..RedisConfig::default()
        },
        policies,
    )
}

fn limiter_with(redis: RedisConfig, policies: &[Policy]) -> Limiter {
    let mut set = PolicySet::default();
    for p in policies {
        set.insert(p.clone());
    }
    Limiter::new(
        set,
        LimiterConfig {
            redis: Some(redis),
            ..LimiterConfig::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sharing_redis_admit_exactly_the_limit() {
    let server = RedisServer::start();
    let policies: Vec<Policy> = ALL
        .iter()
        .map(|&a| {
            let limit = Limit::new(a, 50, Duration::from_secs(3600), 0).unwrap();
            redis_policy(a.code(), limit, FailureMode::FailClosed)
        })
        .collect();
    // A generous timeout: this test is about exactness, not about outages.
    let servers = [
        Arc::new(limiter(&server.url(), Duration::from_secs(2), &policies)),
        Arc::new(limiter(&server.url(), Duration::from_secs(2), &policies)),
    ];
    for algorithm in ALL {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let limiter = Arc::clone(&servers[i % 2]);
                tokio::spawn(async move {
                    let mut admitted = 0u64;
                    for _ in 0..3 {
                        let d = Descriptor::policy("alice:shared", 1, algorithm.code());
                        admitted += u64::from(limiter.check(&d).await.unwrap().allowed);
                    }
                    admitted
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 50, "{algorithm:?}");
    }
    for s in &servers {
        assert!(
            s.stats()
                .iter()
                .all(|p| p.backend_errors == 0 && p.fallbacks == 0)
        );
    }
}

#[tokio::test]
async fn every_key_has_a_ttl_and_all_expire_after_the_longest_window() {
    let server = RedisServer::start();
    // Besides fixed windows, which end on the Redis clock's window boundaries, keys live
    // from a fifth of the window (a bucket holding one unit) to two windows. With two
    // seconds, the keys written below are still there when they are counted, however
    // slowly a loaded machine makes the 200 calls; with 200 ms, many expired first.
    let window = Duration::from_secs(2);
    let policies: Vec<Policy> = ALL
        .iter()
        .map(|&a| {
            let burst = if a.uses_burst() { 2 } else { 0 };
            let limit = Limit::new(a, 5, window, burst).unwrap();
            redis_policy(a.code(), limit, FailureMode::FailClosed)
        })
        .collect();
    let limiter = limiter(&server.url(), Duration::from_secs(2), &policies);
    for a in ALL {
        for i in 0..20 {
            let key = format!("user{i}:k");
            let _ = limiter
                .check(&Descriptor::policy(&key, 1 + i % 2, a.code()))
                .await
                .unwrap();
            let _ = limiter
                .check(&Descriptor::policy(&key, 0, a.code()))
                .await
                .unwrap();
        }
    }
    let both = [
        Descriptor::policy("bob:a", 1, "l"),
        Descriptor::policy("bob:b", 1, "c"),
    ];
    assert!(limiter.check_many(&both).await.unwrap().allowed);
    let mut conn = server.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Fixed windows are aligned to the Redis clock, so some keys may already have expired.
    assert!(keys.len() > 50, "only {} keys", keys.len());
    for key in &keys {
        assert!(key.starts_with("cordon:rl:{"), "{key} lacks its hash tag");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // -1 means no TTL; -2 means the key expired since KEYS listed it.
        assert!(ttl >= 0 || ttl == -2, "{key} has pttl {ttl}");
    }
    // The sliding counter's state lives longest: two windows. The bucket with burst is full
    // again after (limit + burst) / limit windows.
    tokio::time::sleep(2 * window + Duration::from_millis(150)).await;
    // KEYS skips logically expired keys, which DBSIZE would still count until Redis's
    // lazy expiry reclaims them.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, Vec::<String>::new());
}

#[tokio::test]
async fn check_many_on_redis_is_all_or_nothing_in_one_slot() {
    let server = RedisServer::start();
    let long = Duration::from_secs(3600);
    let user = redis_policy(
        "user",
        Limit::new(Algorithm::SlidingWindowLog, 3, long, 0).unwrap(),
        FailureMode::FailClosed,
    );
    let tool = redis_policy(
        "tool",
        Limit::new(Algorithm::Gcra, 1, long, 0).unwrap(),
        FailureMode::FailClosed,
    );
    let limiter = limiter(&server.url(), Duration::from_secs(2), &[user, tool]);
    let both = [
        Descriptor::policy("alice", 1, "user"),
        Descriptor::policy("alice:shell", 1, "tool"),
    ];
    assert!(limiter.check_many(&both).await.unwrap().allowed);
    let denied = limiter.check_many(&both).await.unwrap();
    assert!(!denied.allowed && denied.decisions[0].allowed && !denied.decisions[1].allowed);
    let peek = limiter
        .check(&Descriptor::policy("alice", 0, "user"))
        .await
        .unwrap();
    assert_eq!(peek.remaining, 2, "the denied check consumed quota");
    // Two requests in one script call on one key are two entries.
    let twice = [
        Descriptor::policy("bob", 1, "user"),
        Descriptor::policy("bob", 1, "user"),
    ];
    assert!(limiter.check_many(&twice).await.unwrap().allowed);
    let d = limiter
        .check(&Descriptor::policy("bob", 1, "user"))
        .await
        .unwrap();
    assert!(d.allowed && d.remaining == 0);
    let d = limiter
        .check(&Descriptor::policy("bob", 1, "user"))
        .await
        .unwrap();
    assert!(!d.allowed && d.retry_after > Duration::from_secs(3590));
    limiter.reset("bob", Some("user")).await.unwrap();
    assert!(
        limiter
            .check(&Descriptor::policy("bob", 1, "user"))
            .await
            .unwrap()
            .allowed
    );

    let mut set = PolicySet::default();
    set.insert(redis_policy(
        "user",
        Limit::new(Algorithm::FixedWindow, 3, long, 0).unwrap(),
        FailureMode::FailClosed,
    ));
    let cluster = RedisConfig {
        url: server.url(),
        cluster: true,
        ..RedisConfig::default()
    };
    let limiter = Limiter::new(
        set,
        LimiterConfig {
            redis: Some(cluster),
            ..LimiterConfig::default()
        },
    )
    .unwrap();
    let cross = [
        Descriptor::policy("alice:x", 1, "user"),
        Descriptor::policy("bob:x", 1, "user"),
    ];
    assert_eq!(
        limiter.check_many(&cross).await,
        Err(CheckError::CrossSlot("alice".into(), "bob".into()))
    );
}

/// Peeks under `policy` until Redis has answered `in_a_row` checks in a row, and returns
/// how long that took. A check that fails starts the count again.
async fn answered_in_a_row(limiter: &Limiter, policy: &str, in_a_row: usize) -> Duration {
    let start = Instant::now();
    let mut answered = 0;
    loop {
        let d = limiter
            .check(&Descriptor::policy("probe:key", 0, policy))
            .await
            .unwrap();
        if !limiter.redis().unwrap().is_degraded() && d.allowed {
            answered += 1;
            if answered == in_a_row {
                return start.elapsed();
            }
            continue;
        }
        answered = 0;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "Redis did not answer {in_a_row} checks in a row within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the limiter answers from Redis again and returns how long that took.
async fn recovery_time(limiter: &Limiter, policy: &str) -> Duration {
    answered_in_a_row(limiter, policy, 1).await
}

/// Opens every connection of the limiter and loads the script, so that the next call
/// costs one round trip. A test with a short timeout warms up first: its first call would
/// otherwise also connect and load the script, and on a slow machine miss the timeout and
/// trip the breaker. `policy` must fail closed, so that only Redis can allow a check, and
/// should be one the test does not count, since a failed warm-up check counts as a
/// backend error.
async fn warm_up(limiter: &Limiter, policy: &str) {
    // Connections are taken round-robin, so this many checks in a row use each of them,
    // and a failure in between drops them all.
    let connections = limiter.redis().unwrap().config().pool_size;
    answered_in_a_row(limiter, policy, connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_one_timeout_and_each_failure_mode_holds() {
    let server = RedisServer::start();
    let limit = Limit::new(Algorithm::SlidingWindowLog, 3, Duration::from_secs(3600), 0).unwrap();
    let timeout = Duration::from_millis(50);
    let limiter = limiter(
        &server.url(),
        timeout,
        &[
            redis_policy("open", limit, FailureMode::FailOpen),
            redis_policy("closed", limit, FailureMode::FailClosed),
            redis_policy("local", limit, FailureMode::LocalFallback),
            redis_policy("warmup", limit, FailureMode::FailClosed),
        ],
    );
    // One timeout plus slack for a loaded machine, and still short of the 500 ms after
    // which the Redis client gives up by itself: the limiter's timeout must end the wait.
    let bound = timeout + Duration::from_millis(250);
    for (policy, expect_allowed) in [("open", true), ("closed", false), ("local", true)] {
        // Each round warms up first: no connection is open before the first round, and
        // after a round only the one its recovery opened, since its timeout dropped the rest.
        warm_up(&limiter, "warmup").await;
        // Redis answers, and this policy's key has spent one of its three units there.
        assert!(
            limiter
                .check(&Descriptor::policy("k", 1, policy))
                .await
                .unwrap()
                .allowed
        );
        server.signal("-STOP");
        let start = Instant::now();
        let d = limiter
            .check(&Descriptor::policy("k", 1, policy))
            .await
            .unwrap();
        let first = start.elapsed();
        assert!(first < bound, "{policy}: first call took {first:?}");
        assert_eq!(d.allowed, expect_allowed, "{policy}");
        // With the breaker open, later calls do not wait for Redis at all. Calls that each
        // waited for the timeout would take 100 * 50 ms = 5 s; one second is the slack of
        // a loaded machine.
        let start = Instant::now();
        let mut allowed = u64::from(d.allowed);
        for _ in 0..100 {
            let d = limiter
                .check(&Descriptor::policy("k", 1, policy))
                .await
                .unwrap();
            allowed += u64::from(d.allowed);
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{policy}: {:?}",
            start.elapsed()
        );
        match policy {
            "open" => assert_eq!(allowed, 101),
            "closed" => assert_eq!(allowed, 0),
            // The local limiter starts fresh and enforces the same limit.
            _ => assert_eq!(allowed, 3),
        }
        let stats = limiter
            .stats()
            .into_iter()
            .find(|s| s.policy == policy)
            .unwrap();
        assert_eq!(stats.backend_errors, 101, "{policy}");
        let fallbacks = if policy == "local" { 101 } else { 0 };
        assert_eq!(stats.fallbacks, fallbacks, "{policy}");
        let denied = if policy == "open" {
            0
        } else if policy == "closed" {
            101
        } else {
            98
        };
        assert_eq!(stats.denied, denied, "{policy}");
        server.signal("-CONT");
        // The probe runs every 100 ms; the rest is slack for a loaded machine.
        let took = recovery_time(&limiter, policy).await;
        assert!(
            took < Duration::from_secs(4),
            "{policy}: recovery took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_used_again_within_seconds() {
    let mut server = RedisServer::start();
    let port = server.port;
    let limit = Limit::new(Algorithm::TokenBucket, 10, Duration::from_secs(60), 0).unwrap();
    let timeout = Duration::from_millis(50);
    let limiter = limiter(
        &server.url(),
        timeout,
        &[
            redis_policy("p", limit, FailureMode::FailClosed),
            redis_policy("warmup", limit, FailureMode::FailClosed),
        ],
    );
    warm_up(&limiter, "warmup").await;
    assert!(
        limiter
            .check(&Descriptor::policy("k", 1, "p"))
            .await
            .unwrap()
            .allowed
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let start = Instant::now();
    let d = limiter
        .check(&Descriptor::policy("k", 1, "p"))
        .await
        .unwrap();
    // At most one timeout, plus slack for a loaded machine.
    let took = start.elapsed();
    assert!(
        !d.allowed && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );
    // The new server has an empty script cache: the first call reloads the script.
    let restarted = RedisServer::start_on(port);
    // The probe runs every 100 ms; the rest is slack for a loaded machine.
    let took = recovery_time(&limiter, "p").await;
    assert!(took < Duration::from_secs(4), "recovery took {took:?}");
    // The recovery opened one connection only. Opening the others here leaves the check
    // below one round trip to make within its timeout.
    warm_up(&limiter, "warmup").await;
    let d = limiter
        .check(&Descriptor::policy("k", 1, "p"))
        .await
        .unwrap();
    assert!(d.allowed && d.remaining == 9);
    drop(restarted);
}

#[tokio::test]
async fn the_script_decides_like_the_in_memory_algorithms() {
    let server = RedisServer::start();
    let costs = [1, 2, 0, 3, 5, 1, 1, 4, 0, 2, 1, 6, 1];
    for algorithm in ALL {
        let burst = if algorithm.uses_burst() { 2 } else { 0 };
        // An hour-long window: nothing refills or rolls over during the comparison, except
        // with negligible probability at an hour boundary of the Redis clock.
        let limit = Limit::new(algorithm, 7, Duration::from_secs(3600), burst).unwrap();
        let redis = limiter(
            &server.url(),
            Duration::from_secs(2),
            &[redis_policy("p", limit, FailureMode::FailClosed)],
        );
        let memory = ratelimit::MemoryBackend::new(&ratelimit::MemoryConfig::default());
        for cost in costs.into_iter().filter(|&c| c <= limit.capacity()) {
            let got = redis
                .check(&Descriptor::policy("alice:cmp", cost, "p"))
                .await
                .unwrap();
            let want = memory
                .check(ratelimit::Owner::Server, "p", "cmp", &limit, cost)
                .unwrap();
            assert_eq!(
                (got.allowed, got.remaining),
                (want.allowed, want.remaining),
                "{algorithm:?} cost {cost}"
            );
            // Fixed and counter windows are aligned to each clock's origin (the Unix epoch
            // in Redis, the backend's start in memory), so only their counts compare.
            if matches!(
                algorithm,
                Algorithm::FixedWindow | Algorithm::SlidingWindowCounter
            ) {
                continue;
            }
            // Each backend reads its clock at its own moment, a round trip and a task wake-up
            // apart, which a loaded machine can stretch to a second or more. Five seconds
            // still catch a bucket that is off by one unit, which is worth 3600 s / 7.
            let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_secs(5);
            assert!(
                close(got.retry_after, want.retry_after),
                "{algorithm:?}: {got:?} vs {want:?}"
            );
            assert!(
                close(got.reset_after, want.reset_after),
                "{algorithm:?}: {got:?} vs {want:?}"
            );
        }
    }
}

#[tokio::test]
async fn retry_after_from_redis_is_honest() {
    let server = RedisServer::start();
    // A denial needs the calls below to outpace the refill of a third of the window per
    // unit: a window of one second leaves a loaded machine about 250 ms per call.
    let window = Duration::from_secs(1);
    for algorithm in ALL {
        let limit = Limit::new(algorithm, 3, window, 0).unwrap();
        let limiter = limiter(
            &server.url(),
            Duration::from_secs(2),
            &[redis_policy("p", limit, FailureMode::FailClosed)],
        );
        let key = format!("retry:{}", algorithm.code());
        let d = Descriptor::policy(&key, 1, "p");
        let mut denied = None;
        for _ in 0..10 {
            let got = limiter.check(&d).await.unwrap();
            if !got.allowed {
                denied = Some(got);
                break;
            }
        }
        let denied = denied.unwrap_or_else(|| panic!("{algorithm:?} never denied"));
        // The sliding counter may wait for the end of the next window.
        assert!(
            denied.retry_after > Duration::ZERO && denied.retry_after <= 2 * window,
            "{algorithm:?}: {denied:?}"
        );
        tokio::time::sleep(denied.retry_after + Duration::from_millis(5)).await;
        assert!(
            limiter.check(&d).await.unwrap().allowed,
            "{algorithm:?} after {denied:?}"
        );
    }
}

#[tokio::test]
async fn a_decision_is_exactly_one_redis_command() {
    let server = RedisServer::start();
    let limit = Limit::new(Algorithm::Gcra, 1000, Duration::from_secs(60), 0).unwrap();
    let limiter = limiter(
        &server.url(),
        Duration::from_secs(2),
        &[redis_policy("p", limit, FailureMode::FailClosed)],
    );
    // The first call opens connections and loads the script.
    for _ in 0..8 {
        limiter
            .check(&Descriptor::policy("k", 1, "p"))
            .await
            .unwrap();
    }
    let mut conn = server.connection().await;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    for _ in 0..50 {
        limiter
            .check(&Descriptor::policy("k", 1, "p"))
            .await
            .unwrap();
    }
    let both = [
        Descriptor::policy("k", 1, "p"),
        Descriptor::policy("k:x", 1, "p"),
    ];
    limiter.check_many(&both).await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = |line: &str| -> u64 {
        let rest = line.split("calls=").nth(1).unwrap();
        rest.split(',').next().unwrap().parse().unwrap()
    };
    let evalsha = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .map_or(0, calls);
    // Commands run inside the script are counted too, but the client sent only EVALSHA.
    assert_eq!(evalsha, 51, "{info}");
    // The script keeps the owner's key index too: it lists every written key, and counts
    // the index before it creates a key.
    let inner = [
        "cmdstat_hmget",
        "cmdstat_hset",
        "cmdstat_pexpire",
        "cmdstat_time",
        "cmdstat_zadd",
        "cmdstat_pexpireat",
        "cmdstat_pttl",
        "cmdstat_zremrangebyscore",
        "cmdstat_zcard",
        "cmdstat_zscore",
    ];
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line.split(':').next().unwrap();
        assert!(
            name == "cmdstat_evalsha"
                || name.starts_with("cmdstat_config")
                || name == "cmdstat_info"
                || inner.contains(&name),
            "unexpected command {line}"
        );
    }
}

fn quota_refusal(identity: &str, quota: usize) -> CheckError {
    CheckError::Capacity(CapacityError::RedisIdentityQuota {
        identity: identity.to_owned(),
        quota,
    })
}

async fn take(limiter: &Limiter, owner: Owner<'_>, key: &str) -> Result<bool, CheckError> {
    let d = Descriptor::policy(key, 1, "api").owned_by(owner);
    limiter.check(&d).await.map(|d| d.allowed)
}

#[tokio::test]
async fn an_identity_over_its_redis_quota_is_refused_and_no_one_else() {
    let server = RedisServer::start();
    let long = Duration::from_secs(3600);
    let policy = redis_policy(
        "api",
        Limit::new(Algorithm::TokenBucket, 2, long, 0).unwrap(),
        FailureMode::FailClosed,
    );
    let mut set = PolicySet::default();
    set.insert(policy);
    set.set_tool("shell", "api").unwrap();
    let redis = RedisConfig {
        url: server.url(),
        timeout: Duration::from_secs(2),
        max_keys_per_identity: 3,
        ..RedisConfig::default()
    };
    let config = LimiterConfig {
        redis: Some(redis),
        ..LimiterConfig::default()
    };
    let limiter = Limiter::new(set, config).unwrap();
    let (a, b) = (Owner::Identity("a"), Owner::Identity("b"));
    for i in 0..3 {
        assert_eq!(take(&limiter, a, &format!("a:k{i}")).await, Ok(true));
    }
    assert_eq!(take(&limiter, a, "a:k3").await, Err(quota_refusal("a", 3)));
    // A check that needs a new key is refused whole, consuming nothing on the others.
    let both = [
        Descriptor::policy("a:k0", 1, "api").owned_by(a),
        Descriptor::policy("a:k4", 1, "api").owned_by(a),
    ];
    assert_eq!(limiter.check_many(&both).await, Err(quota_refusal("a", 3)));
    // A peek stores nothing, so it needs no room.
    let peek = Descriptor::policy("a:k5", 0, "api").owned_by(a);
    assert_eq!(limiter.check(&peek).await.unwrap().remaining, 2);
    // Another identity has its own quota.
    for i in 0..3 {
        assert_eq!(take(&limiter, b, &format!("b:k{i}")).await, Ok(true));
    }
    // The capped identity's existing keys are decided exactly: one unit left, then none.
    let d = limiter
        .check(&Descriptor::policy("a:k0", 1, "api").owned_by(a))
        .await
        .unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    assert_eq!(take(&limiter, a, "a:k0").await, Ok(false));
    // The server's own keys for the capped identity are in no quota.
    for tool in ["shell", "unlisted", "other"] {
        let key = format!("a:{tool}");
        assert_eq!(take(&limiter, Owner::Server, &key).await, Ok(true));
    }
    let d = limiter.check_tool("a", "shell", 1).await.unwrap().unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    // Reset gives the key's room back at once.
    limiter.reset("a:k1", Some("api")).await.unwrap();
    assert_eq!(take(&limiter, a, "a:k3").await, Ok(true));
    assert_eq!(take(&limiter, a, "a:k6").await, Err(quota_refusal("a", 3)));
}

#[tokio::test]
async fn expired_redis_keys_free_their_owners_quota() {
    let server = RedisServer::start();
    // Each refusal below needs the keys made just before it to be alive: a key lives one
    // window, and two seconds outlast a few calls on a loaded machine.
    let window = Duration::from_secs(2);
    let short = redis_policy(
        "api",
        Limit::new(Algorithm::Gcra, 1, window, 0).unwrap(),
        FailureMode::FailClosed,
    );
    let long = redis_policy(
        "long",
        Limit::new(Algorithm::Gcra, 1, Duration::from_secs(3600), 0).unwrap(),
        FailureMode::FailClosed,
    );
    let redis = RedisConfig {
        url: server.url(),
        timeout: Duration::from_secs(2),
        max_keys_per_identity: 3,
        ..RedisConfig::default()
    };
    let limiter = limiter_with(redis, &[short, long]);
    let a = Owner::Identity("a");
    // A long-lived key keeps the index alive, so the expired listings must be pruned.
    let lasting = Descriptor::policy("a:lasting", 1, "long").owned_by(a);
    assert!(limiter.check(&lasting).await.unwrap().allowed);
    assert_eq!(take(&limiter, a, "a:x0").await, Ok(true));
    assert_eq!(take(&limiter, a, "a:x1").await, Ok(true));
    assert_eq!(take(&limiter, a, "a:x2").await, Err(quota_refusal("a", 3)));
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    assert_eq!(take(&limiter, a, "a:x2").await, Ok(true));
    assert_eq!(take(&limiter, a, "a:x3").await, Ok(true));
    assert_eq!(take(&limiter, a, "a:x4").await, Err(quota_refusal("a", 3)));
}

/// A Redis with cluster mode on, owning every slot, so that a script touching keys of two
/// slots fails with CROSSSLOT as it would on a real cluster.
fn cluster_of_one() -> RedisServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nodes = std::env::temp_dir().join(format!("cordon-ratelimit-nodes-{port}.conf"));
    let _ = std::fs::remove_file(&nodes);
    let server = RedisServer::start_with(
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            nodes.to_str().unwrap(),
        ],
    );
    let status = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "CLUSTER",
            "ADDSLOTSRANGE",
            "0",
            "16383",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli, installed with redis-server");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

#[tokio::test]
async fn in_cluster_mode_an_index_shares_the_slot_of_its_keys() {
    let server = cluster_of_one();
    let policy = redis_policy(
        "api",
        Limit::new(Algorithm::Gcra, 5, Duration::from_secs(3600), 0).unwrap(),
        FailureMode::FailClosed,
    );
    let redis = RedisConfig {
        url: server.url(),
        timeout: Duration::from_secs(2),
        cluster: true,
        max_keys_per_identity: 1,
        ..RedisConfig::default()
    };
    let limiter = limiter_with(redis, &[policy]);
    // An admin's verbatim keys carry another identity's tag: the admin's index for that
    // tag lives in their slot, so the quota holds per tag.
    let admin = Owner::Identity("root");
    assert_eq!(take(&limiter, admin, "bot:k").await, Ok(true));
    assert_eq!(
        take(&limiter, admin, "bot:j").await,
        Err(quota_refusal("root", 1))
    );
    assert_eq!(take(&limiter, admin, "eve:k").await, Ok(true));
    // A caller's scoped keys carry its own tag, so its one index covers them all.
    let bot = Owner::Identity("bot");
    let both = [
        Descriptor::policy("bot:x", 1, "api").owned_by(bot),
        Descriptor::policy("bot:y", 1, "api").owned_by(bot),
    ];
    assert_eq!(
        limiter.check_many(&both).await,
        Err(quota_refusal("bot", 1))
    );
    assert_eq!(take(&limiter, bot, "bot:x").await, Ok(true));
    assert_eq!(take(&limiter, bot, "bot:x").await, Ok(true));
    assert_eq!(
        take(&limiter, bot, "bot:y").await,
        Err(quota_refusal("bot", 1))
    );
    limiter.reset("bot:x", Some("api")).await.unwrap();
    assert_eq!(take(&limiter, bot, "bot:y").await, Ok(true));
    let stats = limiter.stats();
    assert!(stats.iter().all(|p| p.backend_errors == 0), "{stats:?}");
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("cordon-ratelimit-nodes-{}.conf", server.port)),
    );
}
