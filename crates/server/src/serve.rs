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
use crate::layers::audit::{AuditLayer, AuditOnFailure, RefuseWhileFailing};
use crate::layers::authn::{Authenticator, RevokedSerials};
use crate::layers::authz::Authorizer;
use crate::layers::limits::{ConcurrencyCapLayer, MessageSizeLimitLayer, RequestDeadlineLayer};
use crate::listener;
use crate::proto;
use crate::services::identity::IdentityService;
use crate::services::sandbox::config::WorkFsOutcome;
use crate::tls::{TlsFiles, TlsState};

/// Serves until SIGTERM or SIGINT. `work_fs` says what holds the work root,
/// which `SandboxConfig::prepare_work_fs` set up before the runtime started.
pub(crate) async fn run(config: Config, work_fs: WorkFsOutcome) -> Result<()> {
    // Installed first, so that a SIGTERM arriving at any point after the
    // listening banner shuts down gracefully instead of killing the process.
    let termination = termination_signals()?;
    let dev_bundle = ensure_dev_certs(&config)?;
    let ca = crate::ca::CaState::open(&config)?.map(Arc::new);
    if let (Some(ca), Some(bundle)) = (&ca, &dev_bundle) {
        ca.record_bundle(bundle)?;
    }
    let mut tls_files = TlsFiles::from_config(&config);
    if let Some(ca) = &ca {
        tls_files.crls.push(ca.crl_path().to_path_buf());
    }
    let tls = Arc::new(TlsState::load(tls_files.clone())?);
    crate::tls_watch::spawn(&tls_files, tls.clone());
    // The audit log is open and the metrics recorder installed before the
    // first connection, so nothing goes unrecorded or uncounted.
    let audit_log = config.audit.open(&config.data_dir)?;
    let ops_addr = match config.ops.enabled {
        true => Some(crate::ops::start(&config.ops, audit_log.clone()).await?),
        false => None,
    };
    let events = Events::with_audit(audit_log.clone());
    let revoked = RevokedSerials::default();
    if let Some(ca) = &ca {
        revoked.store(Arc::new(ca.revoked_serials()?));
    }
    let authenticator = Authenticator::from_config(&config, revoked.clone(), events.clone())?;
    let authorizer = Arc::new(Authorizer::from_config(&config)?);
    let limiter = Arc::new(crate::rate_limits::build_limiter(&config.ratelimit)?);

    let max_message = config.server.max_message_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::identity::v1::identity_server::IdentityServer<IdentityService>>()
        .await;
    health_reporter
        .set_serving::<proto::ratelimit::v1::rate_limit_server::RateLimitServer<
            crate::services::ratelimit::RateLimitService,
        >>()
        .await;
    let identity = proto::identity::v1::identity_server::IdentityServer::new(IdentityService {
        authorizer: authorizer.clone(),
    })
    .max_decoding_message_size(max_message);
    let ca_service = ca.clone().map(|state| {
        crate::ca::spawn_crl_refresh(state.clone(), tls.clone(), revoked.clone());
        proto::ca::v1::cert_authority_server::CertAuthorityServer::new(
            crate::services::ca::CaService {
                state,
                tls: tls.clone(),
                revoked: revoked.clone(),
            },
        )
        .max_decoding_message_size(max_message)
    });
    if ca_service.is_some() {
        health_reporter
            .set_serving::<proto::ca::v1::cert_authority_server::CertAuthorityServer<
                crate::services::ca::CaService,
            >>()
            .await;
    }
    let ratelimit = proto::ratelimit::v1::rate_limit_server::RateLimitServer::new(
        crate::services::ratelimit::RateLimitService {
            limiter: limiter.clone(),
            authorizer: authorizer.clone(),
        },
    )
    .max_decoding_message_size(max_message);
    let sandbox = proto::sandbox::v1::sandbox_server::SandboxServer::new(
        crate::services::sandbox::SandboxService::new(
            config.sandbox.manager(&config.data_dir)?,
            config.sandbox.trust.clone(),
            Some(limiter.clone()),
            &work_fs,
        ),
    )
    .max_decoding_message_size(max_message);
    health_reporter
        .set_serving::<proto::sandbox::v1::sandbox_server::SandboxServer<
            crate::services::sandbox::SandboxService,
        >>()
        .await;

    let guard_service = proto::guard::v1::guard_server::GuardServer::new(
        crate::services::guard::GuardService::new(&config.guard),
    )
    .max_decoding_message_size(max_message);
    health_reporter
        .set_serving::<proto::guard::v1::guard_server::GuardServer<
            crate::services::guard::GuardService,
        >>()
        .await;
    let audit_service = audit_log.clone().map(|log| {
        proto::audit::v1::audit_server::AuditServer::new(crate::services::audit::AuditService {
            log,
        })
        .max_decoding_message_size(max_message)
    });
    if audit_service.is_some() {
        health_reporter
            .set_serving::<proto::audit::v1::audit_server::AuditServer<
                crate::services::audit::AuditService,
            >>()
            .await;
    }

    let mut served = vec![
        service_name(&identity),
        service_name(&sandbox),
        service_name(&ratelimit),
        HEALTH_SERVICE,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    if let Some(ca_service) = &ca_service {
        served.push(service_name(ca_service));
    }
    served.push(service_name(&guard_service));
    if let Some(audit_service) = &audit_service {
        served.push(service_name(audit_service));
    }
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
    let policy_reloader = crate::rate_limits::PolicyReloader::new(&config, limiter.clone());
    spawn_reload_on_sighup(tls.clone(), policy_reloader)?;

    // The order reads like the path of a request: refuse what is too big or
    // too many first, then find out who is calling, then what they may do.
    // Audit is outermost: it sees every call, including those the inner
    // layers refuse, and records it when the call ends.
    let layers = ServiceBuilder::new()
        .layer(AuditLayer::new(audit_log.clone()))
        .layer(RequestDeadlineLayer::new(Duration::from_millis(
            config.server.request_timeout_ms,
        )))
        .layer(MessageSizeLimitLayer::new(max_message))
        .layer(ConcurrencyCapLayer::new(
            config.server.max_concurrent_requests,
        ))
        .layer(authenticator.layer())
        .option_layer(
            audit_log
                .clone()
                .filter(|_| config.audit.on_failure == AuditOnFailure::Refuse)
                .map(RefuseWhileFailing::layer),
        )
        .layer(authorizer.clone().layer())
        .into_inner();

    let limits = &config.server;
    let router = Server::builder()
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
        .add_service(identity)
        .add_optional_service(ca_service)
        .add_service(guard_service)
        .add_optional_service(audit_service)
        .add_service(sandbox)
        .add_service(ratelimit);

    print_banner(&config, local, dev_bundle.is_some());
    if let Some(ops_addr) = ops_addr {
        say(format_args!("ops endpoint on http://{ops_addr}"));
    }
    if ca.is_some() {
        say(crate::ca::renewal_hint(local));
    }

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

fn spawn_reload_on_sighup(
    tls: Arc<TlsState>,
    policies: crate::rate_limits::PolicyReloader,
) -> Result<()> {
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
            policies.reload();
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
/// configuration names no files of its own. Returns the bundle when it made
/// one.
fn ensure_dev_certs(config: &Config) -> Result<Option<certgen::DevBundleFiles>> {
    if config.tls.cert.is_some() || config.tls.key.is_some() || config.tls.client_ca.is_some() {
        return Ok(None);
    }
    let dir = config.certs_dir();
    if dir.join("ca.pem").exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create certificate directory {}", dir.display()))?;
    let bundle = certgen::write_dev_bundle(
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
    Ok(Some(bundle))
}

fn print_banner(config: &Config, local: std::net::SocketAddr, created_dev_certs: bool) {
    let dir = config.certs_dir();
    let show = |name: &str| shell_path(&dir.join(name));
    if created_dev_certs {
        say(format_args!(
            "created a development CA, a server certificate and an admin client certificate in {}",
            dir.display()
        ));
    }
    say(format_args!("cordon listening on {local}"));
    if dir.join("admin.pem").exists() && config.tls.client_ca.is_none() {
        say(format_args!(
            "try: grpcurl -cacert {} -cert {} -key {} {local} cordon.identity.v1.Identity/WhoAmI",
            show("ca.pem"),
            show("admin.pem"),
            show("admin.key"),
        ));
    }
}

/// Prints a banner line. A closed or full stdout (a daemon, a reader that
/// went away) must not take the server down, so write errors are ignored.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
