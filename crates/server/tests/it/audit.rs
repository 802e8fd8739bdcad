//! The audit trail end to end: every call recorded with the digest but never
//! the text of its arguments, the Audit and Guard services and the ops
//! endpoint through grpcio, acknowledged records surviving kill -9, the chain
//! surviving restarts and seals, offline verification catching tampering, and
//! calls refused while the log cannot record them.

use std::path::{Path, PathBuf};
use std::process::Command;

use certgen::{CaParams, CertificateAuthority, ClientParams, DevBundle};
use serde_json::json;
use server::proto::identity::v1::WhoAmIRequest;
use server::proto::identity::v1::identity_client::IdentityClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{self, TestServer};

const SECRET: &str = "s3cr3t-argument-7f1c2e9a";
const WHOAMI: &str = "/cordon.identity.v1.Identity/WhoAmI";

fn pair(dir: &Path, name: &str) -> serde_json::Value {
    json!({"cert": dir.join(format!("{name}.pem")), "key": dir.join(format!("{name}.key"))})
}

/// Stops the server with SIGKILL and hands back its data directory.
fn kill_9(mut server: TestServer) -> tempfile::TempDir {
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap the server");
    std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"))
}

fn audit_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(audit::audit_dir(data_dir))
        .expect("audit directory")
        .map(|entry| entry.expect("directory entry").path())
        .collect()
}

#[test]
fn every_call_is_recorded_and_arguments_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec![
                "admin".into(),
                "agent".into(),
                "auditor".into(),
                "nobody".into(),
            ],
        },
    )
    .unwrap();
    let other_ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let foreign = other_ca
        .issue_client(&ClientParams::new("admin", "cordon.local"))
        .unwrap();
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    certgen::write_cert_file(&odd.join("other_ca.pem"), &foreign.cert_pem).unwrap();
    certgen::write_key_file(
        &odd.join("other_ca.key"),
        foreign.key_pem.as_deref().unwrap(),
    )
    .unwrap();

    let guard_root = dir.path().join("guard");
    let work = guard_root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink("/etc", work.join("escape")).unwrap();

    let config = format!(
        r#"
[ops]
listen = "127.0.0.1:0"

[guard]
allowed_roots = ["{work}"]

[identities.admin]
roles = ["admin"]
[identities.agent]
roles = ["agent"]
[identities.auditor]
roles = ["auditor"]
[identities.nobody]
roles = []

[sandbox.trust.sources]
builtin = "trusted"
"#,
        work = work.display()
    );
    let server = TestServer::start_in(dir, &config);
    let ops = ops_address(&server);
    harness::run_python(
        "test_audit.py",
        &json!({
            "target": server.addr,
            "proto_dir": harness::proto_dir(),
            "ca": server.certs().join("ca.pem"),
            "certs": {
                "admin": pair(&certs, "admin"),
                "agent": pair(&certs, "agent"),
                "auditor": pair(&certs, "auditor"),
                "nobody": pair(&certs, "nobody"),
                "other_ca": pair(&odd, "other_ca"),
            },
            "secret": SECRET,
            "guard_root": guard_root,
            "ops": ops,
        }),
    );

    // The records hold digests only: the argument text is in no file of the
    // log, whether committed to the database or still in the WAL.
    let dir = kill_9(server);
    let files = audit_files(dir.path());
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "db")),
        "no segment file in {files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} contains the argument text",
            file.display()
        );
    }
}

/// The server's gRPC endpoint with the admin's client certificate.
fn admin_endpoint(server: &TestServer) -> Endpoint {
    let certs = server.certs();
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("admin.pem"), read("admin.key")))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

