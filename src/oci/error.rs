//! OCI distribution error codes, and the error body berth writes and its clients read.

use serde::{Deserialize, Serialize};

/// `{"errors":[{"code","message","detail"}]}`, the distribution spec's error body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl ErrorBody {
    pub fn one(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            errors: vec![ErrorEntry {
                code: code.as_str().to_string(),
                message: message.into(),
                detail: serde_json::Value::Null,
            }],
        }
    }

    /// `CODE message` of the first error, for one-line reports.
    pub fn summary(&self) -> Option<String> {
        let e = self.errors.first()?;
        Some(format!("{} {}", e.code, e.message))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The conventional HTTP status for the code (distribution's pairing).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => 404,
            ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => 400,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}
