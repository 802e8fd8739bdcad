//! The CertAuthority service and TLS hot reload through grpcio and
//! `cryptography`: issuance, renewal, live revocation (also across a
//! restart), listing, and reloading replaced certificate files.

use std::path::Path;
use std::process::Command;

use certgen::{CertificateAuthority, ClientParams, DevBundle, OffsetDateTime, ServerParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{self, TestServer};

const API_KEY: &str = "ck_ca_test_7d1e9b3f5a2c4e6f8a0b1c3d5e7f9a1b";
const MAX_VALIDITY: u64 = 2 * 24 * 60 * 60;

fn dev_ca(dir: &Path, clients: &[&str]) -> CertificateAuthority {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let bundle = certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: clients.iter().map(|c| (*c).to_owned()).collect(),
        },
    )
    .unwrap();
    CertificateAuthority::from_pem(
        &std::fs::read_to_string(&bundle.ca_cert).unwrap(),
        &std::fs::read_to_string(&bundle.ca_key).unwrap(),
    )
    .unwrap()
}

fn pair(dir: &Path, name: &str) -> Value {
    json!({"cert": dir.join(format!("{name}.pem")), "key": dir.join(format!("{name}.key"))})
}

fn service_config() -> String {
    let api_key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    format!(
        r#"
[ca]
identity_pattern = "(worker|agent|admin)[a-z0-9-]*"
max_validity_seconds = {MAX_VALIDITY}

[[auth.api_keys]]
name = "ci-bot"
sha256 = "{api_key_hash}"

[identities.admin]
roles = ["admin"]
[identities.agent]
roles = ["agent"]
[identities.ci-bot]
roles = ["agent"]
[identities.ops]
roles = ["auditor"]
[identities.worker]
roles = ["agent"]
[identities.worker-list]
roles = ["agent"]
"#
    )
}

#[test]
fn python_issue_renew_revoke_list_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path(), &["admin", "agent", "ops"]);
    let certs = dir.path().join("certs");
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut expired = ClientParams::new("agent", "cordon.local");
    expired.not_before = Some(now - time::Duration::days(3));
    expired.not_after = Some(now - time::Duration::days(1));
    let expired = ca.issue_client(&expired).unwrap();
    let context = |server: &TestServer, suite: &str| {
        json!({
            "suite": suite,
            "target": server.addr,
            "proto_dir": harness::proto_dir(),
            "trust_domain": "cordon.local",
            "ca": certs.join("ca.pem"),
            "data_dir": server.dir.path(),
            "log": server.stderr_log,
            "api_key": API_KEY,
            "max_validity_seconds": MAX_VALIDITY,
            "certs": {
                "admin": pair(&certs, "admin"),
                "agent": pair(&certs, "agent"),
                "ops": pair(&certs, "ops"),
                "expired": harness::write_pair(&odd, "expired", &expired.cert_pem, expired.key_pem.as_deref().unwrap()),
            },
        })
    };

    let mut server = TestServer::start_in(dir, &service_config());
    let hint = server.wait_for_stdout(|line| line.contains("two thirds"));
    assert!(hint.contains("RenewCertificate"), "{hint}");
    assert!(server.dir.path().join("ca/inventory.db").is_file());
    assert!(server.dir.path().join("ca/crl.pem").is_file());
    harness::run_python("test_ca.py", &context(&server, "service"));
    let log = server.log();
    assert!(log.contains("certificate issued"), "{log}");
    assert!(log.contains("certificate revoked"), "{log}");
    assert!(log.contains("certificate renewed"), "{log}");

    // Restart on the same data directory: the revocation must still hold,
    // at the handshake (CRL rebuilt from the inventory) and per call.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = TestServer::start_in(dir, &service_config());
    harness::run_python("test_ca.py", &context(&server, "restart"));
}

