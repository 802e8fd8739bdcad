//! `cordon serve`: assembles the TLS listener, the layers and the services,
//! and runs until SIGTERM or SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Server;
use tower::ServiceBuilder;

use crate::config::Config;
use crate::events::Events;
use crate::layers::authn::{Authenticator, RevokedSerials};
use crate::layers::authz::Authorizer;
use crate::layers::limits::{ConcurrencyCapLayer, MessageSizeLimitLayer};
use crate::listener;
use crate::proto;
use crate::services::identity::IdentityService;
use crate::tls::{TlsFiles, TlsState};

pub(crate) async fn run(config: Config) -> Result<()> {
    // Installed first, so that a SIGTERM arriving at any point after the
    // listening banner shuts down gracefully instead of killing the process.
    let termination = termination_signals()?;
    let created_dev_certs = ensure_dev_certs(&config)?;
    let tls = Arc::new(TlsState::load(TlsFiles::from_config(&config))?);
    let events = Events::default();
    let revoked = RevokedSerials::default();
    let authenticator = Authenticator::from_config(&config, revoked, events.clone())?;
    let authorizer = Arc::new(Authorizer::from_config(&config)?);

    let max_message = config.server.max_message_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::identity::v1::identity_server::IdentityServer<IdentityService>>()
        .await;
    let identity = proto::identity::v1::identity_server::IdentityServer::new(IdentityService {
        authorizer: authorizer.clone(),
    })
    .max_decoding_message_size(max_message);

    let served = [
        service_name(&identity),
        HEALTH_SERVICE,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let (reflection_v1, reflection_v1alpha) = reflection(&served)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let (stop_accepting, accepting) = tokio::sync::watch::channel(false);
    let incoming = listener::incoming(
        listener,
        tls.clone(),
        config.handshake_timeout(),
        events.clone(),
        accepting,
    );
    spawn_reload_on_sighup(tls.clone())?;

    // The order reads like the path of a request: refuse what is too big or
    // too many first, then find out who is calling, then what they may do.
    let layers = ServiceBuilder::new()
        .layer(MessageSizeLimitLayer::new(max_message))
        .layer(ConcurrencyCapLayer::new(
            config.server.max_concurrent_requests,
        ))
        .layer(authenticator.layer())
        .layer(authorizer.clone().layer())
        .into_inner();

    let limits = &config.server;
    let router = Server::builder()
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_millis(
            limits.http2_keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(Duration::from_millis(
            limits.http2_keepalive_timeout_ms,
        )))
        .max_connection_age(Duration::from_millis(limits.max_connection_age_ms))
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(identity);

    print_banner(&config, local, created_dev_certs);

    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let (shutdown_started, mut shutdown_seen) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = shutdown_seen.changed().await;
    }));
    termination.await;
    tracing::info!("shutting down: no new connections, finishing calls in flight");
    let _ = stop_accepting.send(true);
    let _ = shutdown_started.send(true);
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("server task failed")??,
        Err(_) => tracing::warn!(
            ?grace,
            "calls still running after the grace period; exiting"
        ),
    }
    Ok(())
}

fn termination_signals() -> Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}

fn spawn_reload_on_sighup(tls: Arc<TlsState>) -> Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("tls configuration reloaded"),
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "tls reload refused; the previous configuration stays in force"
                ),
            }
        }
    });
    Ok(())
}

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Reflection advertises exactly the services this server runs, and can
/// describe every message they use.
fn reflection(
    served: &[&str],
) -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        served.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    Ok((
        builder().build_v1().context("building reflection v1")?,
        builder()
            .build_v1alpha()
            .context("building reflection v1alpha")?,
    ))
}

/// Creates the development CA, server certificate and `admin` client
/// certificate when the certificate directory holds no CA and the
/// configuration names no files of its own. Returns whether it did.
fn ensure_dev_certs(config: &Config) -> Result<bool> {
    if config.tls.cert.is_some() || config.tls.key.is_some() || config.tls.client_ca.is_some() {
        return Ok(false);
    }
    let dir = config.certs_dir();
    if dir.join("ca.pem").exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create certificate directory {}", dir.display()))?;
    certgen::write_dev_bundle(
        &dir,
        &certgen::DevBundle {
            trust_domain: config.trust_domain.clone(),
            server_names: Vec::new(),
            clients: vec!["admin".to_owned()],
        },
    )
    .with_context(|| {
        format!(
            "cannot create development certificates in {}",
            dir.display()
        )
    })?;
    Ok(true)
}

fn print_banner(config: &Config, local: std::net::SocketAddr, created_dev_certs: bool) {
    let dir = config.certs_dir();
    let show = |name: &str| shell_path(&dir.join(name));
    if created_dev_certs {
        println!(
            "created a development CA, a server certificate and an admin client certificate in {}",
            dir.display()
        );
    }
    println!("cordon listening on {local}");
    if dir.join("admin.pem").exists() && config.tls.client_ca.is_none() {
        println!(
            "try: grpcurl -cacert {} -cert {} -key {} {local} cordon.identity.v1.Identity/WhoAmI",
            show("ca.pem"),
            show("admin.pem"),
            show("admin.key"),
        );
    }
}

fn shell_path(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
