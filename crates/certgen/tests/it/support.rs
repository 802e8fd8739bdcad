//! Helpers shared by the test modules.

use certgen::CertificateAuthority;
use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyUsage, RevocationOptions};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The signature algorithms of rustls' ring provider that matter for these certificates.
pub(crate) static ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

pub(crate) fn now() -> UnixTime {
    UnixTime::now()
}

/// Verifies `leaf` (with optional intermediates) up to the CA for `usage` at `time`.
pub(crate) fn verify_at(
    ca: &CertificateAuthority,
    leaf: &[u8],
    intermediates: &[CertificateDer<'_>],
    usage: KeyUsage,
    time: UnixTime,
    revocation: Option<RevocationOptions<'_>>,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca.cert_der())?;
    let leaf = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&leaf)?;
    ee.verify_for_usage(
        ALGS,
        &[anchor],
        intermediates,
        time,
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}

pub(crate) fn verify(
    ca: &CertificateAuthority,
    leaf: &[u8],
    usage: KeyUsage,
) -> Result<(), webpki::Error> {
    verify_at(ca, leaf, &[], usage, now(), None)
}

pub(crate) fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty());
    cert
}

pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Signs arbitrary rcgen parameters with the CA's key, for certificates the library refuses to
/// make (odd names, several CNs, intermediate CAs).
pub(crate) fn sign_custom(ca: &CertificateAuthority, mut params: CertificateParams) -> Vec<u8> {
    let issuer = Issuer::from_ca_cert_der(
        ca.cert_der(),
        KeyPair::from_pem(ca.key_pem()).expect("ca key parses"),
    )
    .expect("ca certificate parses");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key generation");
    params
        .signed_by(&key, &issuer)
        .expect("signing")
        .der()
        .to_vec()
}

/// A matcher for the EKU refusal, which webpki reports in two forms across versions.
pub(crate) fn is_eku_refusal(err: &webpki::Error) -> bool {
    #[allow(deprecated)]
    let legacy = matches!(err, webpki::Error::RequiredEkuNotFound);
    legacy || matches!(err, webpki::Error::RequiredEkuNotFoundContext(_))
}
