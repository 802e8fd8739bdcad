//! The RateLimit service through real clients: grpcio over mTLS, reload on
//! SIGHUP, bad configuration, and two servers sharing one real `redis-server`
//! that is stopped and restarted under them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certgen::DevBundle;
use serde_json::json;
use server::proto::ratelimit::v1 as pb;
use server::proto::ratelimit::v1::rate_limit_client::RateLimitClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{self, TestServer};

const IDENTITIES: &str = r#"
[identities.admin]
roles = ["admin"]
[identities.agent]
roles = ["agent"]
[identities.agent2]
roles = ["agent"]
[identities.auditor]
roles = ["auditor"]
"#;

/// A data directory whose `certs` holds the dev bundle plus client
/// certificates for every identity in [`IDENTITIES`].
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certgen::write_dev_bundle(
        &dir.path().join("certs"),
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec![
                "admin".into(),
                "agent".into(),
                "agent2".into(),
                "auditor".into(),
            ],
        },
    )
    .unwrap();
    dir
}

/// Several servers must trust one CA: copies `from`'s certificates.
fn data_dir_sharing(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), certs.join(entry.file_name())).unwrap();
    }
    dir
}

async fn client(server: &TestServer, name: &str) -> RateLimitClient<Channel> {
    client_for(&server.addr, &server.certs(), name).await
}

async fn client_for(addr: &str, certs: &Path, name: &str) -> RateLimitClient<Channel> {
    let read = |file: String| std::fs::read(certs.join(file)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("{name}.pem")),
            read(format!("{name}.key")),
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    RateLimitClient::new(channel)
}

async fn check(
    c: &mut RateLimitClient<Channel>,
    key: &str,
    cost: u64,
    policy: &str,
) -> pb::Decision {
    c.check(pb::CheckRequest {
        key: key.into(),
        cost,
        limit: Some(pb::check_request::Limit::Policy(policy.into())),
    })
    .await
    .unwrap()
    .into_inner()
    .decision
    .unwrap()
}

#[test]
fn python_grpcio_client_drives_check_and_check_multiple() {
    let dir = data_dir();
    let certs = dir.path().join("certs");
    let config = format!(
        r#"{IDENTITIES}
[ratelimit.policies.api]
algorithm = "sliding_window_log"
limit = 5
window = "1h"
[ratelimit.policies.stats]
algorithm = "sliding_window_log"
limit = 1
window = "1h"
[ratelimit.policies.conc_log]
algorithm = "sliding_window_log"
limit = 100
window = "1h"
[ratelimit.policies.conc_gcra]
algorithm = "gcra"
limit = 100
window = "1h"
"#
    );
    let server = TestServer::start_in(dir, &config);
    // The operator's repro: a store of 64 keys in one shard, which agent2
    // tries to fill, and a default policy for tools without their own.
    let isolated = TestServer::start_in(
        data_dir_sharing(&certs),
        &format!(
            r#"{IDENTITIES}
[ratelimit.memory]
max_keys = 64
shards = 1
[ratelimit.policies.rest]
algorithm = "token_bucket"
limit = 3
window = "1h"
[ratelimit.tools]
default = "rest"
[sandbox.trust]
default = "trusted"
"#
        ),
    );
    let pair = |name: &str| json!({"cert": certs.join(format!("{name}.pem")), "key": certs.join(format!("{name}.key"))});
    harness::run_python(
        "test_ratelimit.py",
        &json!({
            "target": server.addr,
            "isolated_target": isolated.addr,
            "proto_dir": harness::proto_dir(),
            "ca": certs.join("ca.pem"),
            "certs": {
                "admin": pair("admin"),
                "agent": pair("agent"),
                "agent2": pair("agent2"),
                "auditor": pair("auditor"),
            },
        }),
    );
}

fn reload_config(limit: u64) -> String {
    format!(
        r#"{IDENTITIES}
[ratelimit.policies.reload]
algorithm = "sliding_window_log"
limit = {limit}
window = "1h"
"#
    )
}

