//! Certificates for Cordon: a root CA, server and client certificates, CSR signing, CRLs and an
//! inventory of issued certificates.
//!
//! This crate knows nothing about gRPC: the server maps these types to protobuf at its edge.
#![forbid(unsafe_code)]

mod ca;
mod crl;
mod csr;
mod files;
mod identity;
mod inventory;
pub mod names;

pub use ca::{
    BACKDATE, CaParams, CertificateAuthority, ClientParams, DEFAULT_CA_VALIDITY,
    DEFAULT_CLIENT_VALIDITY, DEFAULT_SERVER_VALIDITY, GenerateError, IssueError, Issued, LoadError,
    ServerParams, ValidityError,
};
pub use crl::{Crl, CrlError, RevocationReason, Revoked, UnknownReason};
pub use csr::{CsrError, MIN_RSA_BITS};
pub use files::{
    BUNDLE_DIR_MODE, BundleCertificate, BundleError, CERT_FILE_MODE, DevBundle, DevBundleFiles,
    KEY_FILE_MODE, WriteError, write_cert_file, write_dev_bundle, write_key_file,
};
pub use identity::{ClientIdentity, IdentityError, client_identity};
pub use inventory::{
    DEFAULT_PAGE_SIZE, Inventory, InventoryError, ListQuery, MAX_PAGE_SIZE, Page, Record, Status,
};
pub use names::{NameError, SerialError, normalize_serial_hex};
pub use time::OffsetDateTime;
