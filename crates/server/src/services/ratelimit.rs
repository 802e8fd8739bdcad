//! `cordon.ratelimit.v1.RateLimit`: quota checks against the server's one
//! [`Limiter`].
//!
//! Keys are scoped by caller: a caller without the `ratelimit.admin`
//! permission checks `<identity>:<key>`, so one agent can neither drain nor
//! peek at another agent's bucket. Admins use keys verbatim, which is how they
//! reach (and Reset) an agent's bucket: agent `bot` checking key `k` is
//! admin key `bot:k`. A `:` or `%` in the identity is percent-encoded
//! ([`identity_prefix`]) so that two identities can never produce the same
//! prefix, and the identity is the key's Redis Cluster hash tag, so one
//! caller's CheckMultiple stays in one slot. Per-tool checks of Sandbox.Run
//! use the key `<identity>:<tool>` (`<identity>:default` for tools under the
//! default policy), the same bucket an agent reaches with key `<tool>` and the
//! tool's policy.
//!
//! Every new key a caller creates, admin or not, is charged to the caller's
//! identity, in memory and in Redis: a caller over its key quota, or a store
//! whose room for callers is full, gets RESOURCE_EXHAUSTED naming the limit,
//! and nothing is consumed.
//!
//! A denied Check is not an error: it answers OK with `allowed = false`, and
//! the metadata `retry-after` (whole seconds, rounded up) and
//! `retry-after-ms` tell a client when to come back.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use ::ratelimit::{
    Algorithm, CapacityError, CheckError, Decision, Descriptor, Limit, LimitError, Limiter, Owner,
    ResetError, Target, identity_prefix,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::layers::authz::Authorizer;
use crate::notes;
use crate::proto::ratelimit::v1 as pb;
use crate::services::identity::caller;

/// Longest key accepted, in bytes; keys are stored per request in memory and
/// in Redis, so an unbounded key would be an unbounded allocation.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// Most descriptors in one CheckMultiple.
pub(crate) const MAX_DESCRIPTORS: usize = 64;

const ADMIN_PERMISSION: &str = "ratelimit.admin";

#[derive(Debug)]
pub(crate) struct RateLimitService {
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) authorizer: Arc<Authorizer>,
}

/// One descriptor of a request, validated and with its key scoped.
struct Parsed<'a> {
    key: Cow<'a, str>,
    cost: u64,
    target: ParsedTarget<'a>,
}

enum ParsedTarget<'a> {
    Policy(&'a str),
    Inline(Limit),
}

impl Parsed<'_> {
    fn descriptor<'s>(&'s self, identity: &'s str) -> Descriptor<'s> {
        let d = match &self.target {
            ParsedTarget::Policy(name) => {
                Descriptor::policy(&self.key, self.cost, name).for_caller(Some(identity), None)
            }
            ParsedTarget::Inline(limit) => Descriptor::inline(&self.key, self.cost, *limit),
        };
        d.owned_by(Owner::Identity(identity))
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

fn algorithm(value: i32, field: &str) -> Result<Algorithm, Status> {
    match pb::Algorithm::try_from(value) {
        Ok(pb::Algorithm::SlidingWindowLog) => Ok(Algorithm::SlidingWindowLog),
        Ok(pb::Algorithm::SlidingWindowCounter) => Ok(Algorithm::SlidingWindowCounter),
        Ok(pb::Algorithm::TokenBucket) => Ok(Algorithm::TokenBucket),
        Ok(pb::Algorithm::Gcra) => Ok(Algorithm::Gcra),
        Ok(pb::Algorithm::FixedWindow) => Ok(Algorithm::FixedWindow),
        Ok(pb::Algorithm::Unspecified) | Err(_) => Err(invalid(
            &format!("{field}.algorithm"),
            "must be one of the ALGORITHM_* values other than UNSPECIFIED",
        )),
    }
}

fn inline_limit(l: &pb::InlineLimit, field: &str) -> Result<Limit, Status> {
    let algorithm = algorithm(l.algorithm, field)?;
    Limit::new(
        algorithm,
        l.limit,
        Duration::from_millis(l.window_ms),
        l.burst,
    )
    .map_err(|e| {
        let which = match e {
            LimitError::ZeroLimit | LimitError::LogTooLarge => "limit",
            LimitError::WindowTooShort => "window_ms",
            LimitError::BurstNotSupported => "burst",
            _ => "",
        };
        let name = if which.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{which}")
        };
        invalid(&name, e)
    })
}

fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn decision(d: &Decision) -> pb::Decision {
    pb::Decision {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: ceil_millis(d.reset_after),
        retry_after_ms: ceil_millis(d.retry_after),
    }
}

