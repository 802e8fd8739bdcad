//! The identity rule of `client_identity`.

use certgen::{
    CaParams, CertificateAuthority, ClientIdentity, ClientParams, IdentityError, NameError,
    client_identity,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};

use crate::support::{parse, sign_custom};

const TD: &str = "cordon.test";

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(&CaParams::default()).unwrap()
}

/// A certificate signed by `ca` with the given CNs and URI SANs.
fn cert_with(ca: &CertificateAuthority, cns: &[&str], uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // rcgen keeps one value per attribute type, so further CNs are pushed under the CN OID
    // spelled as a custom type, which encodes to the very same attribute.
    for (i, cn) in cns.iter().enumerate() {
        if i == 0 {
            dn.push(DnType::CommonName, *cn);
        } else {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), *cn);
        }
    }
    params.distinguished_name = dn;
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    sign_custom(ca, params)
}

#[test]
fn issued_client_certificate_yields_its_identity() {
    let ca = ca();
    let issued = ca.issue_client(&ClientParams::new("alice", TD)).unwrap();
    let id = client_identity(&issued.cert_der, Some(TD)).unwrap();
    assert_eq!(
        id,
        ClientIdentity {
            name: "alice".into(),
            spiffe_id: Some("spiffe://cordon.test/user/alice".into()),
            serial_hex: issued.serial_hex.clone(),
            not_after_unix: issued.not_after.unix_timestamp(),
        }
    );
    assert_eq!(
        id.not_after_unix,
        parse(&issued.cert_der).validity().not_after.timestamp()
    );
    // Without an expected trust domain, any trust domain is accepted.
    assert_eq!(client_identity(&issued.cert_der, None).unwrap(), id);
}

#[test]
fn other_trust_domain_is_refused() {
    let ca = ca();
    let issued = ca
        .issue_client(&ClientParams::new("alice", "elsewhere.test"))
        .unwrap();
    let err = client_identity(&issued.cert_der, Some(TD)).unwrap_err();
    assert!(
        matches!(err, IdentityError::ForeignTrustDomain { .. }),
        "{err}"
    );
}

#[test]
fn single_cn_or_single_spiffe_id_alone_is_accepted() {
    let ca = ca();
    let cn_only = client_identity(&cert_with(&ca, &["bob"], &[]), Some(TD)).unwrap();
    assert_eq!(cn_only.name, "bob");
    assert_eq!(cn_only.spiffe_id, None);

    let spiffe_only = client_identity(
        &cert_with(&ca, &[], &["spiffe://cordon.test/user/carol"]),
        Some(TD),
    )
    .unwrap();
    assert_eq!(spiffe_only.name, "carol");
    assert_eq!(
        spiffe_only.spiffe_id.as_deref(),
        Some("spiffe://cordon.test/user/carol")
    );

    // A non-SPIFFE URI SAN is ignored, the CN decides.
    let with_other_uri = client_identity(
        &cert_with(&ca, &["dave"], &["https://example.com/dave"]),
        Some(TD),
    )
    .unwrap();
    assert_eq!(with_other_uri.name, "dave");
    assert_eq!(with_other_uri.spiffe_id, None);
}

/// Whether an error is the one a case expects.
type Expected = fn(&IdentityError) -> bool;

#[test]
fn ambiguous_or_contradictory_identities_are_refused() {
    let ca = ca();
    let cases: Vec<(Vec<u8>, Expected)> = vec![
        (cert_with(&ca, &["a", "b"], &[]), |e| {
            matches!(e, IdentityError::SeveralCommonNames(2))
        }),
        (
            cert_with(
                &ca,
                &[],
                &["spiffe://cordon.test/user/a", "spiffe://cordon.test/user/b"],
            ),
            |e| matches!(e, IdentityError::SeveralSpiffeIds(2)),
        ),
        (
            // Upper-case scheme still counts as a second SPIFFE ID.
            cert_with(
                &ca,
                &[],
                &["spiffe://cordon.test/user/a", "SPIFFE://cordon.test/user/b"],
            ),
            |e| matches!(e, IdentityError::SeveralSpiffeIds(2)),
        ),
        (
            cert_with(&ca, &["mallory"], &["spiffe://cordon.test/user/alice"]),
            |e| matches!(e, IdentityError::Mismatch { .. }),
        ),
        (cert_with(&ca, &[], &[]), |e| {
            matches!(e, IdentityError::NoIdentity)
        }),
        (
            cert_with(&ca, &[], &["spiffe://cordon.test/service/alice"]),
            |e| matches!(e, IdentityError::MalformedSpiffeId(_)),
        ),
        (
            cert_with(&ca, &[], &["spiffe://cordon.test/user/a/b"]),
            |e| matches!(e, IdentityError::MalformedSpiffeId(_)),
        ),
        (cert_with(&ca, &["../etc"], &[]), |e| {
            matches!(e, IdentityError::Name(NameError::Identity(_)))
        }),
        (cert_with(&ca, &[], &["spiffe://cordon.test/user/"]), |e| {
            matches!(e, IdentityError::Name(NameError::Identity(_)))
        }),
        (b"garbage".to_vec(), |e| {
            matches!(e, IdentityError::Parse(_))
        }),
    ];
    for (i, (der, expected)) in cases.iter().enumerate() {
        let err = client_identity(der, Some(TD)).unwrap_err();
        assert!(expected(&err), "case {i}: {err}");
    }

    // Agreeing CN and SPIFFE ID are accepted (this is what the library issues).
    let agree = cert_with(&ca, &["alice"], &["spiffe://cordon.test/user/alice"]);
    assert_eq!(client_identity(&agree, Some(TD)).unwrap().name, "alice");
}
