//! `oci-client`'s errors turned into [`ImageError`]s that say what to do.

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

use crate::error::ImageError;

/// What a pull is about, for error messages.
pub(super) struct Ctx {
    pub reference: String,
    pub registry: String,
    /// Whether the registry is reached over HTTPS (not marked insecure).
    pub https: bool,
}

/// Failures worth another attempt: the network, the registry's own trouble.
pub(super) fn retryable(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::RegistryConnection { .. } | ImageError::Registry { .. }
    )
}

/// An error with all its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

impl Ctx {
    pub(super) fn map(&self, e: OciDistributionError) -> ImageError {
        let detail = chain(&e);
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.unauthorized(detail),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    self.not_found(detail)
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.unauthorized(detail)
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    self.rate_limited(detail)
                } else {
                    self.other(detail)
                }
            }
            OciDistributionError::ServerError { code, .. } => self.by_status(code, detail),
            OciDistributionError::ImageManifestNotFoundError(_) => self.not_found(detail),
            OciDistributionError::UnsupportedMediaTypeError(media_type)
            | OciDistributionError::IncompatibleLayerMediaTypeError(media_type) => {
                ImageError::RegistryUnsupportedMediaType {
                    reference: self.reference.clone(),
                    registry: self.registry.clone(),
                    media_type,
                }
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => ImageError::RegistryDigestMismatch {
                what: format!("manifest of {}", self.reference),
                registry: self.registry.clone(),
                expected,
                actual,
            },
            OciDistributionError::RequestError(ref r) => {
                if let Some(status) = r.status() {
                    self.by_status(status.as_u16(), detail)
                } else if r.is_connect() || r.is_timeout() || r.is_request() {
                    self.connection(detail)
                } else {
                    self.other(detail)
                }
            }
            _ => self.other(detail),
        }
    }

    fn by_status(&self, code: u16, detail: String) -> ImageError {
        match code {
            404 => self.not_found(detail),
            401 | 403 => self.unauthorized(detail),
            429 => self.rate_limited(detail),
            _ => self.other(detail),
        }
    }

    fn not_found(&self, detail: String) -> ImageError {
        ImageError::RegistryNotFound {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail,
        }
    }

    fn unauthorized(&self, detail: String) -> ImageError {
        ImageError::RegistryUnauthorized {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail,
        }
    }

    fn rate_limited(&self, detail: String) -> ImageError {
        ImageError::RegistryRateLimited {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail,
        }
    }

    fn connection(&self, detail: String) -> ImageError {
        ImageError::RegistryConnection {
            registry: self.registry.clone(),
            scheme: if self.https { "HTTPS" } else { "plain HTTP" },
            detail,
            hint: if self.https {
                "if this registry serves plain HTTP, mark it insecure (RegistryOptions::insecure, the host's list of insecure registries); if its certificate comes from a private CA, add that CA (RegistryOptions::ca_files); otherwise check the address and that the registry runs"
            } else {
                "check the address and that the registry runs; if it serves HTTPS, do not mark it insecure"
            },
        }
    }

    fn other(&self, detail: String) -> ImageError {
        ImageError::Registry {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail,
        }
    }
}
