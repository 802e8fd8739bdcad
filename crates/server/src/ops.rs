//! The ops endpoint: a plain HTTP listener, separate from the gRPC one and on
//! loopback by default, serving `/metrics` (Prometheus text format, rendered
//! by `metrics-exporter-prometheus`) and `/healthz`.
//!
//! It carries no authentication, so it must stay on loopback or behind a
//! network boundary that only the monitoring system crosses. Every answer,
//! including 404 and 405, carries the same security headers, so a browser
//! that is somehow pointed at it neither renders, frames nor sniffs it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prost::bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// `[ops]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct OpsConfig {
    pub(crate) enabled: bool,
    /// Address of the HTTP listener; port 0 picks a free port.
    pub(crate) listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// Headers sent with every answer of the ops endpoint.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("content-security-policy", "default-src 'none'"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    ),
    ("cache-control", "no-store"),
];

/// Latency buckets in seconds, from 50 µs (a cached unary call) to 60 s (a
/// long sandbox run).
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide Prometheus recorder. Without it every
/// `metrics::` call in the server is a no-op.
fn install_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    metrics::describe_counter!(
        "cordon_rpc_requests_total",
        "gRPC calls by method and status code"
    );
    metrics::describe_histogram!(
        "cordon_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC call latency by method"
    );
    metrics::describe_histogram!(
        "cordon_audit_append_seconds",
        metrics::Unit::Seconds,
        "time to commit one audit record"
    );
    metrics::describe_counter!(
        "cordon_audit_append_failures_total",
        "audit records that could not be committed"
    );
    metrics::describe_counter!(
        "cordon_audit_commits_total",
        "transactions the audit writer committed (one fsync each with full durability)"
    );
    metrics::describe_counter!(
        "cordon_audit_records_total",
        "audit records the writer committed; divided by commits, the mean group-commit batch"
    );
    metrics::describe_gauge!(
        "cordon_audit_largest_batch",
        "most audit records committed in one transaction since the server started"
    );
    metrics::describe_counter!(
        "cordon_tls_handshake_failures_total",
        "refused or failed TLS handshakes"
    );
    metrics::describe_counter!(
        "cordon_authentication_failures_total",
        "calls refused because the caller could not be authenticated"
    );
    metrics::describe_counter!(
        "cordon_sandbox_runs_total",
        "sandbox runs by outcome (exit_zero, exit_nonzero, signaled, timed_out, refused_untrusted, refused_rate_limited, refused_busy, refused_enforcement, failed_to_start)"
    );
    metrics::describe_counter!(
        "cordon_ratelimit_decisions_total",
        "rate-limit decisions by result (allowed, denied): RateLimit calls and Sandbox.Run's per-tool limits"
    );
    // Present from the start, so that alerts on them see a zero rather than
    // an absent series.
    for name in [
        "cordon_audit_append_failures_total",
        "cordon_tls_handshake_failures_total",
        "cordon_authentication_failures_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    Ok(handle)
}

/// Installs the recorder, binds the listener and serves it on a task.
/// Returns the bound address. With an audit log, `/healthz` answers 503
/// while the log cannot commit records, and the writer's group-commit
/// counters are exported.
pub(crate) async fn start(
    config: &OpsConfig,
    audit: Option<audit::AuditLog>,
) -> Result<SocketAddr> {
    if !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "the ops endpoint has no authentication and listens off loopback"
        );
    }
    let handle = install_recorder()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (ops.listen)", config.listen))?;
    let local = listener.local_addr()?;
    if let Some(log) = &audit {
        export_audit_writer(log.clone());
    }
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "ops accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            let audit = audit.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handle = handle.clone();
                    let audit_failing = audit.as_ref().is_some_and(audit::AuditLog::is_failing);
                    async move { Ok::<_, Infallible>(answer(&handle, &request, audit_failing)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "ops connection ended with an error");
                }
            });
        }
    });
    Ok(local)
}

/// Copies the audit writer's group-commit counters into the recorder once a
/// second. The writer thread keeps plain atomics, so the audit crate needs no
/// metrics dependency and a commit costs no recorder lookup.
fn export_audit_writer(log: audit::AuditLog) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let stats = log.writer_stats();
            metrics::counter!("cordon_audit_commits_total").absolute(stats.batches);
            metrics::counter!("cordon_audit_records_total").absolute(stats.records);
            #[expect(
                clippy::cast_precision_loss,
                reason = "a batch is at most the configured max_batch, far below 2^52"
            )]
            metrics::gauge!("cordon_audit_largest_batch").set(stats.largest_batch as f64);
        }
    });
}

fn answer(
    handle: &PrometheusHandle,
    request: &Request<Incoming>,
    audit_failing: bool,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let readable = request.method() == Method::GET || request.method() == Method::HEAD;
    let (status, content_type, body) = match path {
        "/metrics" | "/healthz" if !readable => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/healthz" if audit_failing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "audit log failing\n".to_owned(),
        ),
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let body = if request.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    for (name, value) in SECURITY_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    response
}