#[test]
fn python_hot_reload_of_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca(dir.path(), &["admin"]);
    let spare = dir.path().join("spare");
    std::fs::create_dir_all(&spare).unwrap();
    let next: Vec<Value> = (0..2)
        .map(|i| {
            let issued = ca.issue_server(&ServerParams::default()).unwrap();
            harness::write_pair(
                &spare,
                &format!("server-{i}"),
                &issued.cert_pem,
                issued.key_pem.as_deref().unwrap(),
            )
        })
        .collect();
    let server = TestServer::start_in(dir, "");
    let certs = server.certs();
    harness::run_python(
        "test_ca.py",
        &json!({
            "suite": "reload",
            "target": server.addr,
            "pid": server.child.id(),
            "proto_dir": harness::proto_dir(),
            "trust_domain": "cordon.local",
            "ca": certs.join("ca.pem"),
            "log": server.stderr_log,
            "server_cert": certs.join("server.pem"),
            "server_key": certs.join("server.key"),
            "next": next,
            "certs": {"admin": pair(&certs, "admin")},
        }),
    );
}

#[test]
fn disabled_ca_is_not_served_and_bad_ca_configuration_is_refused() {
    let server = TestServer::start("[ca]\nenabled = false");
    server.wait_for_stdout(|line| line.starts_with("ops endpoint on "));
    assert!(!server.dir.path().join("ca").exists());
    let listing = Command::new(harness::grpcurl())
        .arg("-cacert")
        .arg(server.certs().join("ca.pem"))
        .arg("-cert")
        .arg(server.certs().join("admin.pem"))
        .arg("-key")
        .arg(server.certs().join("admin.key"))
        .args([&server.addr, "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("cordon.identity.v1.Identity"), "{listing}");
    assert!(!listing.contains("cordon.ca.v1.CertAuthority"), "{listing}");
    // The renewal hint would be printed right after the ops line; a whole
    // grpcurl session later it would have been collected too.
    assert!(
        !server
            .stdout_lines()
            .iter()
            .any(|line| line.contains("two thirds"))
    );

    let dir = tempfile::tempdir().unwrap();
    dev_ca(dir.path(), &["admin"]);
    let missing = dir.path().join("nowhere/ca.key");
    let cases = [
        (
            format!("[ca]\nenabled = true\nkey = \"{}\"", missing.display()),
            missing.display().to_string(),
        ),
        (
            // The server key is a valid key, but not the CA certificate's.
            format!(
                "[ca]\nkey = \"{}\"",
                dir.path().join("certs/server.key").display()
            ),
            "does not match".to_owned(),
        ),
        (
            "[ca]\nidentity_pattern = \"(unclosed\"".to_owned(),
            "ca.identity_pattern".to_owned(),
        ),
        (
            "[ca]\ndefault_validity_seconds = 0".to_owned(),
            "ca.default_validity_seconds".to_owned(),
        ),
    ];
    for (config, expected) in cases {
        let text = harness::refused_startup(dir.path(), &config);
        assert!(
            text.contains(&expected),
            "{config:?}: {expected:?} not in {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

/// Runs a CertAuthority method with grpcurl as the server's admin.
fn ca_call(server: &TestServer, method: &str, request: &Value) -> (bool, String) {
    harness::grpcurl_call(
        server,
        &format!("cordon.ca.v1.CertAuthority/{method}"),
        request,
    )
}

/// The development certificates made at a first start are in the inventory:
/// listed, and revocable like issued ones, which takes effect at once.
#[test]
fn development_certificates_are_listed_and_revocable() {
    let server = TestServer::start("");
    let (ok, text) = ca_call(&server, "ListCertificates", &json!({}));
    assert!(ok, "{text}");
    let listing: Value = serde_json::from_str(&text).unwrap();
    let serial_of = |identity: &str| {
        listing["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["identity"] == identity)
            .and_then(|c| c["serial"].as_str())
            .unwrap_or_else(|| panic!("{identity} is not listed: {text}"))
            .to_owned()
    };
    serial_of("server");
    let admin = serial_of("admin");

    let (ok, text) = ca_call(
        &server,
        "RevokeCertificate",
        &json!({"serial": admin, "reason": "REVOCATION_REASON_KEY_COMPROMISE"}),
    );
    assert!(ok, "{text}");
    let (ok, text) = ca_call(&server, "ListCertificates", &json!({}));
    assert!(!ok, "the revoked admin certificate still works: {text}");
    let log = server.log();
    assert!(log.contains("revoked"), "{log}");
}
