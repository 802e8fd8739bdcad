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

/// One call of a closed-loop benchmark on a worker's own state (its client, its key...).
pub(crate) type Call<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Runs one task per element of `workers`, each making `call` on its own state back to back
/// until `seconds` have passed, and returns the calls completed per second. The first failed
/// call fails the benchmark.
pub(crate) async fn closed_loop<W, F>(seconds: f64, workers: Vec<W>, call: F) -> Result<f64>
where
    W: Send + 'static,
    F: for<'a> Fn(&'a mut W) -> Call<'a> + Copy + Send + 'static,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    call(&mut worker).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
