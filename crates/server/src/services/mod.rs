//! One module per gRPC service: each converts between protobuf messages and
//! the library crates' domain types, by hand, at the edge.

pub(crate) mod audit;
pub(crate) mod ca;
pub(crate) mod guard;
pub(crate) mod identity;
pub(crate) mod ratelimit;
pub(crate) mod sandbox;
