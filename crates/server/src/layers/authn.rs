//! Authentication: who is calling.
//!
//! A verified client certificate wins; without one, an API key or a JWT in
//! `authorization: Bearer …`. The result is a [`Caller`] in the request
//! extensions. Only `grpc.health.v1` is reachable without credentials.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use http::Request;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;

use super::gate::{Check, GateLayer};
use crate::config::Config;
use crate::events::{Events, SecurityEvent};
use crate::listener::PeerInfo;
use crate::notes::CallNotes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    ClientCertificate,
    ApiKey,
    Jwt,
}

impl AuthMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClientCertificate => "client_certificate",
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) method: AuthMethod,
    pub(crate) roles: Vec<String>,
    pub(crate) spiffe_id: Option<String>,
    pub(crate) certificate_serial: Option<String>,
    /// Seconds since the Unix epoch at which the credential expires.
    pub(crate) expires_at: Option<i64>,
}

#[derive(Deserialize)]
struct JwtClaims {
    sub: String,
    exp: i64,
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("validation", &self.validation)
            .finish_non_exhaustive()
    }
}

/// Serials of revoked client certificates, checked on every call so that a
/// revocation also ends the use of connections that are already open.
pub(crate) type RevokedSerials = Arc<ArcSwap<HashSet<String>>>;

#[derive(Debug)]
pub(crate) struct Authenticator {
    trust_domain: String,
    /// SHA-256 of the key to the identity it authenticates.
    api_keys: HashMap<[u8; 32], String>,
    jwt: Option<JwtVerifier>,
    identity_roles: HashMap<String, Vec<String>>,
    revoked: RevokedSerials,
    events: Events,
}

impl Authenticator {
    pub(crate) fn from_config(
        config: &Config,
        revoked: RevokedSerials,
        events: Events,
    ) -> Result<Self> {
        let mut api_keys = HashMap::new();
        for key in &config.auth.api_keys {
            let digest: [u8; 32] = hex::decode(&key.sha256)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("auth.api_keys {:?}: bad sha256", key.name))?;
            api_keys.insert(digest, key.name.clone());
        }
        let jwt = config.auth.jwt.as_ref().map(build_jwt).transpose()?;
        let identity_roles = config
            .identities
            .iter()
            .map(|(name, identity)| (name.clone(), identity.roles.clone()))
            .collect();
        Ok(Self {
            trust_domain: config.trust_domain.clone(),
            api_keys,
            jwt,
            identity_roles,
            revoked,
            events,
        })
    }

    pub(crate) fn layer(self) -> GateLayer<Self> {
        GateLayer::new(Arc::new(self))
    }

    fn roles_of(&self, name: &str) -> Vec<String> {
        self.identity_roles.get(name).cloned().unwrap_or_default()
    }

    fn authenticate(&self, request: &Request<Body>) -> Result<Caller, String> {
        let peer = request.extensions().get::<Arc<PeerInfo>>();
        if let Some(peer) = peer
            && let Some(cert) = &peer.client_cert
        {
            let parsed = peer.parsed_identity.get_or_init(|| {
                certgen::client_identity(cert.as_ref(), Some(&self.trust_domain))
                    .map_err(|e| e.to_string())
            });
            let identity = parsed
                .as_ref()
                .map_err(|e| format!("client certificate rejected: {e}"))?;
            if self.revoked.load().contains(&identity.serial_hex) {
                return Err(format!(
                    "client certificate {} has been revoked",
                    identity.serial_hex
                ));
            }
            return Ok(Caller {
                roles: self.roles_of(&identity.name),
                name: identity.name.clone(),
                method: AuthMethod::ClientCertificate,
                spiffe_id: identity.spiffe_id.clone(),
                certificate_serial: Some(identity.serial_hex.clone()),
                expires_at: Some(identity.not_after_unix),
            });
        }
        let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
            return Err("no client certificate and no authorization header".to_owned());
        };
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or("authorization header is not \"Bearer <token>\"")?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(name) = self.api_keys.get(&digest) {
            return Ok(Caller {
                roles: self.roles_of(name),
                name: name.clone(),
                method: AuthMethod::ApiKey,
                spiffe_id: None,
                certificate_serial: None,
                expires_at: None,
            });
        }
        let Some(jwt) = &self.jwt else {
            return Err("unknown API key".to_owned());
        };
        let claims = jsonwebtoken::decode::<JwtClaims>(token, &jwt.key, &jwt.validation)
            .map_err(|e| format!("invalid bearer token: {}", jwt_reason(&e)))?
            .claims;
        if claims.sub.is_empty() {
            return Err("JWT has an empty subject".to_owned());
        }
        Ok(Caller {
            roles: self.roles_of(&claims.sub),
            name: claims.sub,
            method: AuthMethod::Jwt,
            spiffe_id: None,
            certificate_serial: None,
            expires_at: Some(claims.exp),
        })
    }
}

/// Why a JWT was refused, in the caller's terms rather than the library's (a
/// JSON parser's line and column, say).
fn jwt_reason(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "it has expired (exp)".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidAudience => "it is for another audience (aud)".to_owned(),
        ErrorKind::InvalidIssuer => "it is from another issuer (iss)".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its algorithm is not the one configured".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim} claim"),
        ErrorKind::Json(_) => {
            "its claims are not a JSON object with a string sub and a numeric exp".to_owned()
        }
        _ => "it is not a well-formed JWT".to_owned(),
    }
}

impl Check for Authenticator {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Ok(());
        }
        match self.authenticate(request) {
            Ok(caller) => {
                if let Some(notes) = request.extensions().get::<CallNotes>() {
                    notes.update(|notes| {
                        notes.identity = Some(caller.name.clone());
                        notes.auth_method = Some(caller.method.as_str());
                    });
                }
                request.extensions_mut().insert(caller);
                Ok(())
            }
            Err(reason) => {
                let peer = request
                    .extensions()
                    .get::<Arc<PeerInfo>>()
                    .map(|peer| peer.remote);
                self.events.record(SecurityEvent::AuthenticationFailed {
                    peer,
                    method: request.uri().path().to_owned(),
                    reason: reason.clone(),
                });
                Err(Status::unauthenticated(reason))
            }
        }
    }
}

fn build_jwt(config: &crate::config::JwtConfig) -> Result<JwtVerifier> {
    let algorithm: Algorithm = config
        .algorithm
        .parse()
        .map_err(|_| anyhow!("auth.jwt.algorithm {:?} is not supported", config.algorithm))?;
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = config
                .secret
                .as_deref()
                .filter(|s| s.len() >= 32)
                .ok_or_else(|| {
                    anyhow!("auth.jwt.secret of at least 32 bytes is required for {algorithm:?}")
                })?;
            DecodingKey::from_secret(secret.as_bytes())
        }
        _ => {
            let path = config
                .public_key_file
                .as_ref()
                .ok_or_else(|| anyhow!("auth.jwt.public_key_file is required for {algorithm:?}"))?;
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read JWT public key {}", path.display()))?;
            let key = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            key.with_context(|| format!("JWT public key {} is not usable", path.display()))?
        }
    };
    if config.issuer.is_empty() || config.audience.is_empty() {
        bail!("auth.jwt.issuer and auth.jwt.audience must be set");
    }
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = config.leeway_seconds;
    Ok(JwtVerifier { key, validation })
}
