//! Server and client certificates, checked with rustls-webpki and x509-parser.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use certgen::{
    CaParams, CertificateAuthority, ClientParams, IssueError, NameError, ServerParams,
    ValidityError,
};
use rcgen::{CertificateParams, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, DnsName, IpAddr as PkiIpAddr, ServerName, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;

use crate::support::{is_eku_refusal, parse, unix_now, verify, verify_at};

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(&CaParams::default()).unwrap()
}

#[test]
fn client_certificate_passes_as_client_and_is_refused_as_server() {
    let ca = ca();
    let client = ca
        .issue_client(&ClientParams::new("alice", "cordon.test"))
        .unwrap();
    verify(&ca, &client.cert_der, KeyUsage::client_auth()).unwrap();
    let err = verify(&ca, &client.cert_der, KeyUsage::server_auth()).unwrap_err();
    assert!(is_eku_refusal(&err), "{err:?}");

    // A different CA with the same name does not accept it: the signature does not match.
    let err = verify(&self::ca(), &client.cert_der, KeyUsage::client_auth()).unwrap_err();
    assert_eq!(err, webpki::Error::InvalidSignatureForPublicKey);
}

#[test]
fn server_certificate_passes_as_server_and_is_refused_as_client() {
    let ca = ca();
    let server = ca
        .issue_server(&ServerParams {
            extra_names: vec!["cordon.example.com".into(), "10.1.2.3".into()],
            ..ServerParams::default()
        })
        .unwrap();
    verify(&ca, &server.cert_der, KeyUsage::server_auth()).unwrap();
    let err = verify(&ca, &server.cert_der, KeyUsage::client_auth()).unwrap_err();
    assert!(is_eku_refusal(&err), "{err:?}");

    let der = CertificateDer::from(server.cert_der.as_slice());
    let ee = EndEntityCert::try_from(&der).unwrap();
    for name in ["localhost", "cordon.example.com"] {
        let dns = ServerName::DnsName(DnsName::try_from(name).unwrap().to_owned());
        ee.verify_is_valid_for_subject_name(&dns).unwrap();
    }
    for ip in ["127.0.0.1", "::1", "10.1.2.3"] {
        let ip: IpAddr = ip.parse().unwrap();
        ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(PkiIpAddr::from(ip)))
            .unwrap();
    }
    let other = ServerName::DnsName(DnsName::try_from("evil.example.com").unwrap().to_owned());
    assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
}

#[test]
fn server_certificate_has_exactly_the_specified_sans_and_eku() {
    let ca = ca();
    let server = ca
        .issue_server(&ServerParams {
            // A duplicate of a default name is written once.
            extra_names: vec!["api.internal".into(), "localhost".into(), "fd00::7".into()],
            ..ServerParams::default()
        })
        .unwrap();
    let cert = parse(&server.cert_der);
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
            }
            GeneralName::IPAddress(b) => {
                format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()))
            }
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        [
            "dns:localhost",
            "ip:127.0.0.1",
            "ip:::1",
            "dns:api.internal",
            "ip:fd00::7"
        ]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(!eku.client_auth && !eku.any && eku.other.is_empty());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
}

#[test]
fn client_certificate_has_cn_spiffe_uri_and_client_auth_only() {
    let ca = ca();
    let client = ca
        .issue_client(&ClientParams::new("agent-7", "cordon.test"))
        .unwrap();
    let cert = parse(&client.cert_der);
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cns, ["agent-7"]);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans.as_slice(),
        [GeneralName::URI("spiffe://cordon.test/user/agent-7")]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && eku.other.is_empty());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(cert.issuer(), parse(ca.cert_der()).subject());
}

#[test]
fn serials_are_random_positive_128_bit() {
    let ca = ca();
    let mut seen = HashSet::new();
    for _ in 0..64 {
        let issued = ca
            .issue_client(&ClientParams::new("alice", "cordon.test"))
            .unwrap();
        let cert = parse(&issued.cert_der);
        let raw = cert.raw_serial();
        // DER INTEGER content: a zero byte keeps it positive, then 16 bytes of magnitude.
        assert_eq!(raw.len(), 17, "{raw:02x?}");
        assert_eq!(raw[0], 0);
        assert!(raw[1] & 0x80 != 0);
        assert_eq!(hex::encode(&raw[1..]), issued.serial_hex);
        assert_eq!(issued.serial_hex.len(), 32);
        assert!(seen.insert(issued.serial_hex));
    }
    // With 127 random bits, any collision among the low 64 bits would point at a broken RNG.
    let low_halves: HashSet<_> = seen.iter().map(|s| s[16..].to_owned()).collect();
    assert_eq!(low_halves.len(), seen.len());
}

