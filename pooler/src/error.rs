//! The lease API's errors, and the one place they and the admin port's
//! refusals become gRPC statuses.
//! Messages say what to do next and never carry a credential.

use tonic::{Code, Status};

use crate::access::AccessError;
use crate::admin::AdminDenied;
use crate::lease::LeaseError;
use crate::pool::AcquireError;

/// Everything a lease API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("tenant {0:?} is not configured on this pooler")]
    UnknownTenant(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("the pooler is shutting down and takes no new work; retry on another pooler")]
    Draining,
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let code = match &error {
            ApiError::UnknownTenant(_) => Code::NotFound,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Access(_) => Code::PermissionDenied,
            ApiError::Draining => Code::Unavailable,
            ApiError::Acquire(e) => match e {
                AcquireError::Timeout { .. } | AcquireError::QueueFull { .. } => {
                    Code::ResourceExhausted
                }
                AcquireError::Unavailable { .. } => Code::Unavailable,
                AcquireError::Removed { .. } => Code::NotFound,
            },
            ApiError::Lease(e) => match e {
                LeaseError::Malformed | LeaseError::NotFound(_) => Code::NotFound,
                LeaseError::Released(_)
                | LeaseError::Expired(_)
                | LeaseError::Revoked(_)
                | LeaseError::Disallowed(_)
                | LeaseError::Lost(_) => Code::FailedPrecondition,
                LeaseError::Foreign(_) => Code::PermissionDenied,
                LeaseError::TooMany { .. } => Code::ResourceExhausted,
            },
        };
        let message = error.to_string();
        // What the pooler or the database caused is worth an operator's
        // attention; a caller's own mistake only at debug level.
        match code {
            Code::ResourceExhausted | Code::Unavailable => {
                tracing::warn!(code = ?code, error = %message, "lease API call failed")
            }
            _ => tracing::debug!(code = ?code, error = %message, "lease API call refused"),
        }
        Status::new(code, message)
    }
}

impl From<AdminDenied> for Status {
    fn from(denied: AdminDenied) -> Status {
        let code = match &denied {
            AdminDenied::NoCertificate => Code::Unauthenticated,
            AdminDenied::Refused(_) | AdminDenied::NotAdmin { .. } => Code::PermissionDenied,
        };
        tracing::warn!(code = ?code, error = %denied, "admin port call refused");
        Status::new(code, denied.to_string())
    }
}
