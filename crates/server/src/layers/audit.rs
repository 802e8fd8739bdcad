//! The audit layer: the outermost layer, which records every call in the
//! tamper-evident audit log and in the RPC metrics.
//!
//! For each call it puts a [`CallNotes`] into the request extensions before
//! any inner layer runs (authentication fills in the identity, services the
//! tool, sandbox and rate-limit facts), hashes the request messages as they
//! stream through, and appends one record when the call ends.
//!
//! # Acknowledged means recorded
//! The record is appended, and the append awaited with the log's configured
//! durability, before the call's final frame reaches the client: for a
//! trailers-only response (every refusal by a layer) and for an answer whose
//! body is complete when the service returns it (a unary call), before the
//! response is returned; for a stream, before its trailers frame is passed
//! on. A client that saw a call complete therefore knows its record is
//! acknowledged, and a kill -9 of the server cannot lose it. With the default
//! `durability = "process_crash"` the acknowledgement comes as soon as the
//! record is in the log's journal: the call first lets the other ready calls
//! run, and the first of them to await its record writes the records of all
//! of them with one `write`; with
//! `"full"` it waits for a group commit and its fsync, whose cost is shared
//! across concurrent calls. If the append itself fails (a full disk,
//! say) the call's answer is kept, the failure is logged and counted in
//! `cordon_audit_append_failures_total`: the call has already taken effect,
//! and changing its status afterwards would tell the client something false.
//! Later calls are refused UNAVAILABLE by [`RefuseWhileFailing`] until a
//! record commits again, unless `audit.on_failure = "serve"`.
//!
//! A unary answer is held whole rather than sending its headers and message
//! first and its trailers after the commit: the connection then writes it in
//! one go instead of two, which measured about 20% more audited calls per
//! second on the benchmark machine. Its record is queued on the calling task,
//! without a task of its own.
//!
//! A call whose future is dropped before the service answers (the client
//! cancelled it or its deadline passed) is recorded as CANCELLED: it may
//! already have taken effect.
//!
//! # Request digest
//! `request_sha256` is the SHA-256 of the request's message payloads, without
//! the 5-byte gRPC length prefixes: for a unary call, the SHA-256 of the
//! serialized request message. The arguments themselves are never stored.
//! When an inner layer refuses a call without reading its body, the layer
//! drains the body (at most [`DRAIN_LIMIT`]) so that refused calls get a
//! digest too.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::audit::{
    AppendError, Appending, AuditLog, Durability, Entry, Kind, STATUS_NAMES, TryAppendError,
};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use prost::bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::layers::gate::{Check, GateLayer};
use crate::listener::PeerInfo;
use crate::notes::CallNotes;

/// `[audit]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// Record every call in `<data_dir>/audit`. Turning it off leaves the
    /// server without an audit trail; it exists for benchmarks and tests.
    pub(crate) enabled: bool,
    /// What an acknowledged record survives: "process_crash" (kill -9: the
    /// record is in the journal, in the kernel's page cache, before the
    /// answer) or "full" (also a power cut: one fsync per group commit,
    /// which the answer waits for).
    pub(crate) durability: AuditDurability,
    /// Seal the active segment and start a new one at every seq that is a
    /// multiple of this, exactly; 0 never seals.
    pub(crate) seal_every_records: u64,
    /// What the server does with calls while the log cannot commit records.
    pub(crate) on_failure: AuditOnFailure,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // An acknowledged record survives a kill -9 at a fraction of the
            // cost of an fsync per group commit; SECURITY.md says when to
            // choose "full".
            durability: AuditDurability::ProcessCrash,
            seal_every_records: 1_000_000,
            on_failure: AuditOnFailure::Refuse,
        }
    }
}

/// `audit.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuditOnFailure {
    /// Answer every call UNAVAILABLE, after authentication and before it
    /// takes effect, until a record commits again: nothing happens that the
    /// log cannot record.
    Refuse,
    /// Keep serving; failed appends are only logged and counted.
    Serve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuditDurability {
    Full,
    ProcessCrash,
}

impl AuditConfig {
    /// Opens the log under `data_dir` when auditing is enabled.
    pub(crate) fn open(&self, data_dir: &std::path::Path) -> anyhow::Result<Option<AuditLog>> {
        if !self.enabled {
            return Ok(None);
        }
        crate::config::private_dir(&::audit::audit_dir(data_dir))?;
        let mut config = ::audit::Config::new(data_dir);
        config.durability = match self.durability {
            AuditDurability::Full => Durability::Full,
            AuditDurability::ProcessCrash => Durability::ProcessCrash,
        };
        config.seal_every_records = self.seal_every_records;
        let log = AuditLog::open(config).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the audit log in {}: {e}",
                ::audit::audit_dir(data_dir).display()
            )
        })?;
        Ok(Some(log))
    }
}

