//! The certificate authority the `CertAuthority` service issues from: its
//! configuration (`[ca]`), the signing key, the inventory of issued
//! certificates and the CRL that the TLS client verifier checks.
//!
//! The CRL is written to `<data_dir>/ca/crl.pem` and appended to the TLS
//! configuration's CRL list, so a revocation reaches new handshakes as soon as
//! the CRL is rewritten and the TLS configuration reloaded; the revoked-serial
//! set of the authentication layer covers connections that are already open.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use certgen::{
    CertificateAuthority, ClientParams, CsrError, Inventory, IssueError, Issued, OffsetDateTime,
    Record, RevocationReason,
};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::layers::authn::RevokedSerials;
use crate::tls::TlsState;

/// The identity rule certgen enforces anyway; the configured pattern can only
/// narrow it, because identities become file names and SPIFFE path segments.
const DEFAULT_IDENTITY_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$";

/// `[ca]` in the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CaConfig {
    /// Whether the CertAuthority service runs. Default: when the CA key file exists.
    pub(crate) enabled: Option<bool>,
    /// CA certificate (PEM). Default: `<data_dir>/certs/ca.pem`.
    pub(crate) cert: Option<PathBuf>,
    /// CA private key (PKCS#8 PEM). Default: `<data_dir>/certs/ca.key`.
    pub(crate) key: Option<PathBuf>,
    /// SQLite inventory of issued certificates. Default: `<data_dir>/ca/inventory.db`.
    pub(crate) inventory: Option<PathBuf>,
    /// Lifetime of a certificate when the request asks for none.
    pub(crate) default_validity_seconds: u64,
    /// Longest lifetime granted; longer requests are capped to it.
    pub(crate) max_validity_seconds: u64,
    /// Regular expression every issued identity must match in full.
    pub(crate) identity_pattern: String,
    /// Lifetime of each CRL (its nextUpdate); it is re-signed at half of it.
    pub(crate) crl_validity_seconds: u64,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            cert: None,
            key: None,
            inventory: None,
            default_validity_seconds: 24 * 60 * 60,
            max_validity_seconds: 7 * 24 * 60 * 60,
            identity_pattern: DEFAULT_IDENTITY_PATTERN.to_owned(),
            crl_validity_seconds: 7 * 24 * 60 * 60,
        }
    }
}

impl CaConfig {
    fn cert_path(&self, config: &Config) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| config.certs_dir().join("ca.pem"))
    }

    fn key_path(&self, config: &Config) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| config.certs_dir().join("ca.key"))
    }

    fn inventory_path(&self, config: &Config) -> PathBuf {
        self.inventory
            .clone()
            .unwrap_or_else(|| config.data_dir.join("ca").join("inventory.db"))
    }
}

/// Why an issuance was refused; the service maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IssueFailure {
    #[error("identity {identity:?} does not match the configured pattern {pattern}")]
    Pattern { identity: String, pattern: String },
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Inventory(#[from] certgen::InventoryError),
}

/// The running CA, shared by the service and the CRL refresher.
#[derive(Debug)]
pub(crate) struct CaState {
    ca: CertificateAuthority,
    inventory: Inventory,
    trust_domain: String,
    identity_pattern: Regex,
    pattern_text: String,
    default_validity: Duration,
    max_validity: Duration,
    crl_validity: Duration,
    crl_path: PathBuf,
    crl_pem: ArcSwap<String>,
    /// Serialises CRL publication, so that a CRL built from an older view of
    /// the inventory can never overwrite a newer one.
    publishing: Mutex<()>,
}

