//! The foundation through real clients: grpcio and grpcurl over real mTLS,
//! odd certificates, bad configuration and hostile connections.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certgen::{CaParams, CertificateAuthority, ClientParams, DevBundle, OffsetDateTime};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{self, TestServer};

const API_KEY: &str = "ck_test_3f9a1c7e5b2d4a6f8e0c1b3d5f7a9c2e";
const JWT_SECRET: &str = "jwt-test-secret-with-at-least-32-bytes!";

fn issue(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    params: &ClientParams,
) -> serde_json::Value {
    let issued = ca.issue_client(params).unwrap();
    harness::write_pair(
        dir,
        name,
        &issued.cert_pem,
        issued.key_pem.as_deref().unwrap(),
    )
}

#[test]
fn python_grpcio_client_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let bundle = certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec!["admin".into(), "agent".into(), "nobody".into()],
        },
    )
    .unwrap();
    let ca = CertificateAuthority::from_pem(
        &std::fs::read_to_string(&bundle.ca_cert).unwrap(),
        &std::fs::read_to_string(&bundle.ca_key).unwrap(),
    )
    .unwrap();
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);

    let mut expired = ClientParams::new("agent", "cordon.local");
    expired.not_before = Some(now - day * 3);
    expired.not_after = Some(now - day);
    let mut future = ClientParams::new("agent", "cordon.local");
    future.not_before = Some(now + day);
    future.not_after = Some(now + day * 2);
    let other_ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let revoked = ca
        .issue_client(&ClientParams::new("agent", "cordon.local"))
        .unwrap();
    let crl = ca
        .crl(
            &[certgen::Revoked {
                serial_hex: revoked.serial_hex.clone(),
                revoked_at: now,
                reason: certgen::RevocationReason::KeyCompromise,
            }],
            1,
            now + time::Duration::hours(1),
        )
        .unwrap()
        .pem;
    let crl_path = dir.path().join("crl.pem");
    std::fs::write(&crl_path, crl).unwrap();

    let ctx_certs = json!({
        "admin": {"cert": certs.join("admin.pem"), "key": certs.join("admin.key")},
        "agent": {"cert": certs.join("agent.pem"), "key": certs.join("agent.key")},
        "nobody": {"cert": certs.join("nobody.pem"), "key": certs.join("nobody.key")},
        "server": {"cert": certs.join("server.pem"), "key": certs.join("server.key")},
        "ca": {"cert": certs.join("ca.pem"), "key": certs.join("ca.key")},
        "expired": issue(&ca, &odd, "expired", &expired),
        "not_yet_valid": issue(&ca, &odd, "future", &future),
        "other_ca": issue(&other_ca, &odd, "other", &ClientParams::new("admin", "cordon.local")),
        "revoked": harness::write_pair(&odd, "revoked", &revoked.cert_pem, revoked.key_pem.as_deref().unwrap()),
    });
    let api_key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    let config = format!(
        r#"
[tls]
crl = ["{crl}"]

[[auth.api_keys]]
name = "ci-bot"
sha256 = "{api_key_hash}"

[auth.jwt]
algorithm = "HS256"
secret = "{JWT_SECRET}"
issuer = "https://issuer.test"
audience = "cordon"

[identities.admin]
roles = ["admin"]
[identities.agent]
roles = ["agent"]
[identities.ci-bot]
roles = ["agent"]
[identities.alice]
roles = ["auditor"]
"#,
        crl = crl_path.display()
    );
    let server = TestServer::start_in(dir, &config);
    harness::run_python(
        "test_foundation.py",
        &json!({
            "target": server.addr,
            "proto_dir": harness::proto_dir(),
            "trust_domain": "cordon.local",
            "ca": server.certs().join("ca.pem"),
            "certs": ctx_certs,
            "api_key": API_KEY,
            "api_key_identity": "ci-bot",
            "jwt": {"secret": JWT_SECRET, "issuer": "https://issuer.test", "audience": "cordon", "subject": "alice"},
        }),
    );
}

fn grpcurl(server: &TestServer, args: &[&str]) -> std::process::Output {
    harness::grpcurl_as_admin(server)
        .args(args)
        .output()
        .expect("run grpcurl")
}

