//! The one error type of request handling and its one mapping to a response: status, JSON body,
//! headers and log level. Bodies carry a fixed code and message; nothing from S3 (no error body,
//! endpoint or credential) and nothing about keys or tokens beyond "invalid" reaches a client.

use http::{HeaderValue, Response, StatusCode, header};

use crate::auth::TokenError;
use crate::route::KeyError;
use crate::s3::S3Error;
use crate::server::Body;

/// Everything that can end a request early.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The key in the path is not acceptable.
    #[error("bad key: {0}")]
    BadKey(#[from] KeyError),
    /// No credentials, and the rules need some.
    #[error("authentication required")]
    Unauthenticated,
    /// A token was presented and refused.
    #[error("invalid token: {0}")]
    InvalidToken(#[from] TokenError),
    /// Authenticated, but no rule allows this.
    #[error("forbidden")]
    Forbidden,
    /// A signed URL that does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// A signed URL past its expiry.
    #[error("signed URL expired")]
    Expired,
    /// No rule that grants the upload allows the ACL it asks for.
    #[error("ACL not allowed")]
    AclNotAllowed,
    /// A PUT through a signed URL names another type or ACL than the signer chose.
    #[error("upload does not match its signed terms")]
    TermsMismatch,
    /// A write authenticated by a cookie from an origin that is not allowed.
    #[error("cross-site write refused")]
    CrossSite,
    /// No such object (or bucket alias, or route).
    #[error("not found")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The range lies outside the object of this length (when known).
    #[error("range not satisfiable")]
    RangeNotSatisfiable(Option<u64>),
    /// The request body did not arrive in time (or kept below the minimum rate).
    #[error("request body too slow")]
    RequestTimeout,
    /// The request body is larger than allowed.
    #[error("payload too large")]
    PayloadTooLarge,
    /// A precondition of a write failed.
    #[error("precondition failed")]
    PreconditionFailed,
    /// S3 failed.
    #[error(transparent)]
    Upstream(#[from] S3Error),
    /// S3 refused the ACL: buckets with ACLs disabled take no `public-read` uploads.
    #[error("S3 refused the object ACL")]
    AclNotSupported,
    /// Over capacity.
    #[error("service unavailable")]
    Unavailable,
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Status, error code and client-facing message.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ProxyError::*;
        match self {
            BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            BadKey(e) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid key: {e}"),
            ),
            Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid token is required".into(),
            ),
            InvalidToken(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is invalid or expired".into(),
            ),
            Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "no rule allows this request".into(),
            ),
            BadSignature => (
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "the URL signature does not match".into(),
            ),
            Expired => (
                StatusCode::FORBIDDEN,
                "expired",
                "the signed URL has expired".into(),
            ),
            AclNotAllowed => (
                StatusCode::FORBIDDEN,
                "acl_not_allowed",
                "no rule lets this upload set that ACL".into(),
            ),
            TermsMismatch => (
                StatusCode::FORBIDDEN,
                "terms_mismatch",
                "the signed URL fixes another Content-Type or ACL".into(),
            ),
            CrossSite => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "writes authenticated by cookie need an allowed Origin".into(),
            ),
            NotFound => (StatusCode::NOT_FOUND, "not_found", "no such object".into()),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here".into(),
            ),
            RangeNotSatisfiable(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the range lies outside the object".into(),
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".into(),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than allowed".into(),
            ),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "a precondition failed".into(),
            ),
            Upstream(e) => upstream_parts(e),
            AclNotSupported => (
                StatusCode::BAD_GATEWAY,
                "acl_not_supported",
                "the store refused the upload's ACL: the bucket has ACLs disabled, or the store \
                 has none (R2, GCS with uniform bucket-level access), so uploads cannot be \
                 public-read; grant public reads with a bucket policy, or enable ACLs on the \
                 bucket"
                    .into(),
            ),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is busy".into(),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error".into(),
            ),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The response for this error. Logged here, at a level that says whose fault it is.
    pub fn into_response(self) -> Response<Body> {
        let (status, code, message) = self.parts();
        // As text, which the log writes quoted and escaped: a message may quote the client (a
        // form's or a JSON body's words), and a line break in it must not start a forged line.
        let status_code = status.as_u16();
        if status.is_server_error() {
            tracing::warn!(
                error = self.to_string().as_str(),
                status = status_code,
                "request failed"
            );
        } else {
            tracing::debug!(
                error = self.to_string().as_str(),
                status = status_code,
                "request refused"
            );
        }
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let mut response = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(Body::full(body))
            .expect("static headers");
        let headers = response.headers_mut();
        match &self {
            ProxyError::Unauthenticated => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"s3warden\""),
                );
            }
            ProxyError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"s3warden\", error=\"invalid_token\", \
                         error_description=\"the token is invalid or expired\"",
                    ),
                );
            }
            ProxyError::RangeNotSatisfiable(Some(len)) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
                );
            }
            ProxyError::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ProxyError::MethodNotAllowed => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        response
    }
}

fn upstream_parts(e: &S3Error) -> (StatusCode, &'static str, String) {
    match e {
        // Our clock or our credentials, not S3, are at fault, and they can be fixed: try
        // again later.
        S3Error::ClockSkew { .. } | S3Error::NoCredentials(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the storage backend cannot be reached right now".into(),
        ),
        S3Error::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the storage backend did not answer in time".into(),
        ),
        S3Error::Status { status, .. } if *status == StatusCode::NOT_FOUND => {
            (StatusCode::NOT_FOUND, "not_found", "no such object".into())
        }
        // Nothing is wrong with the store or the request: the object has to be restored first,
        // which its owner does. S3 itself answers 403.
        e if e.is_archived() => (
            StatusCode::FORBIDDEN,
            "object_archived",
            "the object is archived (an S3 Glacier storage class or archive tier) and must be \
             restored before it can be read"
                .into(),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the storage backend failed".into(),
        ),
    }
}
