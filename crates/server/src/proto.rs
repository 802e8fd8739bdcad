//! Code generated from `proto/` by `build.rs`. Never edited by hand.

#![allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("cordon.identity.v1");
    }
}

pub mod sandbox {
    pub mod v1 {
        tonic::include_proto!("cordon.sandbox.v1");
    }
}

pub mod ratelimit {
    pub mod v1 {
        tonic::include_proto!("cordon.ratelimit.v1");
    }
}

pub mod ca {
    pub mod v1 {
        tonic::include_proto!("cordon.ca.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("cordon.audit.v1");
    }
}

pub mod guard {
    pub mod v1 {
        tonic::include_proto!("cordon.guard.v1");
    }
}

/// Every file descriptor, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cordon_descriptor");
