//! Authorization: every RPC method needs one permission, and roles grant
//! permissions. A method missing from the table is refused (fail closed).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Result, bail};
use http::Request;
use tonic::Status;
use tonic::body::Body;

use super::authn::Caller;
use super::gate::{Check, GateLayer};
use crate::config::Config;

/// Grants every permission.
const ALL: &str = "*";

/// The permission each RPC needs, by gRPC service (or full method path).
/// A full method path takes precedence over its service.
pub(crate) const METHOD_PERMISSIONS: &[(&str, &str)] = &[
    ("/cordon.identity.v1.Identity/", "identity.whoami"),
    ("/grpc.reflection.v1.ServerReflection/", "reflection.read"),
    (
        "/grpc.reflection.v1alpha.ServerReflection/",
        "reflection.read",
    ),
    ("/cordon.sandbox.v1.Sandbox/Run", "sandbox.run"),
    ("/cordon.sandbox.v1.Sandbox/RunStream", "sandbox.run"),
    ("/cordon.sandbox.v1.Sandbox/GetCapabilities", "sandbox.read"),
    ("/cordon.ratelimit.v1.RateLimit/Check", "ratelimit.check"),
    (
        "/cordon.ratelimit.v1.RateLimit/CheckMultiple",
        "ratelimit.check",
    ),
    ("/cordon.ratelimit.v1.RateLimit/GetStats", "ratelimit.admin"),
    ("/cordon.ratelimit.v1.RateLimit/Reset", "ratelimit.admin"),
    ("/cordon.ca.v1.CertAuthority/IssueCertificate", "ca.issue"),
    ("/cordon.ca.v1.CertAuthority/RenewCertificate", "ca.renew"),
    ("/cordon.ca.v1.CertAuthority/RevokeCertificate", "ca.revoke"),
    ("/cordon.ca.v1.CertAuthority/GetCaBundle", "ca.read"),
    ("/cordon.ca.v1.CertAuthority/GetCrl", "ca.read"),
    ("/cordon.ca.v1.CertAuthority/ListCertificates", "ca.read"),
    ("/cordon.audit.v1.Audit/", "audit.read"),
    ("/cordon.guard.v1.Guard/", "guard.check"),
];

/// Built-in roles. Configuration may add roles and extend these.
pub(crate) const BUILTIN_ROLES: &[(&str, &[&str])] = &[
    ("admin", &[ALL]),
    (
        "agent",
        &[
            "identity.whoami",
            "reflection.read",
            "sandbox.run",
            "sandbox.read",
            "ratelimit.check",
            "ca.renew",
            "guard.check",
        ],
    ),
    (
        "auditor",
        &[
            "identity.whoami",
            "reflection.read",
            "sandbox.read",
            "audit.read",
            "ca.read",
        ],
    ),
];

/// The permission a method path needs, or `None` when the method is unknown.
pub(crate) fn permission_for(path: &str) -> Option<&'static str> {
    METHOD_PERMISSIONS
        .iter()
        .find(|(prefix, _)| *prefix == path)
        .or_else(|| {
            METHOD_PERMISSIONS
                .iter()
                .find(|(prefix, _)| prefix.ends_with('/') && path.starts_with(prefix))
        })
        .map(|(_, permission)| *permission)
}

#[derive(Debug)]
pub(crate) struct Authorizer {
    roles: HashMap<String, BTreeSet<String>>,
}

impl Authorizer {
    pub(crate) fn from_config(config: &Config) -> Result<Self> {
        let mut roles: HashMap<String, BTreeSet<String>> = BUILTIN_ROLES
            .iter()
            .map(|(name, permissions)| {
                (
                    (*name).to_owned(),
                    permissions.iter().map(|p| (*p).to_owned()).collect(),
                )
            })
            .collect();
        let known: BTreeSet<&str> = METHOD_PERMISSIONS
            .iter()
            .map(|(_, p)| *p)
            .chain([ALL])
            .collect();
        for (name, role) in &config.rbac.roles {
            for permission in &role.permissions {
                if !known.contains(permission.as_str()) {
                    bail!("rbac.roles.{name}: unknown permission {permission:?}");
                }
            }
            roles
                .entry(name.clone())
                .or_default()
                .extend(role.permissions.iter().cloned());
        }
        for (identity, entry) in &config.identities {
            for role in &entry.roles {
                if !roles.contains_key(role) {
                    bail!("identities.{identity}: unknown role {role:?}");
                }
            }
        }
        Ok(Self { roles })
    }

    /// The authorizer is shared with WhoAmI, which lists permissions.
    pub(crate) fn layer(self: Arc<Self>) -> GateLayer<Self> {
        GateLayer::new(self)
    }

    /// Every permission the roles grant, for WhoAmI.
    pub(crate) fn permissions_of(&self, roles: &[String]) -> BTreeSet<String> {
        roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect()
    }

    pub(crate) fn allows(&self, roles: &[String], permission: &str) -> bool {
        roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .any(|granted| granted.contains(permission) || granted.contains(ALL))
    }
}

impl Check for Authorizer {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(());
        }
        let Some(caller) = request.extensions().get::<Caller>() else {
            return Err(Status::unauthenticated("no authenticated caller"));
        };
        let Some(permission) = permission_for(path) else {
            return Err(Status::permission_denied(format!(
                "method {path} is not mapped to a permission"
            )));
        };
        if self.allows(&caller.roles, permission) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "identity {:?} lacks permission {permission} for {path}",
                caller.name
            )))
        }
    }
}
