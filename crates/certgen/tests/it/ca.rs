//! The root CA: its shape, and loading it back from PEM.

use std::time::Duration;

use certgen::{CaParams, CertificateAuthority, ClientParams, LoadError, ServerParams};
use webpki::KeyUsage;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use crate::support::{parse, unix_now, verify};

#[test]
fn generated_ca_is_p256_ca_with_pathlen_zero_and_explicit_validity() {
    let validity = Duration::from_secs(30 * 24 * 3600);
    let ca = CertificateAuthority::generate(&CaParams {
        common_name: "Test Root".to_owned(),
        validity,
    })
    .unwrap();
    let now = unix_now();
    let cert = parse(ca.cert_der());

    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));

    let ku = cert.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert!(!ku.key_encipherment());

    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);

    assert_eq!(
        cert.subject().iter_common_name().next().unwrap().as_str(),
        Ok("Test Root")
    );
    assert_eq!(cert.subject(), cert.issuer());
    cert.verify_signature(None).expect("self-signed");

    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (not_before - (now - 60)).abs() <= 5,
        "{not_before} vs {now}"
    );
    assert!((not_after - (now + validity.as_secs() as i64)).abs() <= 5);
    assert_eq!(ca.not_after().unix_timestamp(), not_after);

    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
}

#[test]
fn loaded_ca_issues_certificates_that_chain_to_the_original() {
    let original = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let loaded = CertificateAuthority::from_pem(original.cert_pem(), original.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), original.cert_der());
    assert_eq!(loaded.cert_pem(), original.cert_pem());
    assert_eq!(loaded.not_after(), original.not_after());

    let client = loaded
        .issue_client(&ClientParams::new("alice", "cordon.test"))
        .unwrap();
    verify(&original, &client.cert_der, KeyUsage::client_auth()).unwrap();
    let server = loaded.issue_server(&ServerParams::default()).unwrap();
    verify(&original, &server.cert_der, KeyUsage::server_auth()).unwrap();

    // The authority key identifier of a leaf issued by the loaded CA is the CA's own subject
    // key identifier, so path builders that match on it find the CA.
    let ski = parse(original.cert_der())
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("ca has a subject key identifier");
    let aki = parse(&client.cert_der)
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("leaf has an authority key identifier");
    assert_eq!(aki, ski);
}

#[test]
fn loading_refuses_non_ca_mismatched_key_and_garbage() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let other = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let server = ca.issue_server(&ServerParams::default()).unwrap();

    let err = CertificateAuthority::from_pem(&server.cert_pem, server.key_pem.as_deref().unwrap())
        .unwrap_err();
    assert!(matches!(err, LoadError::NotCa), "{err}");

    let err = CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
    assert!(matches!(err, LoadError::KeyMismatch), "{err}");

    let err = CertificateAuthority::from_pem("not a certificate", ca.key_pem()).unwrap_err();
    assert!(matches!(err, LoadError::CertPem(_)), "{err}");

    let err = CertificateAuthority::from_pem(ca.cert_pem(), "not a key").unwrap_err();
    assert!(matches!(err, LoadError::Key(_)), "{err}");

    // The successful case with the same inputs, so the refusals above are about the inputs.
    CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
}

#[test]
fn debug_output_never_contains_the_key() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let issued = ca
        .issue_client(&ClientParams::new("alice", "cordon.test"))
        .unwrap();
    let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    assert!(!format!("{ca:?}").contains(&key_body(ca.key_pem())));
    let issued_debug = format!("{issued:?}");
    assert!(issued_debug.contains(&issued.serial_hex));
    assert!(!issued_debug.contains(&key_body(issued.key_pem.as_deref().unwrap())));
}
