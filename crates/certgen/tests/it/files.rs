//! Key and certificate files, and the development bundle.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use certgen::{
    BundleError, CertificateAuthority, DevBundle, NameError, client_identity, write_cert_file,
    write_dev_bundle, write_key_file,
};
use webpki::KeyUsage;

use crate::support::verify;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const CHILD_ENV: &str = "CERTGEN_TEST_UMASK_CHILD_DIR";

/// Runs the writes in a child process whose umask is 000, so a file created with the default
/// mode 0666 would be world-writable: the key must still be 0600, because the mode is given
/// at creation rather than left to the umask.
#[test]
fn key_file_mode_is_0600_at_creation_whatever_the_umask() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = Path::new(&dir);
        write_key_file(&dir.join("k.key"), "KEY\n").unwrap();
        write_cert_file(&dir.join("c.pem"), "CERT\n").unwrap();
        // A control file created with the default mode proves the umask really was 000.
        fs::write(dir.join("control"), "x").unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "files::key_file_mode_is_0600_at_creation_whatever_the_umask",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(mode(&dir.path().join("control")), 0o666);
    assert_eq!(mode(&dir.path().join("k.key")), 0o600);
    assert_eq!(mode(&dir.path().join("c.pem")), 0o644);
    assert_eq!(
        fs::read_to_string(dir.path().join("k.key")).unwrap(),
        "KEY\n"
    );
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn replacing_a_world_readable_file_yields_a_0600_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.key");
    fs::write(&path, "old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_key_file(&path, "new").unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_to_string(&path).unwrap(), "new");
}

#[test]
fn writing_into_a_missing_directory_fails_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("x.key");
    let err = write_key_file(&path, "k").unwrap_err();
    assert_eq!(err.path, path);
    assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn dev_bundle_writes_a_working_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let files = write_dev_bundle(
        &out,
        &DevBundle {
            trust_domain: "cordon.test".into(),
            server_names: vec!["cordon.internal".into()],
            clients: vec!["admin".into(), "agent-1".into()],
        },
    )
    .unwrap();
    assert_eq!(mode(&out), 0o700);
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "admin.key",
            "admin.pem",
            "agent-1.key",
            "agent-1.pem",
            "ca.key",
            "ca.pem",
            "server.key",
            "server.pem"
        ]
    );
    for key in [&files.ca_key, &files.server_key] {
        assert_eq!(mode(key), 0o600);
    }
    assert_eq!(mode(&files.ca_cert), 0o644);

    let ca = CertificateAuthority::from_pem(
        &fs::read_to_string(&files.ca_cert).unwrap(),
        &fs::read_to_string(&files.ca_key).unwrap(),
    )
    .unwrap();
    let der = |path: &Path| {
        rustls_pki_types::pem::PemObject::from_pem_file(path)
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap()
    };
    verify(&ca, &der(&files.server_cert), KeyUsage::server_auth()).unwrap();
    for (name, cert, key) in &files.clients {
        assert_eq!(mode(key), 0o600);
        let cert = der(cert);
        verify(&ca, &cert, KeyUsage::client_auth()).unwrap();
        assert_eq!(
            &client_identity(&cert, Some("cordon.test")).unwrap().name,
            name
        );
    }
}

#[test]
fn dev_bundle_refuses_bad_names_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    for (client, check) in [
        (
            "../evil",
            (|e: &BundleError| matches!(e, BundleError::Name(NameError::Identity(_))))
                as fn(&BundleError) -> bool,
        ),
        ("ca", |e| matches!(e, BundleError::ReservedName(_))),
        ("server", |e| matches!(e, BundleError::ReservedName(_))),
    ] {
        let err = write_dev_bundle(
            &out,
            &DevBundle {
                trust_domain: "cordon.test".into(),
                server_names: vec![],
                clients: vec!["ok".into(), client.into()],
            },
        )
        .unwrap_err();
        assert!(check(&err), "{client}: {err}");
        assert!(!out.exists());
    }
}
