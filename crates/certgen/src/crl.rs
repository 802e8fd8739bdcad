//! Certificate revocation lists signed by the CA.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use thiserror::Error;
use time::OffsetDateTime;

use crate::ca::{CertificateAuthority, now, whole_seconds};
use crate::names::{self, SerialError};

/// Why a certificate was revoked (the RFC 5280 reason codes that make sense here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given; RFC 5280 says to omit the reason code then, and the CRL does.
    Unspecified,
    /// The private key is known or suspected to be compromised.
    KeyCompromise,
    /// The identity's affiliation changed.
    AffiliationChanged,
    /// A newer certificate replaces this one.
    Superseded,
    /// The identity no longer exists or no longer needs the certificate.
    CessationOfOperation,
    /// The identity's privileges were withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [Self; 6] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The stable snake_case name, as stored in the inventory.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::AffiliationChanged => "affiliation_changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Self::Unspecified => rcgen::RevocationReason::Unspecified,
            Self::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Self::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Self::Superseded => rcgen::RevocationReason::Superseded,
            Self::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revocation reason name that is not one of [`RevocationReason::as_str`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown revocation reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for RevocationReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// One revoked certificate, as listed in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial in hex (normalised by [`names::normalize_serial_hex`]).
    pub serial_hex: String,
    /// When the CA processed the revocation.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// DER, for rustls' `CertificateRevocationListDer`.
    pub der: Vec<u8>,
    /// PEM (`X509 CRL`).
    pub pem: String,
    /// The CRL number.
    pub crl_number: u64,
    /// `thisUpdate`.
    pub this_update: OffsetDateTime,
    /// `nextUpdate`.
    pub next_update: OffsetDateTime,
}

/// Errors of [`CertificateAuthority::crl`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CrlError {
    /// A serial is not valid hex.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// `next_update` is not after now.
    #[error("next_update {0} is not in the future")]
    NextUpdate(OffsetDateTime),
    /// rcgen could not build or sign the CRL (for example a loaded CA without cRLSign).
    #[error("signing the crl failed")]
    Rcgen(#[source] rcgen::Error),
}

impl CertificateAuthority {
    /// Builds a CRL signed by the CA with `thisUpdate` = now, listing `revoked`.
    ///
    /// `crl_number` must grow with every CRL the CA publishes (see
    /// [`crate::Inventory::next_crl_number`]).
    pub fn crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        next_update: OffsetDateTime,
    ) -> Result<Crl, CrlError> {
        let this_update = now();
        let next_update = whole_seconds(next_update);
        if next_update <= this_update {
            return Err(CrlError::NextUpdate(next_update));
        }
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(names::normalize_serial_hex(&r.serial_hex)?)
                    .map_err(|_| SerialError(r.serial_hex.clone()))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: whole_seconds(r.revoked_at),
                    reason_code: Some(r.reason.to_rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CrlError>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_identifier.clone()),
        };
        let crl = params.signed_by(&self.issuer).map_err(CrlError::Rcgen)?;
        Ok(Crl {
            der: crl.der().to_vec(),
            pem: crl.pem().map_err(CrlError::Rcgen)?,
            crl_number,
            this_update,
            next_update,
        })
    }
}
