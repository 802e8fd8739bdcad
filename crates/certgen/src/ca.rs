//! The certificate authority: generation, loading and issuance.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::names::{self, NameError};

/// How far `notBefore` is moved into the past, so that peers whose clock lags a little still
/// accept a certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Default lifetime of a client certificate.
pub const DEFAULT_CLIENT_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// Default lifetime of a server certificate.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Default lifetime of a development root CA.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Parameters of a new root CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    /// Subject common name of the CA.
    pub common_name: String,
    /// Lifetime, counted from now (`notBefore` is backdated by [`BACKDATE`] on top of it).
    pub validity: Duration,
}

impl Default for CaParams {
    fn default() -> Self {
        Self {
            common_name: "Cordon Dev Root CA".to_owned(),
            validity: DEFAULT_CA_VALIDITY,
        }
    }
}

/// Parameters of a server certificate.
///
/// The certificate always names `localhost`, `127.0.0.1` and `::1`; `extra_names` adds DNS
/// names or IP addresses. Without overrides, the window is `[now - 60 s, now + validity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    /// Additional DNS names or IP addresses (an entry that parses as an IP is an IP SAN).
    pub extra_names: Vec<String>,
    /// Lifetime, counted from `not_before` if given, else from now.
    pub validity: Duration,
    /// Explicit `notBefore`, for tests that need certificates that are not yet valid.
    pub not_before: Option<OffsetDateTime>,
    /// Explicit `notAfter`, for tests that need expired certificates.
    pub not_after: Option<OffsetDateTime>,
}

impl Default for ServerParams {
    fn default() -> Self {
        Self {
            extra_names: Vec::new(),
            validity: DEFAULT_SERVER_VALIDITY,
            not_before: None,
            not_after: None,
        }
    }
}

/// Parameters of a client certificate for one identity.
///
/// Without overrides, the window is `[now - 60 s, now + validity]`; with `not_before` it is
/// `[not_before, not_before + validity]`; `not_after` replaces the end in both cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The identity, checked by [`names::validate_identity`]; it becomes the CN and the last
    /// segment of the SPIFFE ID.
    pub identity: String,
    /// The SPIFFE trust domain, checked by [`names::validate_trust_domain`].
    pub trust_domain: String,
    /// Lifetime; the server passes its configured cap here (default 24 hours).
    pub validity: Duration,
    /// Explicit `notBefore`.
    pub not_before: Option<OffsetDateTime>,
    /// Explicit `notAfter`.
    pub not_after: Option<OffsetDateTime>,
}

impl ClientParams {
    /// Parameters with the default 24-hour validity and no overrides.
    pub fn new(identity: impl Into<String>, trust_domain: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            trust_domain: trust_domain.into(),
            validity: DEFAULT_CLIENT_VALIDITY,
            not_before: None,
            not_after: None,
        }
    }
}

/// A freshly issued certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The PKCS#8 private key, PEM, when this library generated it (`None` for a CSR).
    pub key_pem: Option<String>,
    /// Lowercase hex of the serial number without leading zero bytes (32 characters).
    pub serial_hex: String,
    /// `notBefore`, whole seconds as written in the certificate.
    pub not_before: OffsetDateTime,
    /// `notAfter`, whole seconds as written in the certificate.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for Issued {
    // The private key is left out so that logging an `Issued` can never leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "[elided]"))
            .finish_non_exhaustive()
    }
}

/// Errors of an invalid validity window.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidityError {
    /// The requested lifetime is zero.
    #[error("validity must be longer than zero")]
    Zero,
    /// The requested lifetime does not fit in a date.
    #[error("validity is out of range")]
    OutOfRange,
    /// `notAfter` is not after `notBefore`.
    #[error("not_after {not_after} is not after not_before {not_before}")]
    Empty {
        /// The effective `notBefore`.
        not_before: OffsetDateTime,
        /// The effective `notAfter`.
        not_after: OffsetDateTime,
    },
}