impl CaState {
    /// Loads the CA when it is enabled, opens the inventory and publishes a
    /// fresh CRL. `Ok(None)` when the CA is disabled.
    pub(crate) fn open(config: &Config) -> Result<Option<Self>> {
        let ca_config = &config.ca;
        let key_path = ca_config.key_path(config);
        let enabled = ca_config.enabled.unwrap_or_else(|| key_path.exists());
        if !enabled {
            return Ok(None);
        }
        if ca_config.default_validity_seconds == 0
            || ca_config.max_validity_seconds < ca_config.default_validity_seconds
        {
            bail!(
                "ca.default_validity_seconds must be positive and at most ca.max_validity_seconds"
            );
        }
        if ca_config.crl_validity_seconds < 120 {
            bail!("ca.crl_validity_seconds must be at least 120");
        }
        certgen::names::validate_trust_domain(&config.trust_domain)
            .context("the CA needs a trust_domain it can write into SPIFFE IDs")?;
        let identity_pattern = Regex::new(&format!("^(?:{})$", ca_config.identity_pattern))
            .with_context(|| {
                format!(
                    "ca.identity_pattern {:?} is not a valid regular expression",
                    ca_config.identity_pattern
                )
            })?;
        let cert_path = ca_config.cert_path(config);
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read CA certificate {}", cert_path.display()))?;
        crate::tls::warn_if_readable_by_others(&key_path);
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read CA private key {}", key_path.display()))?;
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem).with_context(|| {
            format!(
                "CA certificate {} and key {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
        warn_if_not_trusted(&ca, &config.client_ca_path());
        warn_if_shadowed(&ca, &config.tls.crl);
        let inventory_path = ca_config.inventory_path(config);
        let ca_dir = config.data_dir.join("ca");
        // The inventory's directory may be one the operator shares with
        // others, so only the server's own `ca` directory is made private.
        if let Some(dir) = inventory_path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        crate::config::private_dir(&ca_dir)?;
        let inventory = Inventory::open(&inventory_path)
            .with_context(|| format!("cannot open CA inventory {}", inventory_path.display()))?;
        let state = Self {
            ca,
            inventory,
            trust_domain: config.trust_domain.clone(),
            identity_pattern,
            pattern_text: ca_config.identity_pattern.clone(),
            default_validity: Duration::from_secs(ca_config.default_validity_seconds),
            max_validity: Duration::from_secs(ca_config.max_validity_seconds),
            crl_validity: Duration::from_secs(ca_config.crl_validity_seconds),
            crl_path: ca_dir.join("crl.pem"),
            crl_pem: ArcSwap::from_pointee(String::new()),
            publishing: Mutex::new(()),
        };
        state.publish_crl()?;
        Ok(Some(state))
    }

    /// Where the current CRL is written; the TLS configuration reads it.
    pub(crate) fn crl_path(&self) -> &Path {
        &self.crl_path
    }

    pub(crate) fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub(crate) fn crl_pem(&self) -> Arc<String> {
        self.crl_pem.load_full()
    }

    pub(crate) fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Records the certificates of a development bundle made at this start,
    /// so that `ListCertificates` shows them and `RevokeCertificate` can
    /// revoke them like the ones the service issued.
    pub(crate) fn record_bundle(&self, bundle: &certgen::DevBundleFiles) -> Result<()> {
        for certificate in &bundle.certificates {
            self.inventory
                .record(
                    &certificate.serial_hex,
                    &certificate.identity,
                    certificate.not_before,
                    certificate.not_after,
                )
                .with_context(|| {
                    format!(
                        "cannot record the development certificate of {} in the CA inventory",
                        certificate.identity
                    )
                })?;
        }
        Ok(())
    }

    /// The serials of every revoked certificate, for the authentication layer.
    pub(crate) fn revoked_serials(&self) -> Result<HashSet<String>> {
        Ok(self
            .inventory
            .revoked()
            .context("reading revoked certificates from the CA inventory")?
            .into_iter()
            .map(|revoked| revoked.serial_hex)
            .collect())
    }

    /// The lifetime granted for a request: the default for 0, capped by the maximum.
    pub(crate) fn validity(&self, requested_seconds: u64) -> Duration {
        if requested_seconds == 0 {
            self.default_validity
        } else {
            Duration::from_secs(requested_seconds).min(self.max_validity)
        }
    }

    /// Checks the identity against the configured pattern (certgen then
    /// applies its own, stricter-or-equal rule).
    pub(crate) fn check_identity(&self, identity: &str) -> Result<(), IssueFailure> {
        if self.identity_pattern.is_match(identity) {
            Ok(())
        } else {
            Err(IssueFailure::Pattern {
                identity: identity.to_owned(),
                pattern: self.pattern_text.clone(),
            })
        }
    }

    /// Issues a certificate for `identity` from a CSR, or with a new key when
    /// `csr_pem` is `None`, and records it in the inventory. The private key
    /// only lives in the returned value.
    pub(crate) fn issue(
        &self,
        identity: &str,
        csr_pem: Option<&str>,
        validity: Duration,
    ) -> Result<Issued, IssueFailure> {
        self.check_identity(identity)?;
        let mut params = ClientParams::new(identity, self.trust_domain.clone());
        params.validity = validity;
        let issued = match csr_pem {
            Some(csr) => self.ca.sign_csr(csr, &params)?,
            None => self.ca.issue_client(&params)?,
        };
        self.inventory.record_issued(&issued, identity)?;
        Ok(issued)
    }

    /// Marks a certificate revoked in the inventory.
    pub(crate) fn revoke(
        &self,
        serial: &str,
        reason: RevocationReason,
    ) -> Result<Record, certgen::InventoryError> {
        self.inventory
            .revoke(serial, reason, OffsetDateTime::now_utc())
    }

    /// Signs a CRL of every revoked certificate and writes it atomically to
    /// [`Self::crl_path`].
    pub(crate) fn publish_crl(&self) -> Result<()> {
        let _guard = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let revoked = self
            .inventory
            .revoked()
            .context("reading revoked certificates from the CA inventory")?;
        let number = self
            .inventory
            .next_crl_number()
            .context("taking the next CRL number")?;
        let next_update = OffsetDateTime::now_utc() + self.crl_validity;
        let crl = self
            .ca
            .crl(&revoked, number, next_update)
            .context("signing the CRL")?;
        certgen::write_cert_file(&self.crl_path, &crl.pem)
            .with_context(|| format!("cannot write CRL {}", self.crl_path.display()))?;
        self.crl_pem.store(Arc::new(crl.pem));
        Ok(())
    }

    /// Re-signs the CRL, swaps it into the TLS verifier and the revoked set.
    pub(crate) fn publish_and_reload(
        &self,
        tls: &TlsState,
        revoked: &RevokedSerials,
    ) -> Result<()> {
        revoked.store(Arc::new(self.revoked_serials()?));
        self.publish_crl()?;
        tls.reload()
    }
}

/// Certificates this CA issues are useless for connecting to this server if
/// the client CA bundle does not hold the CA; say so at startup.
fn warn_if_not_trusted(ca: &CertificateAuthority, client_ca: &Path) {
    let trusted = crate::tls::read_certs(client_ca)
        .map(|certs| certs.iter().any(|cert| cert == ca.cert_der()))
        .unwrap_or(false);
    if !trusted {
        tracing::warn!(
            target: "cordon::ca",
            client_ca = %client_ca.display(),
            "the client CA bundle does not contain the issuing CA; certificates it issues cannot connect to this server"
        );
    }
}

/// rustls-webpki consults only the first CRL whose issuer matches a
/// certificate's issuer, and configured `tls.crl` files come before the CA's
/// own CRL; a configured CRL from this same CA therefore hides live
/// revocations from the handshake (the per-call check still refuses them).
fn warn_if_shadowed(ca: &CertificateAuthority, crls: &[PathBuf]) {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    let Ok((_, ca_cert)) = X509Certificate::from_der(ca.cert_der()) else {
        return;
    };
    for path in crls {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let same_issuer = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .flatten()
            .any(|der| {
                CertificateRevocationList::from_der(&der)
                    .is_ok_and(|(_, crl)| crl.issuer() == ca_cert.subject())
            });
        if same_issuer {
            tracing::warn!(
                target: "cordon::ca",
                crl = %path.display(),
                "tls.crl holds a CRL of the issuing CA; it takes precedence over the CA's own CRL, so RevokeCertificate is enforced per call but not at the TLS handshake"
            );
        }
    }
}

/// Re-signs the CRL at half of its lifetime so that it never expires while
/// the server runs.
pub(crate) fn spawn_crl_refresh(state: Arc<CaState>, tls: Arc<TlsState>, revoked: RevokedSerials) {
    let period = state.crl_validity / 2;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
            let state = state.clone();
            let tls = tls.clone();
            let revoked = revoked.clone();
            let done =
                tokio::task::spawn_blocking(move || state.publish_and_reload(&tls, &revoked)).await;
            match done {
                Ok(Ok(())) => tracing::info!(target: "cordon::ca", "crl re-signed"),
                Ok(Err(error)) => tracing::error!(
                    target: "cordon::ca",
                    error = format!("{error:#}"),
                    "re-signing the crl failed; the previous crl stays in force"
                ),
                Err(error) => {
                    tracing::error!(target: "cordon::ca", %error, "crl refresh task failed")
                }
            }
        }
    });
}

/// The startup line that tells clients how to renew.
pub(crate) fn renewal_hint(addr: std::net::SocketAddr) -> String {
    format!(
        "certificate authority enabled: renew at two thirds of a certificate's lifetime \
         (renew_after_unix in IssueCertificateResponse), authenticated by the current certificate: \
         grpcurl -cacert ca.pem -cert <you>.pem -key <you>.key {addr} cordon.ca.v1.CertAuthority/RenewCertificate"
    )
}
