//! Load generator for `cargo xtask bench`: drives a running `cordon` over
//! real mTLS and prints one `key=value` result line for xtask to read.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use server::proto::identity::v1::WhoAmIRequest;
use server::proto::identity::v1::identity_client::IdentityClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Parser)]
struct Args {
    /// Load generator modes: handshakes | unary.
    mode: String,
    #[arg(long, default_value = "")]
    addr: String,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long, default_value = "admin")]
    client: String,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

fn endpoint(args: &Args) -> Result<Endpoint> {
    common::mtls_endpoint(
        &args.addr,
        args.certs.as_deref().context("--certs is required")?,
        &args.client,
    )
}

async fn handshakes(args: &Args) -> Result<f64> {
    let endpoint = endpoint(args)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut done = 0u64;
    while Instant::now() < deadline {
        let channel: Channel = endpoint.connect().await?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

async fn unary(args: &Args) -> Result<f64> {
    let channel = endpoint(args)?.connect().await?;
    let clients = (0..args.concurrency)
        .map(|_| IdentityClient::new(channel.clone()))
        .collect();
    common::closed_loop(args.seconds, clients, |client| {
        Box::pin(async move {
            client.who_am_i(WhoAmIRequest {}).await?;
            Ok(())
        })
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let rate = match args.mode.as_str() {
        "handshakes" => handshakes(&args).await?,
        "unary" => unary(&args).await?,
        other => bail!("unknown mode {other}"),
    };
    println!("rate={rate:.1}");
    Ok(())
}