fn sighup(server: &TestServer) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies_and_keeps_counters() {
    let server = TestServer::start_in(data_dir(), &reload_config(3));
    let mut agent = client(&server, "agent").await;
    assert_eq!(check(&mut agent, "k", 2, "reload").await.remaining, 1);

    std::fs::write(server.dir.path().join("cordon.toml"), reload_config(5)).unwrap();
    sighup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let peek = loop {
        let d = check(&mut agent, "k", 0, "reload").await;
        if d.limit == 5 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "limit still {} after SIGHUP",
            d.limit
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The two units spent before the reload still count against the new limit.
    assert_eq!(peek.remaining, 3, "{peek:?}");
    assert!(check(&mut agent, "k", 3, "reload").await.allowed);
    assert!(!check(&mut agent, "k", 1, "reload").await.allowed);

    // A broken file is refused and the running policies stay in force.
    std::fs::write(server.dir.path().join("cordon.toml"), reload_config(0)).unwrap();
    sighup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("rate-limit reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.log().contains("ratelimit.policies.reload"),
        "{}",
        server.log()
    );
    let d = check(&mut agent, "k", 0, "reload").await;
    assert_eq!((d.limit, d.remaining), (5, 0), "{d:?}");
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let cases = [
        (
            "[ratelimit.policies.api]\nalgorithm = \"gcra\"\nlimit = 0\nwindow = \"1s\"",
            "ratelimit.policies.api",
        ),
        (
            "[ratelimit.policies.api]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = \"1s\"\nbackend = \"redis\"",
            "needs a [ratelimit.redis] section",
        ),
        ("[ratelimit.tools]\nshell = \"missing\"", "ratelimit.tools"),
        (
            "[ratelimit.redis]\nurl = \"http://127.0.0.1:1\"",
            "ratelimit.redis.url",
        ),
    ];
    for (config, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cordon.toml");
        std::fs::write(&path, config).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .env("CORDON_OPS__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config:?} was accepted");
        assert!(stderr.contains(expected), "{config:?}: {stderr}");
    }
}

/// A private `redis-server` on a free port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("XTASK_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"));
    let found = Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{} not found (set XTASK_TEST_REDIS_SERVER); install it with: apt-get install redis-server",
        path.display()
    );
    path
}

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new(redis_server_binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `timeout_ms` is short for the outage test and long for the exactness
/// test, where a loaded machine must not turn slow answers into denials.
fn redis_config(port: u16, timeout_ms: u64) -> String {
    format!(
        r#"{IDENTITIES}
[ratelimit.redis]
url = "redis://127.0.0.1:{port}"
timeout_ms = {timeout_ms}
probe_interval_ms = 50

[ratelimit.policies.shared]
algorithm = "sliding_window_log"
limit = 100
window = "1h"
backend = "redis"

[ratelimit.policies.closed]
algorithm = "gcra"
limit = 1000
window = "1h"
backend = "redis"
failure_mode = "fail_closed"

[ratelimit.policies.open]
algorithm = "gcra"
limit = 1000
window = "1h"
backend = "redis"
failure_mode = "fail_open"

[ratelimit.policies.fallback]
algorithm = "sliding_window_log"
limit = 2
window = "1h"
backend = "redis"
failure_mode = "local_fallback"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_admit_exactly_the_limit() {
    let redis = Redis::start();
    let first_dir = data_dir();
    let certs = first_dir.path().join("certs");
    let second_dir = data_dir_sharing(&certs);
    let first = TestServer::start_in(first_dir, &redis_config(redis.port, 5000));
    let second = TestServer::start_in(second_dir, &redis_config(redis.port, 5000));

    // 64 clients, half on each server, four checks each against a limit of 100.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let addr = if i % 2 == 0 {
            first.addr.clone()
        } else {
            second.addr.clone()
        };
        let certs = certs.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client_for(&addr, &certs, "agent").await;
            let mut admitted = 0;
            for _ in 0..4 {
                admitted += u32::from(check(&mut c, "hot", 1, "shared").await.allowed);
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(admitted, 100);
    // Both servers see the same, exhausted, bucket, and Redis answered every
    // decision (a denial by failure mode would make the count meaningless).
    for server in [&first, &second] {
        let d = check(&mut client(server, "agent").await, "hot", 0, "shared").await;
        assert_eq!(d.remaining, 0, "{d:?}");
        let stats = stats(&mut client(server, "admin").await).await;
        let shared = stats
            .policies
            .iter()
            .find(|p| p.policy == "shared")
            .unwrap();
        assert_eq!(shared.backend_errors, 0, "{shared:?}");
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_redis_key_quota_gets_resource_exhausted() {
    let redis = Redis::start();
    let config = redis_config(redis.port, 5000).replacen(
        "probe_interval_ms = 50\n",
        "probe_interval_ms = 50\nmax_keys_per_identity = 2\n",
        1,
    );
    let server = TestServer::start_in(data_dir(), &config);
    let mut agent = client(&server, "agent").await;
    assert!(check(&mut agent, "a", 1, "closed").await.allowed);
    assert!(check(&mut agent, "b", 1, "closed").await.allowed);
    let refused = agent
        .check(pb::CheckRequest {
            key: "c".into(),
            cost: 1,
            limit: Some(pb::check_request::Limit::Policy("closed".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("ratelimit.redis.max_keys_per_identity"),
        "{refused:?}"
    );
    // The agent's existing keys, and every other identity, carry on.
    assert_eq!(check(&mut agent, "a", 1, "closed").await.remaining, 998);
    let mut other = client(&server, "agent2").await;
    assert!(check(&mut other, "c", 1, "closed").await.allowed);
    let closed = stats(&mut client(&server, "admin").await).await;
    let closed = closed
        .policies
        .iter()
        .find(|p| p.policy == "closed")
        .unwrap();
    assert_eq!(closed.backend_errors, 0, "{closed:?}");
    drop(redis);
}

async fn stats(admin: &mut RateLimitClient<Channel>) -> pb::GetStatsResponse {
    admin
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Checks every failure-mode policy once while Redis gives no answer, and
/// that each answers within the 50 ms timeout (plus room for a debug build
/// on a loaded machine).
async fn assert_failure_modes(agent: &mut RateLimitClient<Channel>, fallback_key: &str) {
    for _ in 0..3 {
        let start = Instant::now();
        let closed = check(agent, "k", 1, "closed").await;
        let open = check(agent, "k", 1, "open").await;
        let elapsed = start.elapsed();
        assert!(!closed.allowed, "fail_closed admitted: {closed:?}");
        assert!(closed.retry_after_ms > 0, "{closed:?}");
        assert!(open.allowed, "fail_open denied: {open:?}");
        assert!(
            elapsed < Duration::from_millis(1000),
            "two checks took {elapsed:?}"
        );
    }
    // The local fallback limits with this server's own memory: 2 per hour.
    let fallback: Vec<bool> = [
        check(agent, fallback_key, 1, "fallback").await,
        check(agent, fallback_key, 1, "fallback").await,
        check(agent, fallback_key, 1, "fallback").await,
    ]
    .iter()
    .map(|d| d.allowed)
    .collect();
    assert_eq!(fallback, [true, true, false]);
}

async fn wait_for_recovery(agent: &mut RateLimitClient<Channel>) -> Duration {
    let start = Instant::now();
    loop {
        if check(agent, "k", 1, "closed").await.allowed {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "fail_closed policy still denies 5 s after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_applies_failure_modes_and_recovers() {
    let redis = Redis::start();
    let server = TestServer::start_in(data_dir(), &redis_config(redis.port, 50));
    let mut agent = client(&server, "agent").await;
    let mut admin = client(&server, "admin").await;
    assert!(check(&mut agent, "k", 1, "closed").await.allowed);
    assert!(check(&mut agent, "k", 1, "open").await.allowed);
    assert!(!stats(&mut admin).await.redis_degraded);

    // A hung Redis: every check must answer within the timeout.
    redis.signal("-STOP");
    assert_failure_modes(&mut agent, "hung").await;
    let during = stats(&mut admin).await;
    assert!(during.redis_degraded);
    let closed = during
        .policies
        .iter()
        .find(|p| p.policy == "closed")
        .unwrap();
    assert!(
        closed.backend_errors >= 3 && closed.denied >= 3,
        "{closed:?}"
    );
    let fallback = during
        .policies
        .iter()
        .find(|p| p.policy == "fallback")
        .unwrap();
    assert_eq!(fallback.fallbacks, 3, "{fallback:?}");
    redis.signal("-CONT");
    let recovered = wait_for_recovery(&mut agent).await;
    assert!(
        recovered < Duration::from_secs(2),
        "recovery took {recovered:?}"
    );
    assert!(!stats(&mut admin).await.redis_degraded);

    // A dead Redis (connection refused), then a fresh one on the same port.
    let port = redis.stop();
    assert_failure_modes(&mut agent, "dead").await;
    let _redis = Redis::start_on(port);
    let recovered = wait_for_recovery(&mut agent).await;
    assert!(
        recovered < Duration::from_secs(2),
        "recovery took {recovered:?}"
    );
    // The fresh Redis lost the old state and the script cache; decisions work.
    let d = check(&mut agent, "fresh", 1, "shared").await;
    assert!(d.allowed && d.remaining == 99, "{d:?}");
}
