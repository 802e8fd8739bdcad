//! Writing PEM files: private keys are created with mode 0600, never widened and then narrowed.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ca::{
    CaParams, CertificateAuthority, ClientParams, GenerateError, IssueError, ServerParams,
};
use crate::names::{self, NameError};

/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files.
pub const CERT_FILE_MODE: u32 = 0o644;
/// Mode of a directory created by [`write_dev_bundle`].
pub const BUNDLE_DIR_MODE: u32 = 0o700;

/// An I/O failure on one path.
#[derive(Debug, Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// Writes a private key file created with mode 0600.
///
/// The PEM is written to a new temporary file in the same directory, opened with
/// `O_CREAT | O_EXCL` and mode 0600 (so the key is never readable by others, not even for an
/// instant, and the umask can only narrow it), synced, then renamed over `path`. The rename
/// makes the replacement atomic, so a server watching the file never reads half a key.
pub fn write_key_file(path: &Path, pem: &str) -> Result<(), WriteError> {
    write_atomic(path, pem.as_bytes(), KEY_FILE_MODE)
}

/// Writes a certificate file (mode 0644, before umask), atomically like [`write_key_file`].
pub fn write_cert_file(path: &Path, pem: &str) -> Result<(), WriteError> {
    write_atomic(path, pem.as_bytes(), CERT_FILE_MODE)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError { path: p, source }
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| err(path)(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", hex::encode(suffix)));
    let tmp = path.with_file_name(tmp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // The temporary file may or may not exist at this point; either way it must not stay.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err(path))
}

/// What [`write_dev_bundle`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBundle {
    /// SPIFFE trust domain of the client certificates.
    pub trust_domain: String,
    /// Extra server names besides `localhost`, `127.0.0.1` and `::1`.
    pub server_names: Vec<String>,
    /// Identities that get a client certificate `NAME.pem` / `NAME.key`.
    pub clients: Vec<String>,
}

/// Paths written by [`write_dev_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBundleFiles {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
    /// `(identity, NAME.pem, NAME.key)` for each client.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
    /// The server certificate (identity `server`) and every client certificate, as the CA's
    /// inventory records them, so that they can be listed and revoked like issued ones.
    pub certificates: Vec<BundleCertificate>,
}

/// One certificate of a development bundle, as an inventory records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleCertificate {
    /// `server`, or the client's identity.
    pub identity: String,
    /// Lowercase hex of the serial number, as in [`crate::Issued`].
    pub serial_hex: String,
    /// `notBefore`.
    pub not_before: time::OffsetDateTime,
    /// `notAfter`.
    pub not_after: time::OffsetDateTime,
}

impl BundleCertificate {
    fn of(identity: &str, issued: &crate::Issued) -> Self {
        BundleCertificate {
            identity: identity.to_owned(),
            serial_hex: issued.serial_hex.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        }
    }
}

/// Errors of [`write_dev_bundle`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A client identity or the trust domain is invalid; nothing was written.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A client name would collide with the CA or server files; nothing was written.
    #[error("client name {0:?} is reserved for the ca or server files")]
    ReservedName(String),
    /// Generating the CA failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Issuing a certificate failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Generates a development CA, a server certificate and client certificates, and writes
/// `dir/ca.pem ca.key server.pem server.key NAME.pem NAME.key` (keys 0600, certificates 0644).
///
/// `dir` is created with mode 0700 when missing. Existing files are replaced atomically. All
/// names are validated before anything is written. Client certificates get the default 24-hour
/// validity; the server certificate gets [`crate::DEFAULT_SERVER_VALIDITY`].
pub fn write_dev_bundle(dir: &Path, bundle: &DevBundle) -> Result<DevBundleFiles, BundleError> {
    names::validate_trust_domain(&bundle.trust_domain)?;
    for name in &bundle.clients {
        names::validate_identity(name)?;
        if name == "ca" || name == "server" {
            return Err(BundleError::ReservedName(name.clone()));
        }
    }

    let ca = CertificateAuthority::generate(&CaParams::default())?;
    let server = ca.issue_server(&ServerParams {
        extra_names: bundle.server_names.clone(),
        ..ServerParams::default()
    })?;
    let clients = bundle
        .clients
        .iter()
        .map(|name| {
            ca.issue_client(&ClientParams::new(
                name.clone(),
                bundle.trust_domain.clone(),
            ))
            .map(|issued| (name, issued))
        })
        .collect::<Result<Vec<_>, _>>()?;

    DirBuilder::new()
        .recursive(true)
        .mode(BUNDLE_DIR_MODE)
        .create(dir)
        .map_err(|source| WriteError {
            path: dir.to_path_buf(),
            source,
        })?;

    let files = DevBundleFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        clients: bundle
            .clients
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}.key")),
                )
            })
            .collect(),
        certificates: std::iter::once(BundleCertificate::of("server", &server))
            .chain(
                clients
                    .iter()
                    .map(|(name, issued)| BundleCertificate::of(name, issued)),
            )
            .collect(),
    };
    write_key_file(&files.ca_key, ca.key_pem())?;
    write_cert_file(&files.ca_cert, ca.cert_pem())?;
    write_pair(&files.server_cert, &files.server_key, &server)?;
    for ((_, cert, key), (_, issued)) in files.clients.iter().zip(&clients) {
        write_pair(cert, key, issued)?;
    }
    Ok(files)
}

fn write_pair(cert: &Path, key: &Path, issued: &crate::Issued) -> Result<(), WriteError> {
    if let Some(key_pem) = &issued.key_pem {
        write_key_file(key, key_pem)?;
    }
    write_cert_file(cert, &issued.cert_pem)
}
