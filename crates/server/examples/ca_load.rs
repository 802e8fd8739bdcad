//! Certificate issuance rates for `cargo xtask bench ca`, printed as one
//! `rate=<certificates per second>` line:
//!
//! - `rcgen`: raw rcgen signing of a client certificate (the baseline);
//! - `library`: certgen's `sign_csr` (parse, verify, build, sign) of P-256 CSRs;
//! - `library-inventory`: the same plus recording each certificate in an
//!   on-disk SQLite inventory, as the server does;
//! - `grpc --addr A --certs DIR`: `IssueCertificate` from P-256 CSRs through a
//!   running `cordon` over mTLS, as `admin`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use certgen::{CaParams, CertificateAuthority, ClientParams, Inventory};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use server::proto::ca::v1::IssueCertificateRequest;
use server::proto::ca::v1::cert_authority_client::CertAuthorityClient;

/// Distinct CSRs cycled through, generated before timing starts.
const CSRS: usize = 64;

#[derive(Debug, clap::Parser)]
struct Args {
    /// Modes: rcgen | library | library-inventory | grpc.
    mode: String,
    #[arg(long, default_value = "")]
    addr: String,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn csrs() -> Result<Vec<String>> {
    (0..CSRS)
        .map(|_| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, "bench");
            Ok(params.serialize_request(&key)?.pem()?)
        })
        .collect()
}

/// Counts how often `work` completes within the time limit.
fn rate(seconds: f64, mut work: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let mut done = 0usize;
    while start.elapsed() < limit {
        work(done)?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// The same certificate certgen builds, signed with rcgen directly.
fn raw_rcgen(seconds: f64) -> Result<f64> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_keys = (0..CSRS)
        .map(|_| KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256))
        .collect::<Result<Vec<_>, _>>()?;
    rate(seconds, |i| {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "bench");
        params.subject_alt_names =
            vec![SanType::URI("spiffe://cordon.local/user/bench".try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.signed_by(&leaf_keys[i % CSRS], &issuer)?;
        Ok(())
    })
}

fn library(seconds: f64, with_inventory: bool) -> Result<f64> {
    let ca = CertificateAuthority::generate(&CaParams::default())?;
    let csrs = csrs()?;
    let dir = tempfile::tempdir()?;
    let inventory = Inventory::open(&dir.path().join("inventory.db"))?;
    let params = ClientParams::new("bench", "cordon.local");
    rate(seconds, |i| {
        let issued = ca.sign_csr(&csrs[i % CSRS], &params)?;
        if with_inventory {
            inventory.record_issued(&issued, "bench")?;
        }
        Ok(())
    })
}

async fn grpc(args: &Args) -> Result<f64> {
    let channel = common::mtls_endpoint(
        &args.addr,
        args.certs.as_deref().context("--certs is required")?,
        "admin",
    )?
    .connect()
    .await?;
    let csrs = Arc::new(csrs()?);
    // Each worker starts at its own CSR and cycles through all of them.
    let workers = (0..args.concurrency)
        .map(|task| {
            (
                CertAuthorityClient::new(channel.clone()),
                csrs.clone(),
                task,
            )
        })
        .collect();
    common::closed_loop(args.seconds, workers, |(client, csrs, i)| {
        Box::pin(async move {
            client
                .issue_certificate(IssueCertificateRequest {
                    identity: "bench".to_owned(),
                    csr_pem: csrs[*i % CSRS].clone(),
                    validity_seconds: 0,
                })
                .await?;
            *i += 1;
            Ok(())
        })
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let rate = match args.mode.as_str() {
        "rcgen" => raw_rcgen(args.seconds)?,
        "library" => library(args.seconds, false)?,
        "library-inventory" => library(args.seconds, true)?,
        "grpc" => grpc(&args).await?,
        other => bail!("unknown mode {other}"),
    };
    println!("rate={rate:.1}");
    Ok(())
}
