//! `cordon.audit.v1.Audit`: reads the tamper-evident log the audit layer
//! writes. Every method needs the `audit.read` permission (RBAC layer).

use ::audit::{Anchor, AuditLog, ChainHash, QueryError, Record, VerifyError};
use tonic::{Request, Response, Status};

use crate::notes;
use crate::proto::audit::v1 as pb;

#[derive(Debug)]
pub(crate) struct AuditService {
    pub(crate) log: AuditLog,
}

/// A filter of 0 means "no bound", as proto3 cannot tell 0 from unset.
fn bound(value: i64) -> Option<i64> {
    (value != 0).then_some(value)
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn to_pb(record: Record) -> pb::Record {
    let entry = record.entry;
    pb::Record {
        seq: record.seq,
        time_unix_ms: entry.time_unix_ms,
        identity: entry.identity,
        auth_method: entry.auth_method,
        method: entry.method,
        tool: entry.tool,
        request_sha256: entry.request_sha256,
        status: entry.status,
        summary: entry.summary,
        duration_us: entry.duration_us,
        peer: entry.peer,
        sandboxed: entry.sandboxed,
        rate_limited: entry.rate_limited,
        trust_level: entry.trust_level,
        kind: entry.kind.as_str().to_owned(),
        prev_hash: record.prev_hash.to_hex(),
        hash: record.hash.to_hex(),
    }
}

fn query_failed(error: QueryError) -> Status {
    tracing::error!(%error, "audit query failed");
    Status::internal("the audit log could not be read")
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let message = request.get_ref().clone();
        let after_seq = if message.page_token.is_empty() {
            None
        } else {
            Some(message.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument("page_token: not a token returned by a previous query")
            })?)
        };
        if message.since_unix_ms != 0
            && message.until_unix_ms != 0
            && message.since_unix_ms >= message.until_unix_ms
        {
            return Err(Status::invalid_argument(
                "until_unix_ms: must be after since_unix_ms",
            ));
        }
        let query = ::audit::Query {
            identity: non_empty(message.identity),
            method: non_empty(message.method),
            tool: non_empty(message.tool),
            success: message.success,
            since_unix_ms: bound(message.since_unix_ms),
            until_unix_ms: bound(message.until_unix_ms),
            page_size: message.page_size,
            after_seq,
        };
        let page = self.log.query(query).await.map_err(query_failed)?;
        notes::note(&request, |n| {
            n.summary = Some(format!("{} records", page.records.len()));
        });
        Ok(Response::new(pb::QueryResponse {
            records: page.records.into_iter().map(to_pb).collect(),
            next_page_token: page
                .next_after_seq
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let query = ::audit::StatsQuery {
            since_unix_ms: bound(request.get_ref().since_unix_ms),
        };
        let stats = self.log.stats(query).await.map_err(query_failed)?;
        let counts = |counts: Vec<::audit::Count>| {
            counts
                .into_iter()
                .map(|c| pb::Count {
                    name: c.name,
                    count: c.count,
                })
                .collect()
        };
        Ok(Response::new(pb::StatsResponse {
            total: stats.total,
            success_rate: stats.success_rate,
            top_methods: counts(stats.top_methods),
            top_tools: counts(stats.top_tools),
            recent_failures: stats.recent_failures.into_iter().map(to_pb).collect(),
            mean_duration_us: stats.mean_duration_us,
            p99_duration_us: stats.p99_duration_us,
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let anchor = anchor_of(request.get_ref())?;
        let report = match anchor {
            Some(anchor) => self.log.verify_with_anchor(anchor).await,
            None => self.log.verify().await,
        }
        .map_err(|error: VerifyError| {
            tracing::error!(%error, "audit verification could not run");
            Status::internal("the audit log could not be verified")
        })?;
        notes::note(&request, |n| {
            n.summary = Some(if report.ok {
                format!("chain ok, {} records", report.records_checked)
            } else {
                format!(
                    "chain broken at seq {}",
                    report.first_bad_seq.unwrap_or_default()
                )
            });
        });
        Ok(Response::new(pb::VerifyResponse {
            ok: report.ok,
            records_checked: report.records_checked,
            first_bad_seq: report.first_bad_seq.unwrap_or_default(),
            reason: report.reason.unwrap_or_default(),
            segments: report.segments,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_hex(),
        }))
    }
}

/// The anchor a `VerifyRequest` names, if any.
fn anchor_of(request: &pb::VerifyRequest) -> Result<Option<Anchor>, Status> {
    match (request.anchor_seq, request.anchor_hash.as_str()) {
        (0, "") => Ok(None),
        (_, "") => Err(Status::invalid_argument(
            "anchor_hash: required with anchor_seq",
        )),
        (seq, hash) => {
            let hash = ChainHash::from_hex(hash)
                .ok_or_else(|| Status::invalid_argument("anchor_hash: expected 64 hex digits"))?;
            Ok(Some(Anchor { seq, hash }))
        }
    }
}
