//! Errors of the game server: [`ServerError`] (starting and stopping it) and [`ApiError`] (an
//! HTTP request refused), plus extractors that turn axum's rejections into the same JSON shape.

use std::net::SocketAddr;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use terrarium::engine::{CommandError, ConfigError};
use terrarium::persistence::StorageError;

use terrarium::PipelineError;

/// Why the game server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is out of range or inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No API key was configured.
    #[error("an API key is required: pass --api-key, set TERRARIUM_SERVER__API_KEY, or set server.api_key")]
    MissingApiKey,
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The storage pipeline did not drain at shutdown.
    #[error("storage pipeline")]
    Pipeline(#[from] PipelineError),
    /// A thread of the server could not start.
    #[error("cannot start thread {name}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The tick thread panicked or is gone (the engine is lost).
    #[error("the tick thread stopped unexpectedly")]
    TickThread,
    /// Draining the storage pipeline panicked (what it held is lost).
    #[error("the storage pipeline's shutdown panicked")]
    PipelinePanicked,
}

/// A refused HTTP request: a status and a JSON body `{"error": "...", "status": 404}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds to wait before trying again (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 429 with a `Retry-After` of `wait` (at least a second): a rate limit or a budget.
    pub fn too_many_requests(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, message);
        e.retry_after = Some(wait.as_secs().max(1));
        e
    }

    /// 503 with a retry hint.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// The answer to a storage failure: 503 while it may pass (transient, breaker open), 500
    /// otherwise.
    pub fn storage(e: &StorageError) -> Self {
        match e {
            StorageError::CircuitOpen { retry_after } => {
                Self::unavailable(format!("storage unavailable: {e}"), retry_after.as_secs().max(1))
            }
            e if e.is_transient() => Self::unavailable(format!("storage unavailable: {e}"), 1),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("storage error: {e}")),
        }
    }

    /// The answer to a command the engine's queue refused.
    pub fn command(e: &CommandError) -> Self {
        Self::unavailable(format!("the world is not taking commands: {e}"), 1)
    }

    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message, "status": self.status.as_u16() }).to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body()).into_response();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// `axum::Json`, with rejections as [`ApiError`]: 400 for malformed JSON, 415 without a JSON
/// content type, 413 over the body limit, 422 for a well-formed body of the wrong shape
/// (missing, unknown or mistyped fields, named in the message).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// `axum::extract::Query` with rejections as [`ApiError`] (400, naming the parameter).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `axum::extract::Path` with rejections as [`ApiError`] (400: an id that is not a number).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}
