//! `cordon.identity.v1.Identity`: tells callers who the server thinks they are.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::layers::authn::{AuthMethod, Caller};
use crate::layers::authz::Authorizer;
use crate::proto::identity::v1 as pb;

#[derive(Debug)]
pub(crate) struct IdentityService {
    pub(crate) authorizer: Arc<Authorizer>,
}

/// The caller that the authentication layer attached to the request.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        let auth_method = match caller.method {
            AuthMethod::ClientCertificate => pb::AuthMethod::ClientCertificate,
            AuthMethod::ApiKey => pb::AuthMethod::ApiKey,
            AuthMethod::Jwt => pb::AuthMethod::Jwt,
        };
        Ok(Response::new(pb::WhoAmIResponse {
            identity: caller.name.clone(),
            auth_method: auth_method.into(),
            roles: caller.roles.clone(),
            spiffe_id: caller.spiffe_id.clone().unwrap_or_default(),
            certificate_serial: caller.certificate_serial.clone().unwrap_or_default(),
            expires_at_unix: caller.expires_at.unwrap_or_default(),
            permissions: self
                .authorizer
                .permissions_of(&caller.roles)
                .into_iter()
                .collect(),
        }))
    }
}
