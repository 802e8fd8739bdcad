//! `cordon.sandbox.v1.Sandbox`: runs commands through the sandbox manager.
//!
//! Every run passes, in order: the tool source's trust level (untrusted is
//! PERMISSION_DENIED), the policy conversion and the operator ceiling
//! (INVALID_ARGUMENT naming the field or path), the tool's rate limit
//! (RESOURCE_EXHAUSTED with a retry delay), then the manager's concurrency
//! bound and kernel-enforcement check.

pub(crate) mod config;

use std::sync::Arc;
use std::time::Duration;

use ratelimit::{CheckError, Limiter};
use sandbox_core::{
    Capabilities, Containment, EnforcementReport, LimitsSpec, Manager, NetworkMode, NetworkSpec,
    OutputChunk, OutputStream, PolicyError, PolicySpec, RequestError, RunError, RunOptions,
    RunOutcome, RunRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use self::config::{TrustConfig, TrustLevel, WorkFsOutcome};
use crate::notes::{self, CallNotes};
use crate::proto::sandbox::v1 as pb;
use crate::services::blocking;
use crate::services::identity::caller;
use crate::services::ratelimit::capacity_exhausted;

#[derive(Debug)]
pub(crate) struct SandboxService {
    manager: Manager,
    trust: TrustConfig,
    limiter: Option<Arc<Limiter>>,
    /// What holds the work directories, reported as the `work_directory` layer.
    work_directory: String,
}

/// A request that passed every check and is ready to run.
struct Admitted {
    run: RunRequest,
    level: TrustLevel,
    scan: bool,
    redact: bool,
    max_output_bytes: u64,
}

impl SandboxService {
    pub(crate) fn new(
        manager: Manager,
        trust: TrustConfig,
        limiter: Option<Arc<Limiter>>,
        work_fs: &WorkFsOutcome,
    ) -> Self {
        Self {
            manager,
            trust,
            limiter,
            work_directory: work_fs.describe(),
        }
    }

    async fn admit(&self, request: &mut Request<pb::RunRequest>) -> Result<Admitted, Status> {
        let identity = caller(request)?.name.clone();
        let message = std::mem::take(request.get_mut());
        let level = self.trust.level_of(&message.tool_source);
        notes::note(request, |n| {
            n.sandboxed = true;
            n.trust_level = Some(level.as_str().to_owned());
            if !message.tool.is_empty() {
                n.tool = Some(message.tool.clone());
            }
        });
        if level == TrustLevel::Untrusted {
            notes::note(request, |n| {
                n.summary = Some("refused: untrusted tool source".to_owned());
            });
            metrics::counter!("cordon_sandbox_runs_total", "outcome" => "refused_untrusted")
                .increment(1);
            return Err(Status::permission_denied(format!(
                "tool source {:?} is untrusted; an operator trusts it with \
                 [sandbox.trust] sources = {{ NAME = \"trusted\" }} (or default = \"trusted\")",
                message.tool_source
            )));
        }
        if message.argv.is_empty() {
            return Err(Status::invalid_argument("argv must not be empty"));
        }
        let spec = policy_spec(message.policy.as_ref())?;
        let policy = self.manager.policy(&spec).map_err(policy_status)?;
        let max_output_bytes = policy.limits().max_output_bytes;
        let mut run = RunRequest::new(message.argv, policy).map_err(request_status)?;
        let mut env: Vec<_> = message.env.into_iter().collect();
        env.sort();
        for (name, value) in env {
            run = run.with_env(name, value).map_err(request_status)?;
        }
        if !message.cwd.is_empty() {
            run = run.with_cwd(&message.cwd).map_err(request_status)?;
        }
        let run = run.with_stdin(message.stdin);
        // The empty tool name is checked too: it falls to the default tool
        // policy, when one is configured, like any other unlisted name.
        if let Some(limiter) = &self.limiter {
            let decision = limiter
                .check_tool(&identity, &message.tool, 1)
                .await
                .map_err(|e| match e {
                    CheckError::Capacity(e) => capacity_exhausted(&e),
                    e => Status::internal(format!("rate limit check failed: {e}")),
                })?;
            if let Some(decision) = &decision {
                let label = if decision.allowed {
                    "allowed"
                } else {
                    "denied"
                };
                metrics::counter!("cordon_ratelimit_decisions_total", "decision" => label)
                    .increment(1);
            }
            if let Some(decision) = decision.filter(|d| !d.allowed) {
                notes::note(request, |n| {
                    n.rate_limited = true;
                    n.summary = Some("refused: tool rate limit".to_owned());
                });
                metrics::counter!("cordon_sandbox_runs_total", "outcome" => "refused_rate_limited")
                    .increment(1);
                return Err(rate_limited(&message.tool, decision.retry_after));
            }
        }
        Ok(Admitted {
            run,
            level,
            scan: message.scan_output || message.redact_output,
            redact: message.redact_output,
            max_output_bytes,
        })
    }
}

#[tonic::async_trait]
impl pb::sandbox_server::Sandbox for SandboxService {
    async fn run(
        &self,
        mut request: Request<pb::RunRequest>,
    ) -> Result<Response<pb::RunResponse>, Status> {
        let admitted = self.admit(&mut request).await?;
        // Awaited here, on the tokio worker thread that polls this call: the
        // child's parent-death signal is tied to the forking thread, and a
        // cancelled call drops the future, which kills the run.
        let result = self.manager.run(admitted.run, RunOptions::default()).await;
        let outcome = result.map_err(|e| {
            notes::note(&request, |n| n.summary = Some(error_summary(&e)));
            run_error_status(e)
        })?;
        notes::note(&request, |n| n.summary = Some(summary(&outcome)));
        let reply = response(
            outcome,
            admitted.level,
            admitted.scan,
            admitted.redact,
            true,
        )
        .await?;
        Ok(Response::new(reply))
    }

    type RunStreamStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn run_stream(
        &self,
        mut request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStreamStream>, Status> {
        let admitted = self.admit(&mut request).await?;
        let call_notes = request.extensions().get::<CallNotes>().cloned();
        let (chunk_tx, chunk_rx) = mpsc::channel(16);
        // Redacted output is only known once the run is over, so raw chunks
        // are never streamed when redaction was asked for.
        let options = RunOptions {
            output: (!admitted.redact).then_some(chunk_tx),
        };
        let run = self.manager.run(admitted.run, options);
        let (tx, rx) = mpsc::channel(16);
        let stream = Streaming {
            tx,
            chunks: chunk_rx,
            cap: admitted.max_output_bytes,
            sent: [0, 0],
            level: admitted.level,
            scan: admitted.scan,
            redact: admitted.redact,
            notes: call_notes,
        };
        tokio::spawn(stream.drive(run));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::Capabilities>, Status> {
        let mut capabilities = capabilities(self.manager.capabilities());
        capabilities
            .layers
            .insert("work_directory".to_owned(), self.work_directory.clone());
        Ok(Response::new(capabilities))
    }
}

/// Forwards one RunStream's output and result to the client.
struct Streaming {
    tx: mpsc::Sender<Result<pb::RunEvent, Status>>,
    chunks: mpsc::Receiver<OutputChunk>,
    /// `max_output_bytes`: streamed bytes are capped per stream like captured ones.
    cap: u64,
    sent: [u64; 2],
    level: TrustLevel,
    scan: bool,
    redact: bool,
    notes: Option<CallNotes>,
}

impl Streaming {
    async fn drive(mut self, mut run: sandbox_core::RunFuture) {
        let mut pending: Option<pb::RunEvent> = None;
        // The run future is polled in every iteration, so its timeout holds
        // even when the client stops reading; a client that goes away drops
        // the run, which kills its process tree.
        let result = loop {
            let tx = self.tx.clone();
            let chunk = tokio::select! {
                result = &mut run => break result,
                permit = tx.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        permit.send(Ok(pending.take().unwrap_or_default()));
                        continue;
                    }
                    Err(_) => return self.cancelled(),
                },
                chunk = self.chunks.recv(), if pending.is_none() => chunk,
                () = tx.closed(), if pending.is_none() => return self.cancelled(),
            };
            if let Some(chunk) = chunk {
                pending = self.event(chunk);
            }
        };
        drop(run);
        let mut rest: Vec<pb::RunEvent> = pending.into_iter().collect();
        while let Some(chunk) = self.chunks.recv().await {
            rest.extend(self.event(chunk));
        }
        for event in rest {
            if self.tx.send(Ok(event)).await.is_err() {
                return self.cancelled();
            }
        }
        let last = match result {
            Ok(outcome) => {
                self.note(summary(&outcome));
                response(outcome, self.level, self.scan, self.redact, self.redact)
                    .await
                    .map(|result| pb::RunEvent {
                        event: Some(pb::run_event::Event::Result(result)),
                    })
            }
            Err(error) => {
                self.note(error_summary(&error));
                Err(run_error_status(error))
            }
        };
        let _ = self.tx.send(last).await;
    }

    /// Turns a chunk into an event, cut at the per-stream cap.
    fn event(&mut self, chunk: OutputChunk) -> Option<pb::RunEvent> {
        let index = usize::from(chunk.stream == OutputStream::Stderr);
        let room = self.cap.saturating_sub(self.sent[index]);
        let take = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(chunk.data.len());
        if take == 0 {
            return None;
        }
        self.sent[index] += take as u64;
        let mut data = chunk.data;
        data.truncate(take);
        let event = match chunk.stream {
            OutputStream::Stdout => pb::run_event::Event::Stdout(data),
            OutputStream::Stderr => pb::run_event::Event::Stderr(data),
        };
        Some(pb::RunEvent { event: Some(event) })
    }

    fn cancelled(&self) {
        self.note("cancelled".to_owned());
    }

    fn note(&self, summary: String) {
        if let Some(notes) = &self.notes {
            notes.update(|n| n.summary = Some(summary));
        }
    }
}

fn policy_spec(policy: Option<&pb::Policy>) -> Result<PolicySpec, Status> {
    let Some(policy) = policy else {
        return Ok(PolicySpec::default());
    };
    let network = match &policy.network {
        None => NetworkSpec::default(),
        Some(n) => NetworkSpec {
            mode: match pb::network_policy::Mode::try_from(n.mode) {
                Ok(pb::network_policy::Mode::None) => NetworkMode::None,
                Ok(pb::network_policy::Mode::Tcp) => NetworkMode::Tcp,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "policy.network.mode: unknown mode {}",
                        n.mode
                    )));
                }
            },
            connect_ports: n.connect_ports.clone(),
            bind_ports: n.bind_ports.clone(),
        },
    };
    let limits = policy
        .limits
        .as_ref()
        .map(|l| LimitsSpec {
            timeout_ms: l.timeout_ms,
            cpu_time_ms: l.cpu_time_ms,
            memory_bytes: l.memory_bytes,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
            max_file_size_bytes: l.max_file_size_bytes,
            max_open_files: l.max_open_files,
        })
        .unwrap_or_default();
    Ok(PolicySpec {
        read_paths: policy.read_paths.clone(),
        write_paths: policy.write_paths.clone(),
        network,
        limits,
        system_paths: policy.system_paths,
        require_kernel_enforcement: policy.require_kernel_enforcement,
        allow_unix_sockets: policy.allow_unix_sockets,
    })
}

