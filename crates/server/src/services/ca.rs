//! `cordon.ca.v1.CertAuthority`: issues, renews and revokes client
//! certificates, and publishes the CA bundle and CRL.
//!
//! The server, never the request, decides what goes into a certificate: a
//! CSR only contributes its public key, and a renewal is always for the
//! identity of the certificate the caller connected with.

use std::sync::Arc;

use certgen::{CsrError, InventoryError, IssueError, Issued, ListQuery, RevocationReason, Status};
use tonic::{Request, Response};

use crate::ca::{CaState, IssueFailure};
use crate::layers::authn::{AuthMethod, RevokedSerials};
use crate::notes;
use crate::proto::ca::v1 as pb;
use crate::services::blocking;
use crate::services::identity::caller;
use crate::tls::TlsState;

#[derive(Debug)]
pub(crate) struct CaService {
    pub(crate) state: Arc<CaState>,
    pub(crate) tls: Arc<TlsState>,
    pub(crate) revoked: RevokedSerials,
}

type Reply<T> = Result<Response<T>, tonic::Status>;

fn issue_status(failure: IssueFailure) -> tonic::Status {
    match failure {
        IssueFailure::Pattern { .. } => {
            tonic::Status::invalid_argument(format!("identity: {failure}"))
        }
        IssueFailure::Csr(
            e @ (CsrError::Pem(_)
            | CsrError::Parse(_)
            | CsrError::Signature
            | CsrError::UnsupportedKey(_)),
        ) => tonic::Status::invalid_argument(format!("csr_pem: {e}")),
        IssueFailure::Csr(CsrError::Issue(e)) | IssueFailure::Issue(e) => issue_error_status(e),
        IssueFailure::Csr(e) => tonic::Status::invalid_argument(format!("csr_pem: {e}")),
        IssueFailure::Inventory(e) => inventory_status(e),
    }
}

fn issue_error_status(error: IssueError) -> tonic::Status {
    match error {
        IssueError::Name(e) => tonic::Status::invalid_argument(format!("identity: {e}")),
        IssueError::Validity(e) => {
            tonic::Status::invalid_argument(format!("validity_seconds: {e}"))
        }
        e => internal("signing the certificate", &e),
    }
}

fn inventory_status(error: InventoryError) -> tonic::Status {
    match error {
        InventoryError::Serial(e) => tonic::Status::invalid_argument(format!("serial: {e}")),
        InventoryError::Name(e) => tonic::Status::invalid_argument(format!("identity: {e}")),
        InventoryError::PageToken => tonic::Status::invalid_argument("page_token: invalid"),
        e @ InventoryError::UnknownSerial(_) => tonic::Status::not_found(e.to_string()),
        e @ InventoryError::AlreadyRevoked(_) => tonic::Status::failed_precondition(e.to_string()),
        e => internal("the ca inventory", &e),
    }
}

/// Internal failures are logged in full and reported without detail.
fn internal(what: &str, error: &dyn std::error::Error) -> tonic::Status {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(target: "cordon::ca", error = %chain, "{what} failed");
    tonic::Status::internal(format!("{what} failed"))
}

fn reason_from_proto(value: i32) -> Result<RevocationReason, tonic::Status> {
    let reason = pb::RevocationReason::try_from(value)
        .map_err(|_| tonic::Status::invalid_argument(format!("reason: unknown value {value}")))?;
    Ok(match reason {
        pb::RevocationReason::Unspecified => RevocationReason::Unspecified,
        pb::RevocationReason::KeyCompromise => RevocationReason::KeyCompromise,
        pb::RevocationReason::AffiliationChanged => RevocationReason::AffiliationChanged,
        pb::RevocationReason::Superseded => RevocationReason::Superseded,
        pb::RevocationReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        pb::RevocationReason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
    })
}

fn reason_to_proto(reason: RevocationReason) -> pb::RevocationReason {
    match reason {
        RevocationReason::KeyCompromise => pb::RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => pb::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => pb::RevocationReason::PrivilegeWithdrawn,
        _ => pb::RevocationReason::Unspecified,
    }
}

