//! What every benchmark client shares: an mTLS endpoint to a running `cordon`
//! built from a certificate directory laid out by `cargo xtask certs`.

use std::path::Path;

use anyhow::{Context, Result};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// An endpoint to `addr` that trusts `certs/ca.pem` and presents
/// `certs/<client>.pem` with its key.
pub(crate) fn mtls_endpoint(addr: &str, certs: &Path, client: &str) -> Result<Endpoint> {
    let read =
        |name: String| std::fs::read(certs.join(&name)).with_context(|| format!("reading {name}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".to_owned())?))
        .identity(Identity::from_pem(
            read(format!("{client}.pem"))?,
            read(format!("{client}.key"))?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?)
}