fn policy_status(error: PolicyError) -> Status {
    Status::invalid_argument(format!("policy: {error}"))
}

fn request_status(error: RequestError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn run_error_status(error: RunError) -> Status {
    match &error {
        RunError::Policy(_) | RunError::ProgramNotFound { .. } => {
            Status::invalid_argument(error.to_string())
        }
        RunError::KernelEnforcementUnavailable { .. }
        | RunError::PathUnavailable { .. }
        | RunError::Exec { .. } => Status::failed_precondition(error.to_string()),
        RunError::Busy { .. } => Status::resource_exhausted(error.to_string()),
        _ => {
            tracing::error!(error = %error, "sandbox run failed");
            Status::internal(error.to_string())
        }
    }
}

/// RESOURCE_EXHAUSTED with the delay three ways: `retry-after` (whole
/// seconds, rounded up, as in HTTP), `retry-after-ms`, and a
/// `google.rpc.RetryInfo` in the status details.
fn rate_limited(tool: &str, retry_after: Duration) -> Status {
    let millis = u64::try_from(retry_after.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let seconds = millis.div_ceil(1000);
    let mut metadata = MetadataMap::new();
    metadata.insert("retry-after", MetadataValue::from(seconds));
    metadata.insert("retry-after-ms", MetadataValue::from(millis));
    Status::with_error_details_and_metadata(
        Code::ResourceExhausted,
        format!("rate limit of tool {tool} exceeded; retry after {millis} ms"),
        ErrorDetails::with_retry_info(Some(retry_after)),
        metadata,
    )
}

/// An argument-free description of how a run ended, for the audit log.
/// Called once per run, so it also counts the run's outcome in the metrics.
fn summary(outcome: &RunOutcome) -> String {
    let label = match (outcome.timed_out, outcome.signal, outcome.exit_code) {
        (true, _, _) => "timed_out",
        (false, Some(_), _) => "signaled",
        (false, None, Some(0)) => "exit_zero",
        (false, None, _) => "exit_nonzero",
    };
    metrics::counter!("cordon_sandbox_runs_total", "outcome" => label).increment(1);
    if outcome.timed_out {
        "timed out".to_owned()
    } else if let Some(signal) = outcome.signal {
        format!("killed by signal {signal}")
    } else {
        format!("exit {}", outcome.exit_code.unwrap_or(-1))
    }
}

fn error_summary(error: &RunError) -> String {
    let label = match error {
        RunError::Busy { .. } => "refused_busy",
        RunError::KernelEnforcementUnavailable { .. } => "refused_enforcement",
        _ => "failed_to_start",
    };
    metrics::counter!("cordon_sandbox_runs_total", "outcome" => label).increment(1);
    match error {
        RunError::Busy { .. } => "refused: too many concurrent runs".to_owned(),
        RunError::KernelEnforcementUnavailable { .. } => {
            "refused: kernel enforcement unavailable".to_owned()
        }
        _ => "failed to start".to_owned(),
    }
}

/// Converts an outcome; `include_output` is false for RunStream results whose
/// output was already streamed. Scanning megabytes of output takes a good
/// fraction of a second, so a scanned outcome is converted on the blocking
/// pool, never on an async worker that other calls are waiting for.
async fn response(
    outcome: RunOutcome,
    level: TrustLevel,
    scan: bool,
    redact: bool,
    include_output: bool,
) -> Result<pb::RunResponse, Status> {
    let work = move || convert(outcome, level, scan, redact, include_output);
    if scan {
        blocking("the output scan", work).await
    } else {
        Ok(work())
    }
}

fn convert(
    outcome: RunOutcome,
    level: TrustLevel,
    scan: bool,
    redact: bool,
    include_output: bool,
) -> pb::RunResponse {
    let mut findings = Vec::new();
    let mut findings_truncated = false;
    let mut stdout = outcome.stdout.bytes;
    let mut stderr = outcome.stderr.bytes;
    if scan {
        for (name, bytes) in [("stdout", &mut stdout), ("stderr", &mut stderr)] {
            let report = guard::scan_text(&String::from_utf8_lossy(bytes));
            findings_truncated |= report.findings_truncated;
            findings.extend(report.findings.iter().map(|f| pb::Finding {
                category: f.category.as_str().to_owned(),
                reason: f.reason.clone(),
                stream: name.to_owned(),
                start: f.start as u64,
                end: f.end as u64,
            }));
            if redact {
                *bytes = report.redacted.into_bytes();
            }
        }
    }
    if !include_output {
        stdout.clear();
        stderr.clear();
    }
    pb::RunResponse {
        exit_code: outcome.exit_code.unwrap_or(-1),
        signal: outcome.signal.unwrap_or(0),
        timed_out: outcome.timed_out,
        stdout,
        stderr,
        stdout_truncated: outcome.stdout.truncated,
        stderr_truncated: outcome.stderr.truncated,
        usage: Some(pb::Usage {
            user_cpu_us: outcome.usage.user_cpu_us,
            sys_cpu_us: outcome.usage.sys_cpu_us,
            max_rss_bytes: outcome.usage.max_rss_bytes,
            wall_us: outcome.usage.wall_us,
        }),
        enforcement: Some(enforcement(&outcome.enforcement)),
        violations: outcome.violations,
        findings,
        trust_level: level.as_str().to_owned(),
        findings_truncated,
    }
}

fn enforcement(report: &EnforcementReport) -> pb::Enforcement {
    pb::Enforcement {
        backend: report.backend.to_owned(),
        platform: report.platform.to_owned(),
        landlock_abi: report.landlock_abi,
        landlock_status: report.landlock_status.as_str().to_owned(),
        filesystem: report.filesystem,
        network_ports: report.network_ports,
        ipc_scoping: report.ipc_scoping,
        seccomp: report.seccomp,
        no_new_privs: report.no_new_privs,
        capabilities_dropped: report.capabilities_dropped,
        rlimits: report.rlimits,
        process_containment: containment(report.process_containment),
        uid: report.uid,
        missing: report.missing.clone(),
        kernel_enforced: report.kernel_enforced,
    }
}

fn containment(c: Containment) -> String {
    c.as_str().to_owned()
}

fn capabilities(c: Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        platform: c.platform.to_owned(),
        backend: c.backend.to_owned(),
        landlock_abi: c.landlock_abi,
        seccomp: c.seccomp,
        layers: c.layers.into_iter().collect(),
        kernel_enforced: c.kernel_enforced,
        process_containment: containment(c.process_containment),
    }
}