fn grpcurl_ok(server: &TestServer, args: &[&str]) -> String {
    let output = grpcurl(server, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn grpcurl_session_with_first_start_dev_certificates() {
    let server = TestServer::start("");
    for file in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "admin.pem",
        "admin.key",
    ] {
        assert!(server.certs().join(file).exists(), "{file} not created");
    }
    let listing = grpcurl_ok(&server, &[&server.addr, "list"]);
    for service in [
        "cordon.identity.v1.Identity",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listing.contains(service),
            "{service} missing from:\n{listing}"
        );
    }
    let who = grpcurl_ok(
        &server,
        &[&server.addr, "cordon.identity.v1.Identity/WhoAmI"],
    );
    assert!(who.contains(r#""identity": "admin""#), "{who}");
    assert!(who.contains("AUTH_METHOD_CLIENT_CERTIFICATE"), "{who}");
    let health = grpcurl_ok(&server, &[&server.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let described = grpcurl_ok(
        &server,
        &[
            &server.addr,
            "describe",
            "cordon.identity.v1.WhoAmIResponse",
        ],
    );
    assert!(described.contains("certificate_serial"), "{described}");

    // Without a client certificate the same call is refused.
    let output = Command::new(harness::grpcurl())
        .arg("-cacert")
        .arg(server.certs().join("ca.pem"))
        .args([&server.addr, "cordon.identity.v1.Identity/WhoAmI"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("Unauthenticated"), "{text}");
}

#[test]
fn printed_grpcurl_command_works_as_pasted() {
    let server = TestServer::start("");
    let line = server.wait_for_stdout(|line| line.starts_with("try: grpcurl "));
    let command = line.trim_start_matches("try: ");
    let grpcurl_dir = harness::grpcurl().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        grpcurl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""identity": "admin""#), "{stdout}");
}

#[test]
fn bad_certificate_files_are_named_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec!["admin".into()],
        },
    )
    .unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.key");
    let cases = [
        (
            format!("[tls]\ncert = \"{}\"", garbage.display()),
            garbage.display().to_string(),
        ),
        (
            format!("[tls]\nkey = \"{}\"", missing.display()),
            missing.display().to_string(),
        ),
        (
            // A key that belongs to another certificate.
            format!("[tls]\nkey = \"{}\"", certs.join("admin.key").display()),
            certs.join("admin.key").display().to_string(),
        ),
        (
            format!("[tls]\nclient_ca = \"{}\"", garbage.display()),
            garbage.display().to_string(),
        ),
        (
            format!("[tls]\ncrl = [\"{}\"]", garbage.display()),
            garbage.display().to_string(),
        ),
        (
            "[tls]\nmin_version = \"1.0\"".to_owned(),
            "tls.min_version".to_owned(),
        ),
        ("no_such_option = 1".to_owned(), "no_such_option".to_owned()),
        (
            "[identities.bob]\nroles = [\"wizard\"]".to_owned(),
            "wizard".to_owned(),
        ),
    ];
    for (config, expected) in cases {
        let text = harness::refused_startup(dir.path(), &config);
        assert!(
            text.contains(&expected),
            "config {config:?}: {expected:?} not in:\n{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn non_loopback_listen_requires_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    // `--listen` on the command line overrides the file, so use the file's
    // value through the environment override instead.
    let text = {
        let config_path = dir.path().join("c.toml");
        std::fs::write(&config_path, "").unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path())
            .env("CORDON_LISTEN", "0.0.0.0:0")
            .env("CORDON_OPS__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(text.contains("is not loopback"), "{text}");
}

#[test]
fn world_readable_key_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec!["admin".into()],
        },
    )
    .unwrap();
    let key = certs.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = TestServer::start_in(dir, "");
    let log = server.log();
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(log.contains(&key.display().to_string()), "{log}");
}

#[test]
fn hostile_connections_do_not_stop_service() {
    let server = TestServer::start("[tls]\nhandshake_timeout_ms = 2000");
    // Garbage bytes where a TLS ClientHello should be.
    let mut garbage = TcpStream::connect(&server.addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\x16\x03\x01garbage")
        .unwrap();
    // A client that starts a handshake and stalls.
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // A thousand idle connections.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let start = Instant::now();
    let health = grpcurl_ok(&server, &[&server.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "served too slowly: {:?}",
        start.elapsed()
    );
    // The stalled handshake is cut off by the handshake timeout: the read
    // ends with EOF or a reset well before our own 10 s read timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let waited = Instant::now();
    match std::io::Read::read(&mut stalled, &mut buf) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        waited.elapsed() < Duration::from_secs(9),
        "stalled handshake was not cut off"
    );
    drop(idle);
    drop(garbage);
    let who = grpcurl_ok(
        &server,
        &[&server.addr, "cordon.identity.v1.Identity/WhoAmI"],
    );
    assert!(who.contains("admin"), "{who}");
    assert!(!server.log().contains("panicked"));
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_zero() {
    let mut server = TestServer::start("");
    let pid = server.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    assert!(
        TcpStream::connect(&server.addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let server = TestServer::start("[log]\nformat = \"json\"");
    // A failed authentication produces a security log line.
    let output = Command::new(harness::grpcurl())
        .arg("-cacert")
        .arg(server.certs().join("ca.pem"))
        .args([&server.addr, "cordon.identity.v1.Identity/WhoAmI"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = server.log();
        if log.contains("authentication failed") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authentication failed") && l.contains("cordon::security")),
        "{log}"
    );
}
