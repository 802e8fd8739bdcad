//! Signing certificate signing requests: only the public key is taken from the request.

use rcgen::SubjectPublicKeyInfo;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::ca::{CertificateAuthority, ClientParams, IssueError, Issued};

/// The smallest RSA modulus accepted in a CSR; rustls-webpki refuses smaller ones anyway.
pub const MIN_RSA_BITS: usize = 2048;

/// Errors of [`CertificateAuthority::sign_csr`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The input is not a PEM `CERTIFICATE REQUEST`.
    #[error("the csr is not valid pem: {0}")]
    Pem(String),
    /// The DER does not parse as a PKCS#10 request.
    #[error("the csr does not parse: {0}")]
    Parse(String),
    /// The request's self-signature does not verify, so the requester has not proven that it
    /// holds the private key.
    #[error("the csr signature does not verify")]
    Signature,
    /// The public key type or size is not accepted.
    #[error("unsupported csr public key: {0}")]
    UnsupportedKey(String),
    /// The identity, trust domain or validity is invalid, or signing failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
}

impl CertificateAuthority {
    /// Signs a PEM CSR as a client certificate for `params.identity`.
    ///
    /// The CSR's signature is verified, then only its public key is used: the subject,
    /// requested extensions (CA:TRUE, SANs, key usages, EKUs, anything else) are ignored, and
    /// the certificate is built exactly as [`Self::issue_client`] builds one. Accepted keys:
    /// ECDSA P-256 and P-384, Ed25519, and RSA of at least 2048 bits. [`Issued::key_pem`] is
    /// `None`.
    pub fn sign_csr(&self, csr_pem: &str, params: &ClientParams) -> Result<Issued, CsrError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CsrError::Pem(e.to_string()))?;
        self.sign_csr_der(&der, params)
    }

    /// Like [`Self::sign_csr`], for a DER CSR.
    pub fn sign_csr_der(&self, csr_der: &[u8], params: &ClientParams) -> Result<Issued, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| CsrError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Parse("trailing bytes".to_owned()));
        }
        // The key is checked before the signature, so that a key this CA refuses is named as
        // such rather than as a signature that the verifier cannot check.
        let spki = &csr.certification_request_info.subject_pki;
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => {
                return Err(CsrError::UnsupportedKey(format!(
                    "rsa key of {} bits, at least {MIN_RSA_BITS} required",
                    rsa.key_size()
                )));
            }
            Ok(PublicKey::RSA(_) | PublicKey::EC(_) | PublicKey::Unknown(_)) => {}
            Ok(_) => return Err(CsrError::UnsupportedKey("key type".to_owned())),
            Err(e) => return Err(CsrError::UnsupportedKey(e.to_string())),
        }
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        // rcgen recognises only the key algorithms (and EC curves) it can write, which is the
        // allow-list: anything else is refused here.
        let public_key = SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;

        let cert_params = self.client_cert_params(params)?;
        Ok(self.sign(cert_params, &public_key, None)?)
    }
}