/// The gate that refuses calls while the audit log cannot commit records
/// (`audit.on_failure = "refuse"`). It sits after authentication, so the
/// refusal is recorded with the caller's identity and an unauthenticated
/// caller learns nothing about the log. The refused calls' own records keep
/// reaching the writer, and the first that commits ends the refusals.
pub(crate) struct RefuseWhileFailing {
    log: AuditLog,
}

impl RefuseWhileFailing {
    pub(crate) fn layer(log: AuditLog) -> GateLayer<Self> {
        GateLayer::new(Arc::new(Self { log }))
    }
}

impl Check for RefuseWhileFailing {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        if !self.log.is_failing() {
            return Ok(());
        }
        if let Some(notes) = request.extensions().get::<CallNotes>() {
            notes.update(|notes| notes.summary = Some(REFUSED_SUMMARY.to_owned()));
        }
        Err(Status::unavailable(
            "the audit log cannot record calls, so the server refuses them until it can",
        ))
    }
}

/// The summary recorded for a call refused by [`RefuseWhileFailing`].
const REFUSED_SUMMARY: &str = "refused: the audit log was failing";

/// Most bytes read from a request body that an inner layer refused without
/// reading, to compute its digest.
pub(crate) const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// How long the record waits for the request digest of a body that is still
/// arriving when the call ends.
const DIGEST_WAIT: Duration = Duration::from_secs(2);

/// Longest string stored in a record field; longer values (a hostile method
/// path, a long error reason) are cut at a character boundary.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone)]
pub(crate) struct AuditLayer {
    log: Option<AuditLog>,
}

impl AuditLayer {
    /// With `log` set, records every call; without, only counts calls in the
    /// metrics.
    pub(crate) fn new(log: Option<AuditLog>) -> Self {
        Self { log }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            log: self.log.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Audit<S> {
    inner: S,
    log: Option<AuditLog>,
}

impl<S> Service<Request<Body>> for Audit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let method = request.uri().path().to_owned();
        let notes = CallNotes::default();
        let mut digest = None;
        if self.log.is_some() {
            request.extensions_mut().insert(notes.clone());
            let (sender, receiver) = oneshot::channel();
            digest = Some(receiver);
            request = request.map(|body| Body::new(HashingBody::new(body, sender)));
        }
        let peer = request
            .extensions()
            .get::<Arc<PeerInfo>>()
            .map(|peer| peer.remote.to_string())
            .unwrap_or_default();
        let call = Call {
            log: self.log.clone(),
            notes,
            method,
            time_unix_ms,
            started,
            peer,
            digest,
        };
        let future = self.inner.call(request);
        let mut unanswered = Unanswered(Some(call));
        Box::pin(async move {
            let result = future.await;
            let Some(call) = unanswered.0.take() else {
                return result;
            };
            match result {
                Ok(response) => Ok(call.watch(response).await),
                Err(error) => {
                    // The transport turns the error into a reset stream; the
                    // client sees no status, so none is invented here.
                    drop(call.record("UNKNOWN"));
                    Err(error)
                }
            }
        })
    }
}

/// A call whose service has not answered yet. Dropped with the call still in
/// it, the call's future was dropped: the client cancelled, its deadline
/// passed, or the server's request timeout cut the call. The call may already
/// have taken effect (a sandboxed command ran), so it is recorded as
/// CANCELLED, the status the client sees.
struct Unanswered(Option<Call>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(call) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            drop(call.record("CANCELLED"));
        }
    }
}

/// What the layer knows about one call until it is recorded.
struct Call {
    log: Option<AuditLog>,
    notes: CallNotes,
    method: String,
    time_unix_ms: i64,
    started: Instant,
    peer: String,
    digest: Option<oneshot::Receiver<String>>,
}

