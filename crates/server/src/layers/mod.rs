//! Tower layers for the concerns every call shares, composed in
//! `serve::build_router` in the order a request meets them.

pub(crate) mod audit;
pub(crate) mod authn;
pub(crate) mod authz;
pub(crate) mod gate;
pub(crate) mod limits;