/// Errors of [`CertificateAuthority::generate`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The validity is unusable.
    #[error(transparent)]
    Validity(#[from] ValidityError),
    /// rcgen refused the parameters or could not sign.
    #[error("generating the ca certificate failed")]
    Rcgen(#[source] rcgen::Error),
}

/// Errors of [`CertificateAuthority::from_pem`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The certificate is not a PEM `CERTIFICATE`.
    #[error("the ca certificate is not valid pem: {0}")]
    CertPem(String),
    /// The certificate DER does not parse.
    #[error("the ca certificate does not parse: {0}")]
    CertDer(String),
    /// The certificate lacks `basicConstraints CA:TRUE`.
    #[error("the certificate is not a ca (basicConstraints CA:TRUE missing)")]
    NotCa,
    /// The certificate has a key usage extension without keyCertSign.
    #[error("the ca certificate's key usage does not allow keyCertSign")]
    NoCertSign,
    /// The private key does not parse.
    #[error("the ca private key does not parse")]
    Key(#[source] rcgen::Error),
    /// The private key is not the one the certificate certifies.
    #[error("the ca private key does not match the ca certificate")]
    KeyMismatch,
}

/// Errors of issuing a server or client certificate.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IssueError {
    /// An identity, trust domain or server name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The validity window is unusable.
    #[error(transparent)]
    Validity(#[from] ValidityError),
    /// rcgen refused the parameters or could not sign.
    #[error("signing the certificate failed")]
    Rcgen(#[source] rcgen::Error),
}

/// A certificate authority that holds its signing key.
///
/// It is `Send + Sync`; share it with an `Arc`. Every issuing method takes `&self`.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    pub(crate) key_identifier: Vec<u8>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    // The key is left out on purpose: a Debug print must never leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a root CA: ECDSA P-256, `CA:TRUE, pathlen:0`, key usage keyCertSign, cRLSign
    /// and digitalSignature, a random 128-bit serial, valid `[now - 60 s, now + validity]`.
    pub fn generate(params: &CaParams) -> Result<Self, GenerateError> {
        let now = now();
        let (not_before, not_after) = window(now, params.validity, None, None)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(GenerateError::Rcgen)?;
        let mut cert_params = CertificateParams::default();
        cert_params.distinguished_name = common_name(&params.common_name);
        cert_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cert_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        cert_params.not_before = not_before;
        cert_params.not_after = not_after;
        cert_params.serial_number = Some(random_serial().0);
        let cert = cert_params
            .self_signed(&key)
            .map_err(GenerateError::Rcgen)?;
        let key_identifier = cert_params.key_identifier(&key);
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem,
            key_identifier,
            issuer: Issuer::new(cert_params, key),
            not_after,
        })
    }

    /// Loads an existing CA from its certificate and PKCS#8 private key, both PEM.
    ///
    /// Refuses a certificate without `CA:TRUE`, one whose key usage excludes keyCertSign, and a
    /// key that is not the certificate's. The CA's own expiry is not checked here; see
    /// [`Self::not_after`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, LoadError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| LoadError::CertPem(e.to_string()))?;
        let (rest, x509) =
            X509Certificate::from_der(&cert_der).map_err(|e| LoadError::CertDer(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LoadError::CertDer("trailing bytes".to_owned()));
        }
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| LoadError::CertDer(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(LoadError::NotCa);
        }
        let key_usage = x509
            .key_usage()
            .map_err(|e| LoadError::CertDer(e.to_string()))?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(LoadError::NoCertSign);
        }
        let key = KeyPair::from_pem(key_pem).map_err(LoadError::Key)?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(LoadError::KeyMismatch);
        }
        let key_identifier = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .unwrap_or_else(|| CertificateParams::default().key_identifier(&key));
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(LoadError::Key)?;
        Ok(Self {
            cert_pem: cert_der_to_pem(&cert_der),
            cert_der: cert_der.into_owned(),
            key_pem: key_pem.to_owned(),
            key_identifier,
            issuer,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM, as generated or loaded.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate's `notAfter`.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a server certificate with a new P-256 key: SANs `localhost`, `127.0.0.1`, `::1`
    /// plus `extra_names`, EKU serverAuth only, key usage digitalSignature, `CA:FALSE`.
    pub fn issue_server(&self, params: &ServerParams) -> Result<Issued, IssueError> {
        let mut sans: Vec<SanType> = vec![
            SanType::DnsName("localhost".try_into().map_err(IssueError::Rcgen)?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
        ];
        for name in &params.extra_names {
            let san = server_san(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let (not_before, not_after) =
            window(now(), params.validity, params.not_before, params.not_after)?;
        let mut cert_params = CertificateParams::default();
        cert_params.distinguished_name = common_name("cordon server");
        cert_params.subject_alt_names = sans;
        cert_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        cert_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        cert_params.is_ca = IsCa::ExplicitNoCa;
        cert_params.not_before = not_before;
        cert_params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IssueError::Rcgen)?;
        self.sign(cert_params, &key, Some(key.serialize_pem()))
    }

    /// Issues a client certificate with a new P-256 key, returned once in
    /// [`Issued::key_pem`] and never kept: `CN=<identity>`, URI SAN
    /// `spiffe://<trust_domain>/user/<identity>`, EKU clientAuth only, key usage
    /// digitalSignature, `CA:FALSE`.
    pub fn issue_client(&self, params: &ClientParams) -> Result<Issued, IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IssueError::Rcgen)?;
        let cert_params = self.client_cert_params(params)?;
        self.sign(cert_params, &key, Some(key.serialize_pem()))
    }

    /// The certificate parameters of a client certificate, built only from `params`.
    pub(crate) fn client_cert_params(
        &self,
        params: &ClientParams,
    ) -> Result<CertificateParams, IssueError> {
        let spiffe = names::spiffe_id(&params.trust_domain, &params.identity)?;
        let (not_before, not_after) =
            window(now(), params.validity, params.not_before, params.not_after)?;
        let mut cert_params = CertificateParams::default();
        cert_params.distinguished_name = common_name(&params.identity);
        cert_params.subject_alt_names =
            vec![SanType::URI(spiffe.try_into().map_err(IssueError::Rcgen)?)];
        cert_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        cert_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        cert_params.is_ca = IsCa::ExplicitNoCa;
        cert_params.not_before = not_before;
        cert_params.not_after = not_after;
        Ok(cert_params)
    }

    /// Signs `cert_params` for `public_key` with a fresh random serial.
    pub(crate) fn sign(
        &self,
        mut cert_params: CertificateParams,
        public_key: &impl PublicKeyData,
        key_pem: Option<String>,
    ) -> Result<Issued, IssueError> {
        let (serial, serial_hex) = random_serial();
        cert_params.serial_number = Some(serial);
        cert_params.use_authority_key_identifier_extension = true;
        let cert = cert_params
            .signed_by(public_key, &self.issuer)
            .map_err(IssueError::Rcgen)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem,
            serial_hex,
            not_before: cert_params.not_before,
            not_after: cert_params.not_after,
        })
    }
}

