//! One module per gRPC service: each converts between protobuf messages and
//! the library crates' domain types, by hand, at the edge.

pub(crate) mod identity;