/// Adds `retry-after` (seconds, at least 1) and `retry-after-ms` to a denial.
fn with_retry_after<T>(mut response: Response<T>, retry_after: Duration) -> Response<T> {
    let ms = ceil_millis(retry_after);
    let seconds = ms.div_ceil(1000).max(1);
    let metadata = response.metadata_mut();
    metadata.insert("retry-after", MetadataValue::from(seconds));
    metadata.insert("retry-after-ms", MetadataValue::from(ms));
    response
}

/// Maps a check that could not be decided; `prefix` names the descriptor.
fn check_error(e: CheckError, prefix: &str) -> Status {
    match e {
        CheckError::UnknownPolicy(name) => invalid(
            &format!("{prefix}policy"),
            format!("unknown policy {name:?}"),
        ),
        CheckError::CostExceedsCapacity { .. } => invalid(&format!("{prefix}cost"), e),
        CheckError::MixedBackends | CheckError::CrossSlot(..) => invalid("descriptors", e),
        CheckError::Capacity(e) => capacity_exhausted(&e),
        other => Status::internal(other.to_string()),
    }
}

/// RESOURCE_EXHAUSTED for a key that did not fit, naming the setting that
/// bounds it. No retry delay is given: room comes back only when keys'
/// windows pass, which the caller's own keys decide, or when an operator
/// raises the setting.
pub(crate) fn capacity_exhausted(e: &CapacityError) -> Status {
    let setting = match e {
        CapacityError::IdentityQuota { .. } => "ratelimit.memory.max_keys_per_identity",
        CapacityError::CallersFull { .. } => "ratelimit.memory.max_keys",
        CapacityError::ServerFull { .. } => "ratelimit.memory.server_keys",
        CapacityError::RedisIdentityQuota { .. } => "ratelimit.redis.max_keys_per_identity",
        _ => "ratelimit.memory",
    };
    Status::resource_exhausted(format!("{e} ({setting})"))
}

impl RateLimitService {
    /// The index of the descriptor a per-descriptor error is about, so that
    /// the status can name it.
    fn culprit(&self, e: &CheckError, descriptors: &[Descriptor<'_>]) -> Option<usize> {
        let policies = self.limiter.policies();
        descriptors.iter().position(|d| match (e, d.target) {
            (CheckError::UnknownPolicy(missing), Target::Policy { name, .. }) => {
                name == missing.as_str()
            }
            (CheckError::CostExceedsCapacity { .. }, Target::Inline(limit)) => {
                d.cost > limit.capacity()
            }
            (
                CheckError::CostExceedsCapacity { .. },
                Target::Policy {
                    name,
                    identity,
                    tool,
                },
            ) => policies
                .get(name)
                .is_some_and(|p| d.cost > p.resolve(identity, tool).capacity()),
            _ => false,
        })
    }

    fn is_admin(&self, roles: &[String]) -> bool {
        self.authorizer.allows(roles, ADMIN_PERMISSION)
    }

    fn parse<'a>(
        &self,
        prefix: Option<&str>,
        key: &'a str,
        cost: u64,
        limit: Option<&'a pb::check_request::Limit>,
        field: &str,
    ) -> Result<Parsed<'a>, Status> {
        if key.is_empty() {
            return Err(invalid(&format!("{field}key"), "must not be empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(
                &format!("{field}key"),
                format!("must be at most {MAX_KEY_BYTES} bytes"),
            ));
        }
        let target = match limit {
            Some(pb::check_request::Limit::Policy(name)) if !name.is_empty() => {
                ParsedTarget::Policy(name)
            }
            Some(pb::check_request::Limit::Inline(l)) => {
                ParsedTarget::Inline(inline_limit(l, &format!("{field}inline"))?)
            }
            _ => {
                return Err(invalid(
                    &format!("{field}policy"),
                    "name a policy or give an inline limit",
                ));
            }
        };
        let key = match prefix {
            Some(p) => Cow::Owned(format!("{p}:{key}")),
            None => Cow::Borrowed(key),
        };
        Ok(Parsed { key, cost, target })
    }
}

/// The descriptor's `oneof` has the same shape as the request's; convert it
/// so that both are validated by one function.
fn descriptor_limit(limit: &Option<pb::descriptor::Limit>) -> Option<pb::check_request::Limit> {
    limit.as_ref().map(|l| match l {
        pb::descriptor::Limit::Policy(p) => pb::check_request::Limit::Policy(p.clone()),
        pb::descriptor::Limit::Inline(i) => pb::check_request::Limit::Inline(*i),
    })
}

