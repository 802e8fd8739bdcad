//! CRLs, checked with rustls-webpki's revocation logic (what the server's client verifier uses).

use certgen::{
    CaParams, CertificateAuthority, ClientParams, CrlError, RevocationReason, Revoked, SerialError,
};
use time::OffsetDateTime;
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, KeyUsage, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

use x509_parser::prelude::FromDer;

use crate::support::{parse, verify_at};

const TD: &str = "cordon.test";

/// Verifies a client certificate with the CRL, refusing unknown status (as the server does).
fn verify_with_crl(
    ca: &CertificateAuthority,
    leaf: &[u8],
    crl_der: &[u8],
) -> Result<(), webpki::Error> {
    let crl: CertRevocationList<'_> = BorrowedCertRevocationList::from_der(crl_der)?.into();
    let crls = [&crl];
    let options = RevocationOptionsBuilder::new(&crls)
        .unwrap()
        .with_depth(RevocationCheckDepth::EndEntity)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .build();
    verify_at(
        ca,
        leaf,
        &[],
        KeyUsage::client_auth(),
        rustls_pki_types::UnixTime::now(),
        Some(options),
    )
}

fn hour_from_now() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::hours(1)
}

#[test]
fn revoked_certificate_is_refused_and_others_pass() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let revoked = ca.issue_client(&ClientParams::new("alice", TD)).unwrap();
    let kept = ca.issue_client(&ClientParams::new("bob", TD)).unwrap();
    let revoked_at = OffsetDateTime::now_utc();
    let crl = ca
        .crl(
            &[Revoked {
                // Upper case on purpose: serials are normalised.
                serial_hex: revoked.serial_hex.to_uppercase(),
                revoked_at,
                reason: RevocationReason::KeyCompromise,
            }],
            7,
            hour_from_now(),
        )
        .unwrap();

    assert_eq!(
        verify_with_crl(&ca, &revoked.cert_der, &crl.der),
        Err(webpki::Error::CertRevoked)
    );
    verify_with_crl(&ca, &kept.cert_der, &crl.der).unwrap();

    // The entry carries the reason and time; the CRL carries its number and issuer.
    let parsed = BorrowedCertRevocationList::from_der(&crl.der).unwrap();
    let crl_list: CertRevocationList<'_> = parsed.into();
    let entry = crl_list
        .find_serial(parse(&revoked.cert_der).raw_serial())
        .unwrap()
        .expect("serial listed");
    assert_eq!(
        entry.reason_code,
        Some(webpki::RevocationReason::KeyCompromise)
    );
    assert_eq!(
        entry.revocation_date.as_secs() as i64,
        revoked_at.unix_timestamp()
    );
    let (_, x509_crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).unwrap();
    assert_eq!(
        x509_crl.crl_number().map(|n| n.to_string()),
        Some("7".into())
    );
    assert_eq!(x509_crl.issuer(), parse(ca.cert_der()).subject());
    assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
    assert_eq!(crl.crl_number, 7);
}

#[test]
fn empty_crl_and_crl_from_loaded_ca_are_accepted() {
    let generated = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let loaded = CertificateAuthority::from_pem(generated.cert_pem(), generated.key_pem()).unwrap();
    let client = loaded
        .issue_client(&ClientParams::new("alice", TD))
        .unwrap();
    let empty = loaded.crl(&[], 1, hour_from_now()).unwrap();
    verify_with_crl(&generated, &client.cert_der, &empty.der).unwrap();
    let with_entry = loaded
        .crl(
            &[Revoked {
                serial_hex: client.serial_hex.clone(),
                revoked_at: OffsetDateTime::now_utc(),
                reason: RevocationReason::Unspecified,
            }],
            2,
            hour_from_now(),
        )
        .unwrap();
    assert_eq!(
        verify_with_crl(&generated, &client.cert_der, &with_entry.der),
        Err(webpki::Error::CertRevoked)
    );
}

#[test]
fn crl_of_another_ca_is_not_authoritative() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let other = CertificateAuthority::generate(&CaParams {
        common_name: "Other CA".into(),
        ..CaParams::default()
    })
    .unwrap();
    let client = ca.issue_client(&ClientParams::new("alice", TD)).unwrap();
    let foreign = other.crl(&[], 1, hour_from_now()).unwrap();
    assert_eq!(
        verify_with_crl(&ca, &client.cert_der, &foreign.der),
        Err(webpki::Error::UnknownRevocationStatus)
    );
}

#[test]
fn bad_crl_inputs_are_refused() {
    let ca = CertificateAuthority::generate(&CaParams::default()).unwrap();
    let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert!(matches!(ca.crl(&[], 1, past), Err(CrlError::NextUpdate(_))));
    let bad = Revoked {
        serial_hex: "not-hex".into(),
        revoked_at: OffsetDateTime::now_utc(),
        reason: RevocationReason::Superseded,
    };
    assert!(matches!(
        ca.crl(&[bad], 1, hour_from_now()),
        Err(CrlError::Serial(SerialError(_)))
    ));
}

#[test]
fn reason_names_round_trip() {
    for reason in RevocationReason::ALL {
        assert_eq!(reason.as_str().parse::<RevocationReason>(), Ok(reason));
    }
    assert!("hold".parse::<RevocationReason>().is_err());
}
