//! The in-memory backend and the limiter over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratelimit::{
    Algorithm, Backend, CapacityError, CheckError, Descriptor, FailureMode, Limit, Limiter,
    LimiterConfig, MemoryBackend, MemoryConfig, Override, Owner, Policy, PolicySet,
};

const ALL: [Algorithm; 5] = [
    Algorithm::SlidingWindowLog,
    Algorithm::SlidingWindowCounter,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
    Algorithm::FixedWindow,
];

fn limiter_with(policies: &[Policy]) -> Limiter {
    let mut set = PolicySet::default();
    for p in policies {
        set.insert(p.clone());
    }
    Limiter::new(set, LimiterConfig::default()).unwrap()
}

fn memory_policy(name: &str, algorithm: Algorithm, limit: u64, window: Duration) -> Policy {
    Policy::new(
        name,
        Limit::new(algorithm, limit, window, 0).unwrap(),
        Backend::Memory,
        FailureMode::FailClosed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_on_one_key_admit_exactly_the_limit() {
    for algorithm in ALL {
        // An hour-long window: the bucket refills nothing measurable during the test.
        let limiter = Arc::new(limiter_with(&[memory_policy(
            "p",
            algorithm,
            100,
            Duration::from_secs(3600),
        )]));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let mut admitted = 0u64;
                    for _ in 0..10 {
                        let d = limiter
                            .check(&Descriptor::policy("shared", 1, "p"))
                            .await
                            .unwrap();
                        admitted += u64::from(d.allowed);
                        tokio::task::yield_now().await;
                    }
                    admitted
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 100, "{algorithm:?}");
        let stats = limiter
            .stats()
            .into_iter()
            .find(|s| s.policy == "p")
            .unwrap();
        assert_eq!((stats.allowed, stats.denied), (100, 540), "{algorithm:?}");
    }
}

#[test]
fn a_million_unique_keys_stay_bounded_and_the_backend_recovers() {
    let memory = MemoryBackend::new(&MemoryConfig {
        shards: 16,
        max_keys: 10_000,
        max_keys_per_identity: 5_000,
        server_keys: 100,
        sweep_interval: Duration::from_millis(20),
    });
    let window = Duration::from_millis(200);
    let limit = Limit::new(Algorithm::FixedWindow, 2, window, 0).unwrap();
    let sliding = Limit::new(Algorithm::SlidingWindowLog, 2, Duration::from_secs(60), 0).unwrap();
    let (flood, victim) = (Owner::Identity("flood"), Owner::Identity("victim"));
    // A victim at its limit before the flood must still be limited during it.
    assert!(
        memory
            .check(victim, "p", "victim", &sliding, 2)
            .unwrap()
            .allowed
    );
    let mut key = String::new();
    let mut refused = 0u64;
    for i in 0..1_000_000u32 {
        key.clear();
        key.push_str("flood-");
        key.push_str(&i.to_string());
        match memory.check(flood, "p", &key, &limit, 1) {
            Ok(d) => assert!(d.allowed),
            Err(e) => {
                assert_eq!(
                    e,
                    CapacityError::IdentityQuota {
                        identity: "flood".into(),
                        quota: 5_000
                    }
                );
                refused += 1;
            }
        }
    }
    assert!(memory.len() <= 10_000, "held {} keys", memory.len());
    assert!(memory.keys_of("flood") <= 5_000);
    assert!(refused > 0 && memory.overflowed() == refused);
    assert!(
        !memory
            .check(victim, "p", "victim", &sliding, 1)
            .unwrap()
            .allowed,
        "flood reset a live key"
    );
    // Once the flood's windows have passed, its keys are swept and new keys are served,
    // the flooding identity's included.
    std::thread::sleep(window + Duration::from_millis(50));
    assert!(
        memory
            .check(flood, "p", "again", &limit, 1)
            .unwrap()
            .allowed
    );
    memory.sweep();
    assert!(
        memory.len() <= 2,
        "held {} keys after the sweep",
        memory.len()
    );
    assert!(
        !memory
            .check(victim, "p", "victim", &sliding, 1)
            .unwrap()
            .allowed
    );
}

#[test]
fn idle_keys_are_evicted_after_their_window() {
    let memory = MemoryBackend::new(&MemoryConfig::default());
    for algorithm in ALL {
        let limit = Limit::new(algorithm, 3, Duration::from_millis(30), 0).unwrap();
        for i in 0..100 {
            memory
                .check(Owner::Server, algorithm.code(), &format!("k{i}"), &limit, 1)
                .unwrap();
        }
    }
    assert_eq!(memory.len(), 500);
    // The sliding counter remembers the previous window, so its state lasts two windows.
    std::thread::sleep(Duration::from_millis(100));
    memory.sweep();
    assert!(memory.is_empty());
}

/// The operator's repro: a store of 64 keys in one shard, and one agent creating keys
/// with day-long windows.
fn small_store(policies: PolicySet) -> Limiter {
    Limiter::new(
        policies,
        LimiterConfig {
            memory: MemoryConfig {
                shards: 1,
                max_keys: 64,
                max_keys_per_identity: 16,
                server_keys: 8,
                sweep_interval: Duration::from_secs(1),
            },
            redis: None,
        },
    )
    .unwrap()
}

fn day_long() -> Limit {
    Limit::new(Algorithm::FixedWindow, 100, Duration::from_secs(86_400), 0).unwrap()
}

async fn fill(limiter: &Limiter, identity: &str, keys: u32) -> Vec<Result<bool, CheckError>> {
    let mut out = Vec::new();
    for i in 1..=keys {
        let key = format!("{identity}:fill{i}");
        let d = Descriptor::inline(&key, 1, day_long()).owned_by(Owner::Identity(identity));
        out.push(limiter.check(&d).await.map(|d| d.allowed));
    }
    out
}

#[tokio::test]
async fn one_identity_filling_the_store_denies_neither_others_nor_the_tool_limits() {
    let limiter = small_store(PolicySet::default());
    let flood = fill(&limiter, "mallory", 70).await;
    // The attacker gets its quota and then a refusal naming the quota, not a denial
    // carrying some key's window.
    assert!(flood[..16].iter().all(|r| r == &Ok(true)), "{flood:?}");
    for r in &flood[16..] {
        assert_eq!(
            r,
            &Err(CheckError::Capacity(CapacityError::IdentityQuota {
                identity: "mallory".into(),
                quota: 16
            }))
        );
    }
    assert_eq!(limiter.memory().keys_of("mallory"), 16);
    // Keys the attacker already holds are decided as always.
    let held =
        Descriptor::inline("mallory:fill1", 1, day_long()).owned_by(Owner::Identity("mallory"));
    assert_eq!(limiter.check(&held).await.unwrap().remaining, 98);

    // Another identity still gets new keys, and its tool limit is its own: five shells
    // per minute, the sixth denied with the tool's retry delay, not the attacker's day.
    assert_eq!(fill(&limiter, "alice", 3).await, vec![Ok(true); 3]);
    for _ in 0..5 {
        let d = limiter
            .check_tool("alice", "shell", 1)
            .await
            .unwrap()
            .unwrap();
        assert!(d.allowed, "{d:?}");
    }
    let sixth = limiter
        .check_tool("alice", "shell", 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!sixth.allowed);
    assert!(sixth.retry_after <= Duration::from_secs(12), "{sixth:?}");
    // The attacker's own tool limit is untouched by its flood as well.
    assert!(
        limiter
            .check_tool("mallory", "shell", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn callers_filling_the_store_together_never_reach_the_servers_keys() {
    let limiter = small_store(PolicySet::default());
    // Four identities at their quota fill the 64 keys of callers.
    for name in ["m1", "m2", "m3", "m4"] {
        assert_eq!(fill(&limiter, name, 16).await, vec![Ok(true); 16]);
    }
    // A fifth identity's new key is refused as a full store, consuming nothing.
    let refused = fill(&limiter, "alice", 1).await;
    assert_eq!(
        refused,
        vec![Err(CheckError::Capacity(CapacityError::CallersFull {
            max: 64
        }))]
    );
    // A multi-key check that needs a new key is refused whole: the existing key it also
    // names keeps its count.
    let (old, new) = (
        Descriptor::inline("m1:fill1", 1, day_long()).owned_by(Owner::Identity("m1")),
        Descriptor::inline("m1:new", 1, day_long()).owned_by(Owner::Identity("m1")),
    );
    assert!(matches!(
        limiter.check_many(&[old, new]).await,
        Err(CheckError::Capacity(CapacityError::IdentityQuota { .. }))
    ));
    let peek = Descriptor::inline("m1:fill1", 0, day_long()).owned_by(Owner::Identity("m1"));
    assert_eq!(limiter.check(&peek).await.unwrap().remaining, 99);
    // Sandbox.Run's per-tool limits live in the server's reserved keys and still work,
    // for identities the callers' flood never saw too.
    for identity in ["alice", "bob", "carol"] {
        assert!(
            limiter
                .check_tool(identity, "shell", 1)
                .await
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    // Resetting keys gives their owner room again.
    limiter.reset("m1:fill1", None).await.unwrap();
    assert_eq!(fill(&limiter, "alice", 1).await, vec![Ok(true)]);
}

#[tokio::test]
async fn the_default_tool_policy_limits_every_unlisted_tool_in_one_bucket() {
    let text = r#"
        [policies.rest]
        algorithm = "token_bucket"
        limit = 3
        window = "1m"
        [tools]
        default = "rest"
    "#;
    let limiter = small_store(toml::from_str(text).unwrap());
    let allowed = async |identity: &str, tool: &str| {
        limiter
            .check_tool(identity, tool, 1)
            .await
            .unwrap()
            .expect("every tool is limited")
            .allowed
    };
    // Inventing tool names draws from one bucket: three runs, then none.
    assert!(allowed("mallory", "x").await);
    assert!(allowed("mallory", "y").await);
    assert!(allowed("mallory", "").await);
    for tool in ["z", "", "x", "default"] {
        assert!(!allowed("mallory", tool).await, "{tool:?} was admitted");
    }
    // Another identity's unlisted tools, and a tool with its own policy, are unaffected.
    assert!(allowed("alice", "x").await);
    for _ in 0..5 {
        assert!(allowed("mallory", "shell").await);
    }
    assert!(!allowed("mallory", "shell").await);
    // The caller reaches the same bucket with its scoped key and the default's policy.
    let peek = Descriptor::policy("mallory:default", 0, "rest");
    assert_eq!(limiter.check(&peek).await.unwrap().remaining, 0);
}

#[tokio::test]
async fn check_many_is_all_or_nothing() {
    let limiter = limiter_with(&[
        memory_policy(
            "user",
            Algorithm::SlidingWindowLog,
            3,
            Duration::from_secs(60),
        ),
        memory_policy("tool", Algorithm::TokenBucket, 1, Duration::from_secs(60)),
    ]);
    let both = [
        Descriptor::policy("alice", 1, "user"),
        Descriptor::policy("alice:shell", 1, "tool"),
    ];
    let first = limiter.check_many(&both).await.unwrap();
    assert!(first.allowed && first.decisions.iter().all(|d| d.allowed));
    let second = limiter.check_many(&both).await.unwrap();
    assert!(!second.allowed);
    assert!(second.decisions[0].allowed && !second.decisions[1].allowed);
    // The denied check consumed nothing under "user": two units are still left.
    let peek = limiter
        .check(&Descriptor::policy("alice", 0, "user"))
        .await
        .unwrap();
    assert_eq!(peek.remaining, 2);
    // Two descriptors on one key add up.
    let twice = [
        Descriptor::policy("bob", 2, "user"),
        Descriptor::policy("bob", 2, "user"),
    ];
    assert!(!limiter.check_many(&twice).await.unwrap().allowed);
    let peek = limiter
        .check(&Descriptor::policy("bob", 0, "user"))
        .await
        .unwrap();
    assert_eq!(peek.remaining, 3);
    let inline = Limit::new(Algorithm::FixedWindow, 1, Duration::from_secs(60), 0).unwrap();
    let mixed = [
        Descriptor::policy("carol", 1, "user"),
        Descriptor::inline("carol", 1, inline),
    ];
    assert!(limiter.check_many(&mixed).await.unwrap().allowed);
}

#[tokio::test]
async fn decisions_carry_limit_remaining_and_times() {
    let limiter = limiter_with(&[memory_policy(
        "p",
        Algorithm::SlidingWindowLog,
        2,
        Duration::from_secs(10),
    )]);
    let start = Instant::now();
    let d = limiter
        .check(&Descriptor::policy("k", 1, "p"))
        .await
        .unwrap();
    assert_eq!(
        (d.allowed, d.limit, d.remaining, d.retry_after),
        (true, 2, 1, Duration::ZERO)
    );
    assert!(d.reset_after > Duration::from_secs(9) && d.reset_after <= Duration::from_secs(10));
    limiter
        .check(&Descriptor::policy("k", 1, "p"))
        .await
        .unwrap();
    let d = limiter
        .check(&Descriptor::policy("k", 1, "p"))
        .await
        .unwrap();
    assert!(!d.allowed && d.remaining == 0);
    // The first entry leaves the window ten seconds after it was made, so the time the
    // checks took on a loaded machine comes off the wait.
    assert!(
        d.retry_after + start.elapsed() > Duration::from_secs(9)
            && d.retry_after <= Duration::from_secs(10),
        "{d:?}"
    );
    assert_eq!(
        limiter.check(&Descriptor::policy("k", 3, "p")).await,
        Err(CheckError::CostExceedsCapacity {
            cost: 3,
            capacity: 2
        })
    );
    assert_eq!(
        limiter.check(&Descriptor::policy("k", 1, "nope")).await,
        Err(CheckError::UnknownPolicy("nope".into()))
    );
    limiter.reset("k", Some("p")).await.unwrap();
    assert_eq!(
        limiter
            .check(&Descriptor::policy("k", 0, "p"))
            .await
            .unwrap()
            .remaining,
        2
    );
}

#[tokio::test]
async fn reload_keeps_counters_and_stats() {
    let limiter = limiter_with(&[memory_policy(
        "p",
        Algorithm::SlidingWindowLog,
        5,
        Duration::from_secs(60),
    )]);
    for _ in 0..3 {
        assert!(
            limiter
                .check(&Descriptor::policy("k", 1, "p"))
                .await
                .unwrap()
                .allowed
        );
    }
    let mut set = PolicySet::default();
    set.insert(memory_policy(
        "p",
        Algorithm::SlidingWindowLog,
        6,
        Duration::from_secs(60),
    ));
    limiter.reload(set).unwrap();
    let d = limiter
        .check(&Descriptor::policy("k", 0, "p"))
        .await
        .unwrap();
    assert_eq!((d.limit, d.remaining), (6, 3));
    let stats = limiter
        .stats()
        .into_iter()
        .find(|s| s.policy == "p")
        .unwrap();
    assert_eq!(stats.allowed, 4);
}

#[tokio::test]
async fn overrides_and_tool_defaults_apply() {
    let base = memory_policy("api", Algorithm::FixedWindow, 1, Duration::from_secs(60));
    let vip = Limit::new(Algorithm::FixedWindow, 3, Duration::from_secs(60), 0).unwrap();
    let limiter = limiter_with(&[base.with_override(Override {
        identity: Some("vip".into()),
        tool: None,
        limit: vip,
    })]);
    let d = Descriptor::policy("vip", 0, "api").for_caller(Some("vip"), None);
    assert_eq!(limiter.check(&d).await.unwrap().remaining, 3);
    let d = Descriptor::policy("joe", 0, "api").for_caller(Some("joe"), None);
    assert_eq!(limiter.check(&d).await.unwrap().remaining, 1);
    // shell: five per minute, all available at once, the sixth denied.
    let start = Instant::now();
    for _ in 0..5 {
        assert!(
            limiter
                .check_tool("alice", "shell", 1)
                .await
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    let sixth = limiter
        .check_tool("alice", "shell", 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!sixth.allowed);
    // One unit drips back twelve seconds after the first check, so the time the checks
    // took on a loaded machine comes off the wait.
    assert!(
        sixth.retry_after + start.elapsed() > Duration::from_secs(11)
            && sixth.retry_after <= Duration::from_secs(12),
        "{sixth:?}"
    );
    assert!(
        limiter
            .check_tool("bob", "shell", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(
        limiter
            .check_tool("alice", "unknown", 1)
            .await
            .unwrap()
            .is_none()
    );
}