#[tonic::async_trait]
impl pb::rate_limit_server::RateLimit for RateLimitService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&request)?;
        let prefix = (!self.is_admin(&caller.roles)).then(|| identity_prefix(&caller.name));
        let body = request.get_ref();
        let parsed = self.parse(
            prefix.as_deref(),
            &body.key,
            body.cost,
            body.limit.as_ref(),
            "",
        )?;
        let d = self
            .limiter
            .check(&parsed.descriptor(&caller.name))
            .await
            .map_err(|e| check_error(e, ""))?;
        notes::note(&request, |n| {
            n.rate_limited = !d.allowed;
            n.summary = Some(if d.allowed { "allowed" } else { "denied" }.to_owned());
        });
        let decision_label = if d.allowed { "allowed" } else { "denied" };
        metrics::counter!("cordon_ratelimit_decisions_total", "decision" => decision_label)
            .increment(1);
        let response = Response::new(pb::CheckResponse {
            decision: Some(decision(&d)),
        });
        Ok(if d.allowed {
            response
        } else {
            with_retry_after(response, d.retry_after)
        })
    }

    async fn check_multiple(
        &self,
        request: Request<pb::CheckMultipleRequest>,
    ) -> Result<Response<pb::CheckMultipleResponse>, Status> {
        let caller = caller(&request)?;
        let prefix = (!self.is_admin(&caller.roles)).then(|| identity_prefix(&caller.name));
        let body = request.get_ref();
        if body.descriptors.is_empty() {
            return Err(invalid("descriptors", "must not be empty"));
        }
        if body.descriptors.len() > MAX_DESCRIPTORS {
            return Err(invalid(
                "descriptors",
                format!("at most {MAX_DESCRIPTORS} per call"),
            ));
        }
        let limits: Vec<_> = body
            .descriptors
            .iter()
            .map(|d| descriptor_limit(&d.limit))
            .collect();
        let parsed = body
            .descriptors
            .iter()
            .zip(&limits)
            .enumerate()
            .map(|(i, (d, limit))| {
                self.parse(
                    prefix.as_deref(),
                    &d.key,
                    d.cost,
                    limit.as_ref(),
                    &format!("descriptors[{i}]."),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let descriptors: Vec<Descriptor<'_>> =
            parsed.iter().map(|p| p.descriptor(&caller.name)).collect();
        let multi = self.limiter.check_many(&descriptors).await.map_err(|e| {
            let at = self.culprit(&e, &descriptors);
            check_error(
                e,
                &at.map_or_else(String::new, |i| format!("descriptors[{i}].")),
            )
        })?;
        notes::note(&request, |n| {
            n.rate_limited = !multi.allowed;
            n.summary = Some(if multi.allowed { "allowed" } else { "denied" }.to_owned());
        });
        let decision_label = if multi.allowed { "allowed" } else { "denied" };
        metrics::counter!("cordon_ratelimit_decisions_total", "decision" => decision_label)
            .increment(1);
        // The whole call can be admitted only when every denied descriptor
        // can, so the longest individual wait is the one to report.
        let retry_after = multi
            .decisions
            .iter()
            .map(|d| d.retry_after)
            .max()
            .unwrap_or_default();
        let response = Response::new(pb::CheckMultipleResponse {
            allowed: multi.allowed,
            decisions: multi.decisions.iter().map(decision).collect(),
        });
        Ok(if multi.allowed {
            response
        } else {
            with_retry_after(response, retry_after)
        })
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let policies = self
            .limiter
            .stats()
            .into_iter()
            .map(|s| pb::PolicyStats {
                policy: s.policy,
                allowed: s.allowed,
                denied: s.denied,
                backend_errors: s.backend_errors,
                fallbacks: s.fallbacks,
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse {
            policies,
            redis_degraded: self.limiter.redis().is_some_and(|r| r.is_degraded()),
        }))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let body = request.get_ref();
        if body.key.is_empty() {
            return Err(invalid("key", "must not be empty"));
        }
        let policy = (!body.policy.is_empty()).then_some(body.policy.as_str());
        match self.limiter.reset(&body.key, policy).await {
            Ok(()) => Ok(Response::new(pb::ResetResponse {})),
            Err(ResetError::UnknownPolicy(name)) => {
                Err(invalid("policy", format!("unknown policy {name:?}")))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::identity_prefix;

    #[test]
    fn scope_prefixes_never_collide() {
        assert_eq!(identity_prefix("bot"), "bot");
        // Without encoding, identity "a:b" with key "c" and identity "a" with
        // key "b:c" would share the bucket "a:b:c".
        assert_eq!(format!("{}:c", identity_prefix("a:b")), "a%3Ab:c");
        assert_ne!(
            format!("{}:c", identity_prefix("a:b")),
            format!("{}:b:c", identity_prefix("a"))
        );
        assert_ne!(identity_prefix("a%3Ab"), identity_prefix("a:b"));
    }
}
