//! The one place errors become HTTP: status, OCI error code and the JSON envelope
//! `{"errors":[{"code","message","detail"}]}`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use super::endpoint::ParseError;
use crate::cache;
use crate::edge;
use crate::oci::NameError;
use crate::routing::RouteError;
use crate::upstream;

/// An API failure. Every variant maps to one status and one OCI code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("manifest unknown to the upstream registry")]
    ManifestUnknown,
    #[error("blob unknown to the upstream registry")]
    BlobUnknown,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A client of the mirror without (valid) credentials; `challenge` is its `WWW-Authenticate`.
    #[error("{message}")]
    Unauthenticated { message: String, challenge: String },
    #[error("{0}")]
    Denied(String),
    /// A client of the mirror over its own limits (not the upstream's).
    #[error("{message}")]
    ClientTooFast { message: String, retry_after: u64 },
    #[error("upstream registry rate limit reached")]
    TooManyRequests { retry_after: Option<String> },
    /// `size`: the blob's size when known, sent as `Content-Range: bytes */SIZE`.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, size: Option<u64> },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("no such endpoint: this is a read-only OCI distribution (registry v2) mirror")]
    NotFound,
}

impl Error {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Error::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Error::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            Error::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            Error::ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Error::ClientTooFast { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN")
            }
            Error::BadGateway(_) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Error::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The OCI error code, e.g. `MANIFEST_UNKNOWN`.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.status_and_code().1
    }
}

impl Error {
    /// A write or other operation a read-only mirror does not offer.
    pub(crate) fn unsupported(what: &str) -> Error {
        Error::Unsupported(format!(
            "{what} is not supported: regmirror is a read-only pull-through mirror"
        ))
    }

    /// A manifest reference that is neither a valid tag nor a valid digest.
    pub(crate) fn reference(raw: &str, e: NameError) -> Error {
        if raw.contains(':') {
            Error::DigestInvalid(e.to_string())
        } else {
            Error::TagInvalid(e.to_string())
        }
    }
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::NotFound => Error::NotFound,
            ParseError::DigestInvalid(d) => {
                Error::DigestInvalid(format!("invalid digest {d:?}: expected sha256:<64 hex>"))
            }
            ParseError::MethodNotAllowed => {
                Error::Unsupported("regmirror is a read-only pull-through mirror".into())
            }
        }
    }
}

impl From<RouteError> for Error {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Name(n) => Error::NameInvalid(n.to_string()),
            e @ RouteError::UnknownUpstream { .. } => Error::NameUnknown(e.to_string()),
        }
    }
}

impl From<cache::Error> for Error {
    fn from(e: cache::Error) -> Self {
        use cache::Error as C;
        match e {
            C::ManifestUnknown => Error::ManifestUnknown,
            C::BlobUnknown => Error::BlobUnknown,
            C::UnknownUpstream(u) => {
                Error::NameUnknown(format!("no upstream registry named {u:?} is configured"))
            }
            C::Upstream(u) => u.into(),
            e @ C::DigestMismatch { .. } => Error::BadGateway(e.to_string()),
            e @ C::ManifestTooLarge { .. } => Error::BadGateway(e.to_string()),
            e @ C::Invalid(_) => Error::BadGateway(e.to_string()),
            e @ C::RangeNotSatisfiable { size } => Error::RangeNotSatisfiable {
                message: e.to_string(),
                size: Some(size),
            },
            C::Storage(e) if e.is_unavailable() => Error::Unavailable(format!(
                "the mirror's object storage cannot be reached; only blobs on its local tier are served until it is back ({e})"
            )),
            e @ (C::DiskFull(_) | C::Storage(_) | C::Spool(_)) => Error::Internal(e.to_string()),
            e @ C::Abandoned => Error::BadGateway(e.to_string()),
            e @ C::ShuttingDown => Error::Internal(e.to_string()),
        }
    }
}

impl From<edge::Error> for Error {
    fn from(e: edge::Error) -> Self {
        match e {
            edge::Error::Unauthenticated { message, challenge } => {
                Error::Unauthenticated { message, challenge }
            }
            edge::Error::Denied { message } => Error::Denied(message),
            e @ edge::Error::TooManyRequests { retry_after } => Error::ClientTooFast {
                message: e.to_string(),
                retry_after: (retry_after.as_secs_f64().ceil() as u64).max(1),
            },
        }
    }
}

impl From<upstream::Error> for Error {
    fn from(e: upstream::Error) -> Self {
        use upstream::Error as U;
        match e {
            U::NotFound => Error::ManifestUnknown,
            U::Unauthorized(m) => Error::Unauthorized(format!(
                "the upstream registry refused regmirror's credentials: {m}"
            )),
            U::Denied(m) => Error::Denied(format!("the upstream registry denied access: {m}")),
            U::TooManyRequests { retry_after } => Error::TooManyRequests { retry_after },
            e @ (U::Unavailable(_) | U::Status { .. }) => Error::Unavailable(e.to_string()),
            e @ (U::Invalid(_) | U::Config(_) | U::TooLarge { .. }) => {
                Error::BadGateway(e.to_string())
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": serde_json::Value::Null }]
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Error::TooManyRequests {
            retry_after: Some(r),
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(r) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        if let Error::Unauthenticated { challenge, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(challenge) {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
        if let Error::ClientTooFast { retry_after, .. } = &self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let Error::RangeNotSatisfiable {
            size: Some(size), ..
        } = &self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::NameInvalid("x".into()), 400, "NAME_INVALID"),
            (Error::NameUnknown("x".into()), 404, "NAME_UNKNOWN"),
            (Error::DigestInvalid("x".into()), 400, "DIGEST_INVALID"),
            (Error::ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (Error::BlobUnknown, 404, "BLOB_UNKNOWN"),
            (Error::Unsupported("push".into()), 405, "UNSUPPORTED"),
            (
                upstream::Error::Unauthorized("x".into()).into(),
                401,
                "UNAUTHORIZED",
            ),
            (upstream::Error::Denied("x".into()).into(), 403, "DENIED"),
            (
                upstream::Error::TooManyRequests {
                    retry_after: Some("7".into()),
                }
                .into(),
                429,
                "TOOMANYREQUESTS",
            ),
            (cache::Error::BlobUnknown.into(), 404, "BLOB_UNKNOWN"),
            (
                cache::Error::DigestMismatch {
                    expected: "a".into(),
                    actual: "b".into(),
                }
                .into(),
                502,
                "UNKNOWN",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e:?}");
        }
        let resp = Error::TooManyRequests {
            retry_after: Some("7".into()),
        }
        .into_response();
        assert_eq!(resp.headers().get("retry-after").unwrap(), "7");
    }

    #[test]
    fn edge_refusals() {
        let resp = Error::from(edge::Error::Unauthenticated {
            message: "authentication required".into(),
            challenge: r#"Bearer realm="https://m.example/token",service="regmirror""#.into(),
        })
        .into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers().get("www-authenticate").unwrap(),
            r#"Bearer realm="https://m.example/token",service="regmirror""#
        );
        let denied = Error::from(edge::Error::Denied {
            message: "not mirrored here, see https://docs.example".into(),
        });
        assert_eq!((denied.status().as_u16(), denied.code()), (403, "DENIED"));
        assert_eq!(
            denied.to_string(),
            "not mirrored here, see https://docs.example"
        );
        let resp = Error::from(edge::Error::TooManyRequests {
            retry_after: std::time::Duration::from_millis(2500),
        })
        .into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers().get("retry-after").unwrap(),
            "3",
            "rounded up"
        );
    }
}
