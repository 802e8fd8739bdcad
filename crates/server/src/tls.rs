//! The rustls server configuration, built directly and swappable at run time.
//!
//! TLS 1.3 only unless `tls.min_version = "1.2"`, ALPN `h2`, client
//! certificates verified by `WebPkiClientVerifier` against the configured CA
//! bundle and CRLs. Session resumption is off: a resumed session would skip
//! client certificate verification, and with it a revocation that happened
//! since the first handshake.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::{NoServerSessionStorage, ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ClientAuth, Config};

/// The files a TLS configuration is built from.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
    pub(crate) crls: Vec<PathBuf>,
    pub(crate) allow_tls12: bool,
    pub(crate) client_auth: ClientAuth,
}

impl TlsFiles {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            cert: config.server_cert_path(),
            key: config.server_key_path(),
            client_ca: config.client_ca_path(),
            crls: config.tls.crl.clone(),
            allow_tls12: config.tls.min_version == "1.2",
            client_auth: config.tls.client_auth,
        }
    }
}

/// The live TLS configuration: handshakes read it, reloads replace it.
#[derive(Debug)]
pub(crate) struct TlsState {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl TlsState {
    pub(crate) fn load(files: TlsFiles) -> Result<Self> {
        let config = build_server_config(&files)?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(config),
        })
    }

    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads every file; on any error the old configuration stays in place.
    pub(crate) fn reload(&self) -> Result<()> {
        let config = build_server_config(&self.files)?;
        self.current.store(Arc::new(config));
        Ok(())
    }
}

pub(crate) fn build_server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| {
            anyhow!(
                "client CA bundle {}: unusable certificate: {e}",
                files.client_ca.display()
            )
        })?;
    }
    let mut crls = Vec::new();
    for path in &files.crls {
        crls.extend(read_crls(path)?);
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation();
    if files.client_auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| anyhow!("client verifier from {}: {e}", files.client_ca.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if files.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("tls protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            anyhow!(
                "server certificate {} and key {} do not form a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate file {}: malformed PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "certificate file {}: no CERTIFICATE block found",
            path.display()
        );
    }
    for cert in &certs {
        webpki::EndEntityCert::try_from(cert).map_err(|e| {
            anyhow!(
                "certificate file {}: not a valid X.509 certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    warn_if_readable_by_others(path);
    let bytes = read_file(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| anyhow!("private key file {}: {e}", path.display()))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read_file(path, "CRL file")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("CRL file {}: malformed PEM: {e}", path.display()))?;
    if crls.is_empty() {
        bail!("CRL file {}: no X509 CRL block found", path.display());
    }
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| anyhow!("CRL file {}: not a valid CRL: {e}", path.display()))?;
    }
    Ok(crls)
}

/// Private keys readable by the group or by everyone are a deployment
/// mistake worth shouting about, but not worth refusing to start over.
pub(crate) fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:o}"),
                "private key file is readable by group or others; chmod 600 it"
            );
        }
    }
}
