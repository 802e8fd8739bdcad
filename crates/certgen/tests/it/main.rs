//! Integration tests of certgen. Certificates are checked with rustls-webpki, the verifier the
//! server's rustls configuration uses, and inspected with x509-parser.

mod ca;
mod crl;
mod csr;
mod files;
mod identity;
mod inventory;
mod issue;
mod support;