fn cert_der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The current time in whole seconds, since certificates cannot carry fractions.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Truncates to whole seconds, since certificates and CRLs cannot carry fractions.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Computes the validity window; see [`ClientParams`] for the rule.
fn window(
    now: OffsetDateTime,
    validity: Duration,
    not_before: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), ValidityError> {
    if validity.is_zero() {
        return Err(ValidityError::Zero);
    }
    let validity = time::Duration::try_from(validity).map_err(|_| ValidityError::OutOfRange)?;
    let start = not_before.map_or(now, whole_seconds);
    let not_before = match not_before {
        Some(t) => whole_seconds(t),
        None => now - BACKDATE,
    };
    let not_after = match not_after {
        Some(t) => whole_seconds(t),
        None => start
            .checked_add(validity)
            .filter(|t| t.year() <= 9999)
            .ok_or(ValidityError::OutOfRange)?,
    };
    if not_after <= not_before {
        return Err(ValidityError::Empty {
            not_before,
            not_after,
        });
    }
    Ok((not_before, not_after))
}

/// A random positive 128-bit serial and its hex form.
///
/// The top bit is set so that the magnitude is always exactly 16 bytes (the DER INTEGER gets a
/// leading zero to stay positive); that leaves 127 random bits, far above the 64 that the
/// CA/Browser Forum requires, and makes the hex form a fixed 32 characters.
pub(crate) fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] |= 0x80;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// Parses one configured server name into a SAN: an IP address, or a DNS name made of labels of
/// letters, digits and hyphens, optionally with a leading `*.` wildcard label.
fn server_san(name: &str) -> Result<SanType, IssueError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    let labels_ok = !body.is_empty()
        && name.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(NameError::ServerName(name.to_owned()).into());
    }
    Ok(SanType::DnsName(
        name.to_owned().try_into().map_err(IssueError::Rcgen)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rules() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let day = Duration::from_secs(86_400);
        let (nb, na) = window(now, day, None, None).unwrap();
        assert_eq!(nb.unix_timestamp(), 1_000_000 - 60);
        assert_eq!(na.unix_timestamp(), 1_000_000 + 86_400);
        let later = now + time::Duration::hours(1);
        let (nb, na) = window(now, day, Some(later), None).unwrap();
        assert_eq!((nb, na), (later, later + time::Duration::days(1)));
        assert_eq!(
            window(now, Duration::ZERO, None, None),
            Err(ValidityError::Zero)
        );
        assert!(matches!(
            window(now, day, None, Some(now - time::Duration::hours(1))),
            Err(ValidityError::Empty { .. })
        ));
        assert_eq!(
            window(now, Duration::from_secs(u64::MAX), None, None),
            Err(ValidityError::OutOfRange)
        );
    }

    #[test]
    fn server_names() {
        assert!(server_san("cordon.example.com").is_ok());
        assert!(server_san("*.example.com").is_ok());
        assert!(server_san("10.0.0.1").is_ok());
        assert!(server_san("fe80::1").is_ok());
        for bad in ["", "a..b", "-a.com", "a b", "a/b", "*.", "a.*.com", "é.com"] {
            assert!(server_san(bad).is_err(), "{bad:?}");
        }
    }
}