/// Makes `calls` WhoAmI calls over mTLS, several at a time, and returns once
/// every one of them has been answered.
fn whoami_calls(server: &TestServer, calls: usize) {
    let endpoint = admin_endpoint(server);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let channel = endpoint.connect().await.expect("connect");
        let workers = 8;
        let tasks: Vec<_> = (0..workers)
            .map(|worker| {
                let mut client = IdentityClient::new(channel.clone());
                tokio::spawn(async move {
                    for _ in (worker..calls).step_by(workers) {
                        client.who_am_i(WhoAmIRequest {}).await.expect("WhoAmI");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Recovers the log (see [`recover`]) and counts the recorded WhoAmI calls.
fn whoami_records(data_dir: &Path, seal_every_records: u64) -> usize {
    recover(data_dir, seal_every_records);
    let mut query = audit::Query {
        method: Some(WHOAMI.to_owned()),
        page_size: audit::MAX_PAGE_SIZE,
        ..Default::default()
    };
    let mut count = 0;
    loop {
        let page = audit::query_dir(data_dir, &query).unwrap();
        count += page.records.len();
        match page.next_after_seq {
            Some(seq) => query.after_seq = Some(seq),
            None => return count,
        }
    }
}

/// Opens and closes the log in `data_dir` as the next start of a server with
/// `seal_every_records` would: that commits, and seals as configured, the
/// records that a kill -9 left only in the journal.
fn recover(data_dir: &Path, seal_every_records: u64) {
    let mut config = audit::Config::new(data_dir);
    config.seal_every_records = seal_every_records;
    drop(audit::AuditLog::open(config).expect("open the audit log"));
}

fn cordon_audit(args: &[&str], data_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run cordon audit")
}

#[test]
fn acknowledged_records_survive_kill_9_restarts_and_seals_and_tampering_is_caught() {
    let config = "[ops]\nenabled = false\n[audit]\nseal_every_records = 40\n";
    let server = TestServer::start(config);
    whoami_calls(&server, 100);
    let dir = kill_9(server);
    let report = audit::verify_dir(dir.path()).unwrap();
    assert!(
        report.ok,
        "the files as the kill left them verify: {report:?}"
    );
    assert!(report.head.seq >= 100, "{report:?}");
    assert_eq!(
        whoami_records(dir.path(), 40),
        100,
        "every answered call has its record after kill -9"
    );
    let report = audit::verify_dir(dir.path()).unwrap();
    assert!(report.ok, "{report:?}");
    assert!(report.segments >= 2, "sealed every 40 records: {report:?}");

    // The chain continues across a restart, and the recorded WhoAmI calls
    // include the new ones.
    let server = TestServer::start_in(dir, config);
    whoami_calls(&server, 30);
    let dir = kill_9(server);
    assert_eq!(whoami_records(dir.path(), 40), 130);
    let report = audit::verify_dir(dir.path()).unwrap();
    assert!(report.ok, "{report:?}");

    let sealed = cordon_audit(&["seal"], dir.path());
    assert!(sealed.status.success(), "{sealed:?}");
    assert!(
        String::from_utf8_lossy(&sealed.stdout).contains("sealed segment"),
        "{sealed:?}"
    );
    let verified = cordon_audit(&["verify"], dir.path());
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout.contains("chain ok"), "{stdout}");

    // Tamper as someone with the file would: drop the trigger that forbids
    // updates and rewrite one record of the newest segment that has any.
    let report = audit::verify_dir(dir.path()).unwrap();
    let segments: Vec<PathBuf> = (1..=report.segments)
        .map(|n| audit::segment_path(dir.path(), n))
        .collect();
    let (path, seq) = segments
        .iter()
        .rev()
        .find_map(|path| {
            let conn = rusqlite::Connection::open(path).unwrap();
            let seq: Option<i64> = conn
                .query_row("SELECT MAX(seq) FROM records", [], |row| row.get(0))
                .unwrap();
            seq.map(|seq| (path.clone(), seq - 3))
        })
        .expect("a segment with records");
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "the tamperer makes the sealed file writable again on purpose"
    )]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TRIGGER records_no_update;")
        .unwrap();
    let changed = conn
        .execute(
            "UPDATE records SET status = 'OK', identity = 'someone-else' WHERE seq = ?1",
            [seq],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let verified = cordon_audit(&["verify"], dir.path());
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        !verified.status.success(),
        "verify must fail on a tampered log: {stdout}"
    );
    assert!(
        stdout.contains(&format!("BROKEN at seq {seq}")),
        "the first bad record is named: {stdout}"
    );
}

/// The value of `label` in `cordon audit verify`'s output.
fn printed(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
        .trim()
        .to_owned()
}

/// Removing records from the end of the active segment leaves a chain that
/// verifies on its own; `--anchor` with a head printed earlier catches it.
#[test]
fn verify_with_an_anchor_catches_a_removed_tail() {
    let server = TestServer::start("[ops]\nenabled = false\n");
    whoami_calls(&server, 20);
    let dir = kill_9(server);
    recover(dir.path(), 0);
    let verified = cordon_audit(&["verify"], dir.path());
    let stdout = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{verified:?}");
    let head_seq: i64 = printed(&stdout, "head seq:").parse().unwrap();
    let head = format!("{head_seq}:{}", printed(&stdout, "head hash:"));
    let with_anchor = cordon_audit(&["verify", "--anchor", &head], dir.path());
    assert!(with_anchor.status.success(), "{with_anchor:?}");

    let segment = audit::segment_path(dir.path(), 1);
    let conn = rusqlite::Connection::open(&segment).unwrap();
    conn.execute_batch("DROP TRIGGER records_no_delete;")
        .unwrap();
    let removed = conn
        .execute("DELETE FROM records WHERE seq > ?1", [head_seq - 5])
        .unwrap();
    assert_eq!(removed, 5);
    drop(conn);

    let verified = cordon_audit(&["verify"], dir.path());
    assert!(
        verified.status.success(),
        "the chain alone cannot see a removed tail: {verified:?}"
    );
    let with_anchor = cordon_audit(&["verify", "--anchor", &head], dir.path());
    let stdout = String::from_utf8_lossy(&with_anchor.stdout);
    assert!(!with_anchor.status.success(), "{stdout}");
    assert!(stdout.contains("the tail was removed"), "{stdout}");

    let malformed = cordon_audit(&["verify", "--anchor", "12:not-hex"], dir.path());
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(!malformed.status.success(), "{stderr}");
    assert!(stderr.contains("64 hex digits"), "{stderr}");
}

#[test]
fn audit_can_be_disabled_and_verify_fails_without_a_log() {
    let server = TestServer::start("[ops]\nenabled = false\n[audit]\nenabled = false\n");
    whoami_calls(&server, 3);
    let dir = kill_9(server);
    assert!(!audit::audit_dir(dir.path()).exists());
    let verified = cordon_audit(&["verify"], dir.path());
    assert!(!verified.status.success(), "{verified:?}");
}

/// Status line and body of `GET path` on the ops endpoint at `ops`
/// (`http://host:port`).
fn ops_get(ops: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = ops.strip_prefix("http://").expect("an http address");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the ops endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The ops endpoint's address, as the server printed it.
fn ops_address(server: &TestServer) -> String {
    let line = server.wait_for_stdout(|line| line.starts_with("ops endpoint on "));
    line["ops endpoint on ".len()..].to_owned()
}

/// One WhoAmI call at a time as admin, each returning its status code.
struct Caller {
    runtime: tokio::runtime::Runtime,
    client: IdentityClient<tonic::transport::Channel>,
}

impl Caller {
    fn new(server: &TestServer) -> Caller {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let channel = runtime
            .block_on(admin_endpoint(server).connect())
            .expect("connect");
        Caller {
            runtime,
            client: IdentityClient::new(channel),
        }
    }

    fn call(&mut self) -> tonic::Code {
        match self
            .runtime
            .block_on(self.client.who_am_i(WhoAmIRequest {}))
        {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }
}

/// Puts a file where the audit directory was, so that the log cannot start
/// its next segment (not even as root) while its open segment still works.
/// Returns where the directory went.
fn break_audit_directory(data_dir: &Path) -> PathBuf {
    let dir = audit::audit_dir(data_dir);
    let away = data_dir.join("audit-away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    away
}

fn repair_audit_directory(data_dir: &Path, away: &Path) {
    let dir = audit::audit_dir(data_dir);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(away, &dir).unwrap();
}

#[test]
fn while_the_audit_log_fails_calls_are_refused_and_healthz_says_so() {
    refused_while_failing("process_crash");
}

#[test]
fn with_full_durability_calls_are_refused_while_the_log_fails() {
    refused_while_failing("full");
}

/// Calls `caller` until `done` says yes about the latest answer, or fails the test after a while,
/// and returns every answer.
fn call_until(caller: &mut Caller, done: impl Fn(tonic::Code) -> bool) -> Vec<tonic::Code> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut codes = Vec::new();
    loop {
        let code = caller.call();
        codes.push(code);
        if done(code) {
            return codes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no change in time: {codes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn refused_while_failing(durability: &str) {
    // Segments are sealed every 4 records: once the directory is broken, the
    // next seal fails, and so does every commit after it.
    let config = format!(
        "[ops]\nlisten = \"127.0.0.1:0\"\n\
         [audit]\ndurability = \"{durability}\"\nseal_every_records = 4\n"
    );
    let server = TestServer::start(&config);
    let ops = ops_address(&server);
    let mut caller = Caller::new(&server);
    assert_eq!(caller.call(), tonic::Code::Ok);
    assert_eq!(ops_get(&ops, "/healthz"), (200, "ok\n".to_owned()));

    let away = break_audit_directory(server.dir.path());
    // Calls whose records were acknowledged before the log failed have
    // taken effect and keep their answers; once it fails, calls are refused
    // before they take effect, for as long as it fails.
    let mut codes = call_until(&mut caller, |code| code == tonic::Code::Unavailable);
    codes.extend((0..4).map(|_| caller.call()));
    let first_refused = codes.len() - 5;
    assert!(
        codes[..first_refused].iter().all(|c| *c == tonic::Code::Ok)
            && codes[first_refused..]
                .iter()
                .all(|c| *c == tonic::Code::Unavailable),
        "answered until the log failed, refused after: {codes:?}"
    );
    assert_eq!(
        ops_get(&ops, "/healthz"),
        (503, "audit log failing\n".to_owned())
    );

    // The log's retries and the refusals' own records find out that it
    // works again.
    repair_audit_directory(server.dir.path(), &away);
    let codes = call_until(&mut caller, |code| code == tonic::Code::Ok);
    assert!(
        codes[..codes.len() - 1]
            .iter()
            .all(|c| *c == tonic::Code::Unavailable),
        "{codes:?}"
    );
    assert_eq!(caller.call(), tonic::Code::Ok, "served again");
    assert_eq!(ops_get(&ops, "/healthz"), (200, "ok\n".to_owned()));
    drop(caller);

    let dir = kill_9(server);
    let report = audit::verify_dir(dir.path()).unwrap();
    assert!(report.ok, "the chain survives the failure: {report:?}");
    recover(dir.path(), 4);
    let records = audit::query_dir(
        dir.path(),
        &audit::Query {
            method: Some(WHOAMI.to_owned()),
            page_size: audit::MAX_PAGE_SIZE,
            ..Default::default()
        },
    )
    .unwrap()
    .records;
    assert!(
        records.iter().any(|r| r.entry.status == "UNAVAILABLE"
            && r.entry.identity == "admin"
            && r.entry.summary == "refused: the audit log was failing"),
        "a refusal is recorded with the caller: {records:?}"
    );
}

#[test]
fn with_on_failure_serve_calls_are_answered_while_the_log_fails() {
    let config = "[ops]\nlisten = \"127.0.0.1:0\"\n\
                  [audit]\ndurability = \"process_crash\"\nseal_every_records = 4\n\
                  on_failure = \"serve\"\n";
    let server = TestServer::start(config);
    let ops = ops_address(&server);
    let mut caller = Caller::new(&server);
    let away = break_audit_directory(server.dir.path());
    let mut codes = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ops_get(&ops, "/healthz").0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure is not reported"
        );
        codes.push(caller.call());
    }
    codes.extend((0..4).map(|_| caller.call()));
    assert!(
        codes.iter().all(|code| *code == tonic::Code::Ok),
        "calls are served while the log fails: {codes:?}"
    );
    assert_eq!(
        ops_get(&ops, "/healthz"),
        (503, "audit log failing\n".to_owned()),
        "the failure is visible even when calls are served"
    );
    repair_audit_directory(server.dir.path(), &away);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ops_get(&ops, "/healthz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the recovery is not reported"
        );
        assert_eq!(caller.call(), tonic::Code::Ok);
    }
    assert_eq!(caller.call(), tonic::Code::Ok);
}
