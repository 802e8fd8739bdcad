//! `cordon.guard.v1.Guard`: the guard library's input and output checks over
//! gRPC. Every method needs the `guard.check` permission (RBAC layer). The
//! verdicts are advice; the sandbox is the enforcement.
//!
//! Each check runs on a blocking thread: path checks touch the file system,
//! URL checks resolve host names, and scans of large texts take CPU time that
//! must not stall the async workers.

use std::path::PathBuf;
use std::sync::Arc;

use guard::{PathError, UrlChecker};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::notes;
use crate::proto::guard::v1 as pb;
use crate::services::blocking;

/// `[guard]` in the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct GuardConfig {
    /// Roots `CheckPath` uses when a request names none. Empty: no path is
    /// allowed unless the request names its roots.
    pub(crate) allowed_roots: Vec<PathBuf>,
}

#[derive(Debug)]
pub(crate) struct GuardService {
    pub(crate) allowed_roots: Arc<Vec<PathBuf>>,
    pub(crate) urls: Arc<UrlChecker>,
}

impl GuardService {
    pub(crate) fn new(config: &GuardConfig) -> Self {
        Self {
            allowed_roots: Arc::new(config.allowed_roots.clone()),
            urls: Arc::new(UrlChecker::default()),
        }
    }
}

fn finding(f: guard::Finding) -> pb::Finding {
    pb::Finding {
        category: f.category.as_str().to_owned(),
        reason: f.reason,
        start: f.start as u64,
        end: f.end as u64,
    }
}

fn path_error(error: PathError) -> Status {
    match error {
        PathError::RelativeRoot(_) => Status::invalid_argument(format!("allowed_roots: {error}")),
        other => Status::invalid_argument(format!("path: {other}")),
    }
}

#[tonic::async_trait]
impl pb::guard_server::Guard for GuardService {
    async fn check_path(
        &self,
        request: Request<pb::CheckPathRequest>,
    ) -> Result<Response<pb::CheckPathResponse>, Status> {
        let message = request.get_ref().clone();
        if message.path.is_empty() {
            return Err(Status::invalid_argument("path: must not be empty"));
        }
        let roots: Vec<PathBuf> = if message.allowed_roots.is_empty() {
            self.allowed_roots.as_ref().clone()
        } else {
            if message.allowed_roots.iter().any(String::is_empty) {
                return Err(Status::invalid_argument("allowed_roots: an entry is empty"));
            }
            message.allowed_roots.iter().map(PathBuf::from).collect()
        };
        let verdict = blocking("the path check", move || {
            guard::check_path(&message.path, &roots)
        })
        .await?
        .map_err(path_error)?;
        notes::note(&request, |n| {
            n.summary = Some(format!(
                "path {}{}",
                if verdict.allowed {
                    "allowed"
                } else {
                    "refused"
                },
                if verdict.sensitive { ", sensitive" } else { "" }
            ));
        });
        Ok(Response::new(pb::CheckPathResponse {
            allowed: verdict.allowed,
            resolved_path: verdict.resolved.to_string_lossy().into_owned(),
            sensitive: verdict.sensitive,
            findings: verdict.findings.into_iter().map(finding).collect(),
        }))
    }

    async fn check_url(
        &self,
        request: Request<pb::CheckUrlRequest>,
    ) -> Result<Response<pb::CheckUrlResponse>, Status> {
        let message = request.get_ref().clone();
        if message.url.is_empty() {
            return Err(Status::invalid_argument("url: must not be empty"));
        }
        let urls = self.urls.clone();
        let verdict = blocking("the URL check", move || {
            urls.check(&message.url, &message.allowed_schemes)
        })
        .await?;
        notes::note(&request, |n| {
            n.summary = Some(if verdict.allowed {
                "url allowed".to_owned()
            } else {
                "url refused".to_owned()
            });
        });
        Ok(Response::new(pb::CheckUrlResponse {
            allowed: verdict.allowed,
            reason: verdict.reason.map(|r| r.to_string()).unwrap_or_default(),
            resolved_addresses: verdict.addresses.iter().map(ToString::to_string).collect(),
            host: verdict.host.unwrap_or_default(),
        }))
    }

    async fn check_command(
        &self,
        request: Request<pb::CheckCommandRequest>,
    ) -> Result<Response<pb::CheckCommandResponse>, Status> {
        let message = request.get_ref().clone();
        if message.command.trim().is_empty() && message.argv.is_empty() {
            return Err(Status::invalid_argument(
                "command: give a command line or argv",
            ));
        }
        // When both are given, both are checked: a finding in either counts.
        // Offsets of argv findings are into the arguments joined by spaces.
        let verdict = blocking("the command check", move || {
            let mut findings = Vec::new();
            if !message.command.trim().is_empty() {
                findings.extend(guard::check_command(&message.command).findings);
            }
            if !message.argv.is_empty() {
                findings.extend(guard::check_argv(&message.argv).findings);
            }
            findings
        })
        .await?;
        notes::note(&request, |n| {
            n.summary = Some(format!("{} command findings", verdict.len()));
        });
        Ok(Response::new(pb::CheckCommandResponse {
            dangerous: !verdict.is_empty(),
            findings: verdict.into_iter().map(finding).collect(),
        }))
    }

    async fn scan_text(
        &self,
        request: Request<pb::ScanTextRequest>,
    ) -> Result<Response<pb::ScanTextResponse>, Status> {
        let text = request.get_ref().text.clone();
        let report = blocking("the scan", move || guard::scan_text(&text)).await?;
        notes::note(&request, |n| {
            n.summary = Some(format!(
                "{}{} text findings",
                report.findings.len(),
                if report.findings_truncated { "+" } else { "" }
            ));
        });
        Ok(Response::new(pb::ScanTextResponse {
            suspicious: report.suspicious,
            findings: report.findings.into_iter().map(finding).collect(),
            redacted: report.redacted,
            findings_truncated: report.findings_truncated,
        }))
    }
}
