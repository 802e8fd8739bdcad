//! Validation of the names that end up in certificates and in file names.

use thiserror::Error;

/// The longest identity name accepted; it keeps file names and SPIFFE paths short.
pub const MAX_IDENTITY_LEN: usize = 64;

/// The longest trust domain accepted, as the SPIFFE specification allows.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The identity does not match `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`.
    #[error(
        "invalid identity {0:?}: expected 1 to 64 characters from [a-zA-Z0-9._-], starting with a letter or digit"
    )]
    Identity(String),
    /// The trust domain does not match `^[a-z0-9._-]{1,255}$`.
    #[error("invalid trust domain {0:?}: expected 1 to 255 characters from [a-z0-9._-]")]
    TrustDomain(String),
    /// A server name is neither an IP address nor a DNS name rcgen can encode.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// Checks an identity name against `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`.
///
/// The pattern is strict on purpose: identities become file names (`NAME.pem`) and SPIFFE path
/// segments, so slashes, leading dots and control characters must never get through.
pub fn validate_identity(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let first_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= MAX_IDENTITY_LEN {
        Ok(())
    } else {
        Err(NameError::Identity(name.to_owned()))
    }
}

/// Checks a SPIFFE trust domain: lowercase letters, digits, `.`, `_` and `-`, at most 255 bytes.
pub fn validate_trust_domain(domain: &str) -> Result<(), NameError> {
    let ok = !domain.is_empty()
        && domain.len() <= MAX_TRUST_DOMAIN_LEN
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::TrustDomain(domain.to_owned()))
    }
}

/// The SPIFFE ID of a user identity: `spiffe://<trust_domain>/user/<name>`.
///
/// Both parts are validated, so the result is always a well-formed SPIFFE ID.
pub fn spiffe_id(trust_domain: &str, name: &str) -> Result<String, NameError> {
    validate_trust_domain(trust_domain)?;
    validate_identity(name)?;
    Ok(format!("spiffe://{trust_domain}/user/{name}"))
}

/// A serial number that is not 1 to 40 hex digits.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid serial {0:?}: expected 1 to 40 hex digits")]
pub struct SerialError(pub String);

/// Normalises a hex serial to the form certgen reports: lowercase, even length, no leading
/// zero bytes (`"00"` for zero). Accepts 1 to 40 hex digits of either case.
pub fn normalize_serial_hex(serial: &str) -> Result<String, SerialError> {
    if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SerialError(serial.to_owned()));
    }
    let digits = serial.trim_start_matches('0').to_ascii_lowercase();
    Ok(match digits.len() {
        0 => "00".to_owned(),
        n if n % 2 == 1 => format!("0{digits}"),
        _ => digits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_pattern() {
        for good in ["a", "alice", "Agent-7", "svc.build_01", &"x".repeat(64)] {
            assert_eq!(validate_identity(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "-flag",
            "_x",
            "a/b",
            "../etc",
            "a b",
            "é",
            "a\n",
            &"x".repeat(65),
        ] {
            assert!(validate_identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serial_normalisation() {
        assert_eq!(normalize_serial_hex("00AbC").as_deref(), Ok("0abc"));
        assert_eq!(normalize_serial_hex("8001").as_deref(), Ok("8001"));
        assert_eq!(normalize_serial_hex("0000").as_deref(), Ok("00"));
        for bad in ["", "xyz", "12:34", &"1".repeat(41)] {
            assert!(normalize_serial_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trust_domain_pattern() {
        assert_eq!(validate_trust_domain("cordon.local"), Ok(()));
        for bad in ["", "Cordon", "a/b", "a:1", "x y", &"a".repeat(256)] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            spiffe_id("example.org", "bob").as_deref(),
            Ok("spiffe://example.org/user/bob")
        );
    }
}