impl Call {
    /// Records a trailers-only response at once. Otherwise takes the frames
    /// the body has ready: when they include its end (a unary answer), the
    /// call is recorded and the whole answer is released at once after the
    /// commit, so that the connection sends it in one write; a body still
    /// producing frames (a stream) is wrapped so that the record is made when
    /// its trailers come.
    async fn watch(self, response: Response<Body>) -> Response<Body> {
        if let Some(code) = grpc_status(response.headers()) {
            if let Some(committed) = self.record(code) {
                committed.after_other_calls().await;
            }
            return response;
        }
        let (parts, mut body) = response.into_parts();
        let mut ready = VecDeque::new();
        match take_ready_frames(&mut body, &mut ready).await {
            Some(code) => {
                if let Some(committed) = self.record(code) {
                    committed.after_other_calls().await;
                }
                let answer = StreamBody::new(futures::stream::iter(ready));
                Response::from_parts(parts, Body::new(answer))
            }
            None => Response::from_parts(
                parts,
                Body::new(RecordingBody {
                    inner: body,
                    ready,
                    call: Some(self),
                    stage: Stage::Streaming,
                }),
            ),
        }
    }

    /// Counts the call in the metrics and queues its record. The returned
    /// [`Committing`], present when auditing is on, resolves once the record
    /// is committed; the record is committed even if it is dropped.
    fn record(mut self, code: &'static str) -> Option<Committing> {
        let elapsed = self.started.elapsed();
        // Other paths are chosen by the client; one label value for all of
        // them keeps the metric's cardinality bounded.
        let label = if known_methods().contains(self.method.as_str()) {
            self.method.clone()
        } else {
            "unknown".to_owned()
        };
        metrics::counter!("cordon_rpc_requests_total", "method" => label.clone(), "code" => code)
            .increment(1);
        metrics::histogram!("cordon_rpc_duration_seconds", "method" => label)
            .record(elapsed.as_secs_f64());
        let log = self.log.clone()?;
        // A unary request has been read whole before the answer, so its
        // digest is ready and the record is queued right here, without a task
        // or a timer of its own. A body still arriving gets a task that waits
        // for it.
        let request_sha256 = match self.digest.take() {
            None => String::new(),
            Some(mut receiver) => match receiver.try_recv() {
                Ok(digest) => digest,
                Err(oneshot::error::TryRecvError::Closed) => String::new(),
                Err(oneshot::error::TryRecvError::Empty) => {
                    return Some(Committing::Task(tokio::spawn(async move {
                        let request_sha256 = tokio::time::timeout(DIGEST_WAIT, receiver)
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                        let entry = self.entry(code, elapsed, request_sha256);
                        append(&log, entry).await;
                    })));
                }
            },
        };
        let entry = self.entry(code, elapsed, request_sha256);
        let submitted = Instant::now();
        match log.try_append(entry) {
            Ok(appending) => Some(Committing::Queued(Some((appending, submitted)))),
            Err(TryAppendError::Full(entry)) => Some(Committing::Task(tokio::spawn(async move {
                append(&log, *entry).await;
            }))),
            Err(TryAppendError::Append(error)) => {
                appended(Err(error), submitted);
                None
            }
            Err(error) => {
                tracing::error!(%error, "audit record could not be appended");
                None
            }
        }
    }

    fn entry(&self, code: &'static str, elapsed: Duration, request_sha256: String) -> Entry {
        let notes = self.notes.snapshot();
        Entry {
            time_unix_ms: self.time_unix_ms,
            identity: clip(notes.identity.as_deref().unwrap_or("anonymous")),
            auth_method: notes.auth_method.unwrap_or("").to_owned(),
            method: clip(&self.method),
            tool: clip(notes.tool.as_deref().unwrap_or("")),
            request_sha256,
            status: code.to_owned(),
            summary: clip(notes.summary.as_deref().unwrap_or("")),
            duration_us: u64::try_from(elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .min(i64::MAX as u64),
            peer: self.peer.clone(),
            sandboxed: notes.sandboxed,
            rate_limited: notes.rate_limited,
            trust_level: clip(notes.trust_level.as_deref().unwrap_or("")),
            kind: Kind::Rpc,
        }
    }
}

/// A call's record on its way to the log.
enum Committing {
    /// Queued; `None` once the commit has been observed.
    Queued(Option<(Appending, Instant)>),
    /// Queued by a task of its own, which observes the commit.
    Task(tokio::task::JoinHandle<()>),
}

impl Committing {
    /// Lets the other calls that are ready run before waiting for the commit. With the journal,
    /// the records they queue meanwhile are written together with this one, in one `write`
    /// instead of one each.
    async fn after_other_calls(self) {
        tokio::task::yield_now().await;
        self.await;
    }
}

impl Future for Committing {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self {
            Committing::Queued(queued) => {
                if let Some((appending, submitted)) = queued {
                    let result = ready!(Pin::new(appending).poll(cx));
                    appended(result, *submitted);
                    *queued = None;
                }
                Poll::Ready(())
            }
            // A failed task has already been logged; the answer goes out
            // either way.
            Committing::Task(task) => Pin::new(task).poll(cx).map(drop),
        }
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        // The client went away before the commit: the record is still
        // committed, and its outcome still belongs in the metrics.
        if let Committing::Queued(queued) = self
            && let Some((appending, submitted)) = queued.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { appended(appending.await, submitted) });
        }
    }
}