#[test]
fn not_before_is_backdated_one_minute_and_validity_is_honoured() {
    let ca = ca();
    let now = unix_now();
    let mut params = ClientParams::new("alice", "cordon.test");
    params.validity = Duration::from_secs(3600);
    let issued = ca.issue_client(&params).unwrap();
    let cert = parse(&issued.cert_der);
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (not_before - (now - 60)).abs() <= 2,
        "{not_before} vs {now}"
    );
    assert!(
        (not_after - (now + 3600)).abs() <= 2,
        "{not_after} vs {now}"
    );
    assert_eq!(issued.not_before.unix_timestamp(), not_before);
    assert_eq!(issued.not_after.unix_timestamp(), not_after);

    let server = ca.issue_server(&ServerParams::default()).unwrap();
    let not_before = parse(&server.cert_der).validity().not_before.timestamp();
    assert!((not_before - (now - 60)).abs() <= 2);
}

#[test]
fn explicit_windows_make_expired_and_not_yet_valid_certificates() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);

    let mut expired = ClientParams::new("alice", "cordon.test");
    expired.not_before = Some(now - 3 * hour);
    expired.not_after = Some(now - 2 * hour);
    let expired = ca.issue_client(&expired).unwrap();
    let err = verify(&ca, &expired.cert_der, KeyUsage::client_auth()).unwrap_err();
    assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");
    // The same certificate verifies inside its window, so the refusal is about time only.
    let inside = UnixTime::since_unix_epoch(Duration::from_secs(
        (now - time::Duration::minutes(150)).unix_timestamp() as u64,
    ));
    verify_at(
        &ca,
        &expired.cert_der,
        &[],
        KeyUsage::client_auth(),
        inside,
        None,
    )
    .unwrap();

    let mut future = ClientParams::new("alice", "cordon.test");
    future.not_before = Some(now + hour);
    let future = ca.issue_client(&future).unwrap();
    assert_eq!(
        (future.not_after - future.not_before).whole_seconds(),
        24 * 3600
    );
    let err = verify(&ca, &future.cert_der, KeyUsage::client_auth()).unwrap_err();
    assert!(
        matches!(err, webpki::Error::CertNotValidYet { .. }),
        "{err:?}"
    );

    let server = ca
        .issue_server(&ServerParams {
            not_before: Some(now - 3 * hour),
            not_after: Some(now - 2 * hour),
            ..ServerParams::default()
        })
        .unwrap();
    let err = verify(&ca, &server.cert_der, KeyUsage::server_auth()).unwrap_err();
    assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");

    let mut empty = ClientParams::new("alice", "cordon.test");
    empty.not_after = Some(now - hour);
    assert!(matches!(
        ca.issue_client(&empty),
        Err(IssueError::Validity(ValidityError::Empty { .. }))
    ));
    let mut zero = ClientParams::new("alice", "cordon.test");
    zero.validity = Duration::ZERO;
    assert!(matches!(
        ca.issue_client(&zero),
        Err(IssueError::Validity(ValidityError::Zero))
    ));
}

#[test]
fn invalid_names_are_refused() {
    let ca = ca();
    for identity in ["../etc/passwd", "", ".x", "a/b", "a b"] {
        let err = ca
            .issue_client(&ClientParams::new(identity, "cordon.test"))
            .unwrap_err();
        assert!(
            matches!(err, IssueError::Name(NameError::Identity(_))),
            "{identity:?}: {err}"
        );
    }
    let err = ca
        .issue_client(&ClientParams::new("alice", "Bad Domain"))
        .unwrap_err();
    assert!(matches!(err, IssueError::Name(NameError::TrustDomain(_))));
    let err = ca
        .issue_server(&ServerParams {
            extra_names: vec!["bad name".into()],
            ..ServerParams::default()
        })
        .unwrap_err();
    assert!(matches!(err, IssueError::Name(NameError::ServerName(_))));
}

/// A certificate the library issues can never act as a CA, so nothing chains through it.
///
/// rustls-webpki does not enforce a trust anchor's own pathLenConstraint (anchors carry only
/// subject, key and name constraints), so the root's `pathlen:0` alone would not stop an
/// intermediate; what stops a chain is that every leaf carries `CA:FALSE`.
#[test]
fn issued_leaves_cannot_sign_certificates() {
    let ca = ca();
    let client = ca
        .issue_client(&ClientParams::new("alice", "cordon.test"))
        .unwrap();
    let leaf_issuer = Issuer::from_ca_cert_der(
        &CertificateDer::from(client.cert_der.as_slice()),
        KeyPair::from_pem(client.key_pem.as_deref().unwrap()).unwrap(),
    )
    .unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bob");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let grandchild = params
        .signed_by(&KeyPair::generate().unwrap(), &leaf_issuer)
        .unwrap();

    let intermediates = [CertificateDer::from(client.cert_der.clone())];
    let err = verify_at(
        &ca,
        grandchild.der(),
        &intermediates,
        KeyUsage::client_auth(),
        UnixTime::now(),
        None,
    )
    .unwrap_err();
    assert_eq!(err, webpki::Error::EndEntityUsedAsCa);
    // The grandchild is correctly signed by the leaf's key: only the leaf's CA:FALSE refused it.
    parse(grandchild.der())
        .verify_signature(Some(parse(&client.cert_der).public_key()))
        .unwrap();
}