fn status_from_proto(value: i32) -> Result<Option<Status>, tonic::Status> {
    let status = pb::CertificateStatus::try_from(value)
        .map_err(|_| tonic::Status::invalid_argument(format!("status: unknown value {value}")))?;
    Ok(match status {
        pb::CertificateStatus::Unspecified => None,
        pb::CertificateStatus::Valid => Some(Status::Active),
        pb::CertificateStatus::Revoked => Some(Status::Revoked),
        pb::CertificateStatus::Expired => Some(Status::Expired),
    })
}

fn status_to_proto(status: Status) -> pb::CertificateStatus {
    match status {
        Status::Active => pb::CertificateStatus::Valid,
        Status::Revoked => pb::CertificateStatus::Revoked,
        Status::Expired => pb::CertificateStatus::Expired,
        _ => pb::CertificateStatus::Unspecified,
    }
}

/// Clients renew at two thirds of the lifetime: late enough to use most of
/// it, early enough to retry for a while if the CA is unreachable.
fn renew_after(issued: &Issued) -> i64 {
    let start = issued.not_before.unix_timestamp();
    let end = issued.not_after.unix_timestamp();
    start + (end - start) * 2 / 3
}

impl CaService {
    fn response(&self, issued: Issued) -> pb::IssueCertificateResponse {
        pb::IssueCertificateResponse {
            renew_after_unix: renew_after(&issued),
            certificate_pem: issued.cert_pem,
            private_key_pem: issued.key_pem.unwrap_or_default(),
            serial: issued.serial_hex,
            not_before_unix: issued.not_before.unix_timestamp(),
            not_after_unix: issued.not_after.unix_timestamp(),
            ca_pem: self.state.ca_pem().to_owned(),
        }
    }

    async fn issue_for(
        &self,
        identity: String,
        csr_pem: String,
        validity_seconds: u64,
    ) -> Result<Issued, tonic::Status> {
        let state = self.state.clone();
        let validity = state.validity(validity_seconds);
        blocking("the CA task", move || {
            let csr = (!csr_pem.is_empty()).then_some(csr_pem.as_str());
            state.issue(&identity, csr, validity)
        })
        .await?
        .map_err(issue_status)
    }
}