/// Appends `entry` and waits for its commit.
pub(crate) async fn append(log: &AuditLog, entry: Entry) {
    let submitted = Instant::now();
    let result = log.append(entry).await;
    appended(result, submitted);
}

/// Measures a commit and counts and logs a failed one.
fn appended(result: Result<u64, AppendError>, submitted: Instant) {
    metrics::histogram!("cordon_audit_append_seconds").record(submitted.elapsed().as_secs_f64());
    if let Err(error) = result {
        metrics::counter!("cordon_audit_append_failures_total").increment(1);
        tracing::error!(%error, "audit record could not be appended");
    }
}

/// Most frames taken from a response body before it counts as a stream.
const MAX_READY_FRAMES: usize = 8;

type BodyFrame = Result<Frame<Bytes>, Status>;

/// Moves the frames `body` has ready into `ready`, stopping at the first
/// frame that is not ready yet or at [`MAX_READY_FRAMES`]. Returns the call's
/// status code name when the body has ended.
async fn take_ready_frames(
    body: &mut Body,
    ready: &mut VecDeque<BodyFrame>,
) -> Option<&'static str> {
    std::future::poll_fn(|cx| {
        while ready.len() < MAX_READY_FRAMES {
            // A pending body has registered the waker; the stream that takes
            // over polls it again, so the wake-up is not lost.
            let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) else {
                return Poll::Ready(None);
            };
            match frame {
                None => return Poll::Ready(Some("UNKNOWN")),
                Some(Ok(frame)) => {
                    let code = frame
                        .trailers_ref()
                        .map(|trailers| grpc_status(trailers).unwrap_or("UNKNOWN"));
                    ready.push_back(Ok(frame));
                    if code.is_some() {
                        return Poll::Ready(code);
                    }
                }
                Some(Err(status)) => {
                    let code = status_name(&status);
                    ready.push_back(Err(status));
                    return Poll::Ready(Some(code));
                }
            }
        }
        Poll::Ready(None)
    })
    .await
}

fn status_name(status: &Status) -> &'static str {
    code_name(status.code() as usize)
}

/// The name of gRPC status code `code`; codes beyond the known ones are
/// UNKNOWN.
fn code_name(code: usize) -> &'static str {
    STATUS_NAMES.get(code).copied().unwrap_or("UNKNOWN")
}

/// Every method path this server can serve, read from the embedded
/// descriptors: the only values the metrics' `method` label takes.
fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known: HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // The descriptor set is generated at build time; a decoding failure
        // only costs the labels, never the call.
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
            crate::proto::FILE_DESCRIPTOR_SET,
        )
        .unwrap_or_default();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
        known
    })
}

/// Cuts `text` to at most [`MAX_TEXT`] bytes at a character boundary.
pub(crate) fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The gRPC status code name in `headers`, when they carry one.
fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code: usize = value.to_str().ok()?.trim().parse().ok()?;
    Some(code_name(code))
}

/// A SHA-256 digest in lowercase hex. `hex::encode` builds its string one
/// character at a time, which cost about 1% of an audited call.
fn lower_hex(digest: &[u8]) -> String {
    let mut out = [0u8; 64];
    if hex::encode_to_slice(digest, &mut out).is_err() {
        return hex::encode(digest);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request body, passed through unchanged while its message payloads are
/// hashed. The digest is sent when the body ends; a body dropped unread is
/// drained on a task of its own first.
struct HashingBody {
    inner: Body,
    hasher: Sha256,
    framing: Framing,
    read: usize,
    done: Option<oneshot::Sender<String>>,
}

impl HashingBody {
    fn new(inner: Body, done: oneshot::Sender<String>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            framing: Framing::default(),
            read: 0,
            done: Some(done),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.read = self.read.saturating_add(data.len());
        self.framing.feed(data, &mut self.hasher);
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let digest = std::mem::take(&mut self.hasher).finalize();
            let _ = done.send(lower_hex(&digest));
        }
    }
}

impl HttpBody for HashingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.feed(&data);
                }
                if frame.is_trailers() {
                    self.finish();
                }
            }
            None => self.finish(),
            Some(Err(_)) => {
                // The digest of a broken body would be a digest of nothing the
                // client sent; the record gets none.
                self.done.take();
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for HashingBody {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        if self.inner.is_end_stream() {
            let digest = std::mem::take(&mut self.hasher).finalize();
            let _ = done.send(lower_hex(&digest));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut body = std::mem::replace(&mut self.inner, Body::empty());
        let mut hasher = std::mem::take(&mut self.hasher);
        let mut framing = std::mem::take(&mut self.framing);
        let mut read = self.read;
        runtime.spawn(async move {
            let drained = tokio::time::timeout(DIGEST_WAIT, async {
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return false };
                    if let Some(data) = frame.data_ref() {
                        read = read.saturating_add(data.len());
                        if read > DRAIN_LIMIT {
                            return false;
                        }
                        framing.feed(data, &mut hasher);
                    }
                }
                true
            })
            .await;
            if drained == Ok(true) {
                let _ = done.send(lower_hex(&hasher.finalize()));
            }
        });
    }
}

