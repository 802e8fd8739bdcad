//! CSR signing: only the key is taken from the request.

use certgen::{CaParams, CertificateAuthority, ClientParams, CsrError, IssueError, NameError};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    SanType, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::KeyUsage;
use x509_parser::extensions::GeneralName;

use crate::support::{is_eku_refusal, parse, verify, verify_at};

const TD: &str = "cordon.test";

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(&CaParams::default()).unwrap()
}

/// A CSR that asks for everything it must not get.
fn greedy_csr(alg: &'static SignatureAlgorithm) -> (KeyPair, String, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![
        SanType::DnsName("evil.example.com".try_into().unwrap()),
        SanType::URI("spiffe://cordon.test/user/admin".try_into().unwrap()),
    ];
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.pem().unwrap(), csr.der().to_vec())
}

#[test]
fn csr_gets_a_plain_client_certificate_whatever_it_asks_for() {
    let ca = ca();
    let (key, csr_pem, _) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let issued = ca
        .sign_csr(&csr_pem, &ClientParams::new("alice", TD))
        .unwrap();
    assert_eq!(issued.key_pem, None);

    let cert = parse(&issued.cert_der);
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    let cns: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cns, ["alice"]);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans.as_slice(),
        [GeneralName::URI("spiffe://cordon.test/user/alice")]
    );
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    assert_eq!(bc.path_len_constraint, None);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());

    verify(&ca, &issued.cert_der, KeyUsage::client_auth()).unwrap();
    let err = verify(&ca, &issued.cert_der, KeyUsage::server_auth()).unwrap_err();
    assert!(is_eku_refusal(&err), "{err:?}");
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!((not_before - (now - 60)).abs() <= 2);
    assert!((not_after - (now + 24 * 3600)).abs() <= 2);
}

/// The requester asked for CA:TRUE; a certificate it then signs with its key is refused.
#[test]
fn csr_asking_for_ca_yields_a_leaf_that_cannot_sign() {
    let ca = ca();
    let (key, csr_pem, _) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
    let issued = ca
        .sign_csr(&csr_pem, &ClientParams::new("alice", TD))
        .unwrap();
    let leaf_der = CertificateDer::from(issued.cert_der.clone());
    let leaf_issuer = Issuer::from_ca_cert_der(&leaf_der, key).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "bob");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let forged = params
        .signed_by(&KeyPair::generate().unwrap(), &leaf_issuer)
        .unwrap();
    let err = verify_at(
        &ca,
        forged.der(),
        &[leaf_der],
        KeyUsage::client_auth(),
        UnixTime::now(),
        None,
    )
    .unwrap_err();
    assert_eq!(err, webpki::Error::EndEntityUsedAsCa);
}

#[test]
fn p384_and_ed25519_keys_and_der_input_are_accepted() {
    let ca = ca();
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let (_, _, der) = greedy_csr(alg);
        let issued = ca
            .sign_csr_der(&der, &ClientParams::new("alice", TD))
            .unwrap();
        verify(&ca, &issued.cert_der, KeyUsage::client_auth()).unwrap();
    }
}

/// rcgen's own CSR parser refuses extensions it does not know; certgen ignores all of them.
#[test]
fn unknown_requested_extensions_are_ignored() {
    let ca = ca();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![0x05, 0x00],
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(rcgen::CertificateSigningRequestParams::from_pem(&csr).is_err());
    let issued = ca.sign_csr(&csr, &ClientParams::new("alice", TD)).unwrap();
    let cert = parse(&issued.cert_der);
    assert!(
        cert.iter_extensions()
            .all(|e| e.oid.to_id_string() != "1.3.6.1.4.1.99999.1")
    );
}

#[test]
fn tampered_garbage_and_misaddressed_csrs_are_refused() {
    let ca = ca();
    let params = ClientParams::new("alice", TD);
    let (_, csr_pem, der) = greedy_csr(&PKCS_ECDSA_P256_SHA256);

    // Change one letter of the signed subject: the DER still parses, the signature fails.
    let at = der.windows(5).position(|w| w == b"admin").unwrap();
    let mut tampered = der.clone();
    tampered[at] = b'b';
    assert!(matches!(
        ca.sign_csr_der(&tampered, &params),
        Err(CsrError::Signature)
    ));
    // The untampered request signs, so the refusal above is the signature's.
    ca.sign_csr_der(&der, &params).unwrap();

    assert!(matches!(
        ca.sign_csr("garbage", &params),
        Err(CsrError::Pem(_))
    ));
    let junk_pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert!(matches!(
        ca.sign_csr(junk_pem, &params),
        Err(CsrError::Parse(_))
    ));

    let err = ca
        .sign_csr(&csr_pem, &ClientParams::new("../root", TD))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CsrError::Issue(IssueError::Name(NameError::Identity(_)))
        ),
        "{err}"
    );
}