#[tonic::async_trait]
impl pb::cert_authority_server::CertAuthority for CaService {
    async fn issue_certificate(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Reply<pb::IssueCertificateResponse> {
        let actor = caller(&request)?.name.clone();
        let message = request.get_ref().clone();
        if message.identity.is_empty() {
            return Err(tonic::Status::invalid_argument("identity: required"));
        }
        let from_csr = !message.csr_pem.is_empty();
        let identity = message.identity.clone();
        let issued = self
            .issue_for(message.identity, message.csr_pem, message.validity_seconds)
            .await?;
        let serial = issued.serial_hex.clone();
        tracing::info!(
            target: "cordon::ca",
            actor = %actor,
            %identity,
            %serial,
            from_csr,
            not_after = issued.not_after.unix_timestamp(),
            "certificate issued"
        );
        notes::note(&request, |n| {
            n.summary = Some(format!("issued serial {serial} for {identity}"));
        });
        Ok(Response::new(self.response(issued)))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Reply<pb::IssueCertificateResponse> {
        let caller = caller(&request)?.clone();
        if caller.method != AuthMethod::ClientCertificate {
            return Err(tonic::Status::permission_denied(format!(
                "renewal is authenticated by the current client certificate; {} callers cannot renew",
                caller.method.as_str()
            )));
        }
        let message = request.get_ref().clone();
        if !message.identity.is_empty() && message.identity != caller.name {
            return Err(tonic::Status::permission_denied(format!(
                "identity {:?} may only renew its own certificate, not {:?}",
                caller.name, message.identity
            )));
        }
        let previous = caller.certificate_serial.clone().unwrap_or_default();
        let identity = caller.name.clone();
        let issued = self
            .issue_for(identity.clone(), message.csr_pem, message.validity_seconds)
            .await?;
        let serial = issued.serial_hex.clone();
        tracing::info!(
            target: "cordon::ca",
            actor = %identity,
            %identity,
            %serial,
            previous_serial = %previous,
            not_after = issued.not_after.unix_timestamp(),
            "certificate renewed"
        );
        notes::note(&request, |n| {
            n.summary = Some(format!(
                "renewed serial {previous} as {serial} for {identity}"
            ));
        });
        Ok(Response::new(self.response(issued)))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Reply<pb::RevokeCertificateResponse> {
        let actor = caller(&request)?.name.clone();
        let message = request.get_ref().clone();
        if message.serial.is_empty() {
            return Err(tonic::Status::invalid_argument("serial: required"));
        }
        let reason = reason_from_proto(message.reason)?;
        let state = self.state.clone();
        let tls = self.tls.clone();
        let revoked_set = self.revoked.clone();
        let (record, published) = blocking("the CA task", move || {
            let record = state.revoke(&message.serial, reason)?;
            // The revocation is committed; publishing can only fail for
            // local reasons (disk, signing), reported below without undoing it.
            let published = state.publish_and_reload(&tls, &revoked_set);
            Ok::<_, InventoryError>((record, published))
        })
        .await?
        .map_err(inventory_status)?;
        let serial = record.serial_hex.clone();
        let revoked_at = record.revocation.map_or(0, |(_, at)| at.unix_timestamp());
        tracing::info!(
            target: "cordon::ca",
            actor = %actor,
            identity = %record.identity,
            %serial,
            %reason,
            "certificate revoked"
        );
        notes::note(&request, |n| {
            n.summary = Some(format!(
                "revoked serial {serial} of {} ({reason})",
                record.identity
            ));
        });
        if let Err(error) = published {
            tracing::error!(
                target: "cordon::ca",
                %serial,
                error = format!("{error:#}"),
                "revocation recorded but the crl could not be published; open connections are refused, new handshakes are not until the next successful publication"
            );
            return Err(tonic::Status::internal(format!(
                "certificate {serial} is revoked, but publishing the crl failed"
            )));
        }
        Ok(Response::new(pb::RevokeCertificateResponse {
            revoked_at_unix: revoked_at,
        }))
    }

    async fn get_ca_bundle(
        &self,
        _request: Request<pb::GetCaBundleRequest>,
    ) -> Reply<pb::GetCaBundleResponse> {
        Ok(Response::new(pb::GetCaBundleResponse {
            ca_pem: self.state.ca_pem().to_owned(),
        }))
    }

    async fn get_crl(&self, _request: Request<pb::GetCrlRequest>) -> Reply<pb::GetCrlResponse> {
        Ok(Response::new(pb::GetCrlResponse {
            crl_pem: self.state.crl_pem().as_ref().clone(),
        }))
    }

    async fn list_certificates(
        &self,
        request: Request<pb::ListCertificatesRequest>,
    ) -> Reply<pb::ListCertificatesResponse> {
        let message = request.into_inner();
        let query = ListQuery {
            identity: (!message.identity.is_empty()).then_some(message.identity),
            status: status_from_proto(message.status)?,
            page_size: message.page_size,
            page_token: message.page_token,
        };
        let state = self.state.clone();
        let page = blocking("the CA task", move || {
            state
                .inventory()
                .list(&query, certgen::OffsetDateTime::now_utc())
        })
        .await?
        .map_err(inventory_status)?;
        let certificates = page
            .records
            .into_iter()
            .map(|record| {
                let (reason, revoked_at) = record
                    .revocation
                    .map_or((pb::RevocationReason::Unspecified, 0), |(reason, at)| {
                        (reason_to_proto(reason), at.unix_timestamp())
                    });
                pb::CertificateInfo {
                    serial: record.serial_hex,
                    identity: record.identity,
                    not_before_unix: record.not_before.unix_timestamp(),
                    not_after_unix: record.not_after.unix_timestamp(),
                    status: status_to_proto(record.status).into(),
                    revocation_reason: reason.into(),
                    revoked_at_unix: revoked_at,
                }
            })
            .collect();
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates,
            next_page_token: page.next_page_token,
        }))
    }
}