/// Follows gRPC message framing (1 flag byte, 4 length bytes, payload)
/// across data frames and hashes only the payloads.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8], hasher: &mut Sha256) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                hasher.update(&data[..n]);
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let [_, a, b, c, d] = self.header;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
            }
        }
    }
}

enum Stage {
    Streaming,
    /// The trailers (or the end of the body) arrived; they are held back
    /// until the record is committed.
    Recording {
        committed: Option<Committing>,
        last: Option<Result<Frame<Bytes>, Status>>,
    },
    Done,
}

/// The response body, passed through unchanged until its trailers, which are
/// released only once the call's record is committed.
struct RecordingBody {
    inner: Body,
    /// Frames taken from `inner` before it was wrapped; they go out first.
    ready: VecDeque<BodyFrame>,
    call: Option<Call>,
    stage: Stage,
}

impl RecordingBody {
    fn start_recording(&mut self, code: &'static str, last: Option<Result<Frame<Bytes>, Status>>) {
        match self.call.take() {
            Some(call) => {
                self.stage = Stage::Recording {
                    committed: call.record(code),
                    last,
                };
            }
            None => {
                self.stage = Stage::Done;
            }
        }
    }
}

impl HttpBody for RecordingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        loop {
            match &mut self.stage {
                Stage::Streaming => {
                    let frame = match self.ready.pop_front() {
                        Some(frame) => Some(frame),
                        None => ready!(Pin::new(&mut self.inner).poll_frame(cx)),
                    };
                    match frame {
                        Some(Ok(frame)) => {
                            let Some(trailers) = frame.trailers_ref() else {
                                return Poll::Ready(Some(Ok(frame)));
                            };
                            let code = grpc_status(trailers).unwrap_or("UNKNOWN");
                            self.start_recording(code, Some(Ok(frame)));
                        }
                        Some(Err(status)) => {
                            let code = status_name(&status);
                            self.start_recording(code, Some(Err(status)));
                        }
                        None => self.start_recording("UNKNOWN", None),
                    }
                }
                Stage::Recording { committed, last } => {
                    if let Some(committed) = committed {
                        ready!(Pin::new(committed).poll(cx));
                    }
                    let last = last.take();
                    self.stage = Stage::Done;
                    return Poll::Ready(last);
                }
                Stage::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        // The client went away before the trailers: the call was cancelled.
        if let Some(call) = self.call.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            drop(call.record("CANCELLED"));
        }
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::{Framing, MAX_TEXT, clip};

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for message in messages {
            wire.push(0);
            wire.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(message);
        }
        wire
    }

    #[test]
    fn digest_covers_payloads_only_however_the_frames_split() {
        let messages: [&[u8]; 3] = [b"first message", b"", b"third"];
        let wire = framed(&messages);
        let expected = Sha256::digest(messages.concat());
        for chunk in 1..=wire.len() {
            let mut framing = Framing::default();
            let mut hasher = Sha256::new();
            for piece in wire.chunks(chunk) {
                framing.feed(piece, &mut hasher);
            }
            assert_eq!(hasher.finalize(), expected, "chunks of {chunk} bytes");
        }
        let mut framing = Framing::default();
        let mut hasher = Sha256::new();
        framing.feed(&framed(&[b"other"]), &mut hasher);
        assert_ne!(hasher.finalize(), expected);
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT && clipped.len() >= MAX_TEXT - 1);
        assert!(long.starts_with(&clipped));
    }
}
