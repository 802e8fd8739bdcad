//! Reading the caller's identity out of a verified client certificate.

use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::names::{self, NameError};

/// The identity carried by a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The identity name (a valid [`names::validate_identity`] name).
    pub name: String,
    /// The SPIFFE ID, when the certificate has one.
    pub spiffe_id: Option<String>,
    /// Lowercase hex of the serial number without leading zero bytes.
    pub serial_hex: String,
    /// `notAfter` as Unix seconds.
    pub not_after_unix: i64,
}

/// Why a certificate carries no acceptable identity.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The DER does not parse as a certificate.
    #[error("the certificate does not parse: {0}")]
    Parse(String),
    /// The subject has more than one common name.
    #[error("the certificate has {0} common names, at most one is allowed")]
    SeveralCommonNames(usize),
    /// A common name is not a UTF-8 string.
    #[error("the certificate's common name is not a string")]
    CommonNameEncoding,
    /// There is more than one `spiffe://` URI SAN.
    #[error("the certificate has {0} spiffe uri sans, at most one is allowed")]
    SeveralSpiffeIds(usize),
    /// Neither a common name nor a SPIFFE ID is present.
    #[error("the certificate has neither a common name nor a spiffe id")]
    NoIdentity,
    /// The SPIFFE ID is not of the form `spiffe://<trust-domain>/user/<name>`.
    #[error("spiffe id {0:?} is not of the form spiffe://<trust-domain>/user/<name>")]
    MalformedSpiffeId(String),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("spiffe id {spiffe_id:?} is not in trust domain {expected:?}")]
    ForeignTrustDomain {
        /// The SPIFFE ID found.
        spiffe_id: String,
        /// The trust domain required.
        expected: String,
    },
    /// The common name and the SPIFFE ID name two different identities.
    #[error("common name {common_name:?} does not match spiffe id {spiffe_id:?}")]
    Mismatch {
        /// The common name found.
        common_name: String,
        /// The SPIFFE ID found.
        spiffe_id: String,
    },
    /// The name found is not a valid identity.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Extracts the identity from a client certificate (DER) that TLS has already verified.
///
/// This function does not verify signatures or validity; it only reads. The rule:
/// - at most one subject common name (CN) and at most one `spiffe://` URI SAN, else rejected;
///   other URI SANs, DNS SANs and IP SANs are ignored;
/// - with a SPIFFE ID, it must be exactly `spiffe://<trust-domain>/user/<name>` (one path
///   segment after `/user/`); when `trust_domain` is `Some`, the trust domain must equal it;
///   the identity is `<name>`, and a CN, if present, must equal `<name>`;
/// - without a SPIFFE ID, the single CN is the identity;
/// - the identity must match `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`.
pub fn client_identity(
    cert_der: &[u8],
    trust_domain: Option<&str>,
) -> Result<ClientIdentity, IdentityError> {
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Parse("trailing bytes".to_owned()));
    }

    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| IdentityError::CommonNameEncoding)?;
    if common_names.len() > 1 {
        return Err(IdentityError::SeveralCommonNames(common_names.len()));
    }
    let common_name = common_names.into_iter().next();

    let sans = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let spiffe_ids: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if has_spiffe_scheme(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    if spiffe_ids.len() > 1 {
        return Err(IdentityError::SeveralSpiffeIds(spiffe_ids.len()));
    }

    let (name, spiffe_id) = match (spiffe_ids.first(), common_name) {
        (Some(spiffe_id), common_name) => {
            let name = spiffe_user(spiffe_id, trust_domain)?;
            if let Some(cn) = common_name
                && cn != name
            {
                return Err(IdentityError::Mismatch {
                    common_name: cn,
                    spiffe_id: (*spiffe_id).to_owned(),
                });
            }
            (name.to_owned(), Some((*spiffe_id).to_owned()))
        }
        (None, Some(cn)) => (cn, None),
        (None, None) => return Err(IdentityError::NoIdentity),
    };
    names::validate_identity(&name)?;

    Ok(ClientIdentity {
        name,
        spiffe_id,
        serial_hex: serial_hex(cert.raw_serial()),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// The scheme is compared case-insensitively so that `SPIFFE://` cannot slip past the
/// "at most one SPIFFE ID" rule; the strict parser then refuses anything but lowercase.
fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://"))
}

/// Returns `<name>` of `spiffe://<trust-domain>/user/<name>`.
fn spiffe_user<'a>(spiffe_id: &'a str, expected: Option<&str>) -> Result<&'a str, IdentityError> {
    let malformed = || IdentityError::MalformedSpiffeId(spiffe_id.to_owned());
    let rest = spiffe_id.strip_prefix("spiffe://").ok_or_else(malformed)?;
    let (domain, path) = rest.split_once('/').ok_or_else(malformed)?;
    names::validate_trust_domain(domain).map_err(|_| malformed())?;
    let name = path.strip_prefix("user/").ok_or_else(malformed)?;
    if name.contains('/') {
        return Err(malformed());
    }
    if let Some(expected) = expected
        && domain != expected
    {
        return Err(IdentityError::ForeignTrustDomain {
            spiffe_id: spiffe_id.to_owned(),
            expected: expected.to_owned(),
        });
    }
    Ok(name)
}

/// Lowercase hex of a DER INTEGER's content without leading zero bytes, the same form as
/// [`crate::Issued::serial_hex`].
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let hex = hex::encode(&raw[start..]);
    if hex.is_empty() { "00".to_owned() } else { hex }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_parsing() {
        assert_eq!(spiffe_user("spiffe://td/user/bob", Some("td")), Ok("bob"));
        assert_eq!(spiffe_user("spiffe://td/user/bob", None), Ok("bob"));
        for bad in [
            "spiffe://td/bob",
            "spiffe://td/user/",
            "spiffe://td/user/a/b",
            "spiffe://TD/user/bob",
            "spiffe://td",
            "spiffe:///user/bob",
        ] {
            let result = spiffe_user(bad, None);
            // An empty name is accepted here and refused later by the identity pattern.
            if bad == "spiffe://td/user/" {
                assert_eq!(result, Ok(""));
            } else {
                assert!(
                    matches!(result, Err(IdentityError::MalformedSpiffeId(_))),
                    "{bad}"
                );
            }
        }
        assert!(matches!(
            spiffe_user("spiffe://other/user/bob", Some("td")),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn serial_hex_strips_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_hex(&[0]), "00");
    }
}
