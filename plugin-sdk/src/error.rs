use core::fmt;

/// Why a handler did not handle an event.
///
/// Returned from the handler, it becomes the `Retry` or `Reject` outcome.
/// A JSON decoding error converts into a rejection, so `?` on
/// [`EventExt::json`](crate::EventExt::json) does the right thing: a payload
/// that does not parse will not parse on the next attempt either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Transient: the host retries with backoff, then dead-letters.
    Retry(String),
    /// Permanent: the host dead-letters the event at once.
    Reject(String),
}

impl HandlerError {
    /// A transient failure (a dependency is down, a rate limit): try again later.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(reason.into())
    }

    /// A permanent failure (the event is invalid): dead-letter it now.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }

    /// The reason text.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry(r) | Self::Reject(r) => r,
        }
    }

    /// Whether this asks for a retry.
    #[must_use]
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Retry(_))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(r) => write!(f, "retry: {r}"),
            Self::Reject(r) => write!(f, "reject: {r}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<serde_json::Error> for HandlerError {
    fn from(error: serde_json::Error) -> Self {
        Self::Reject(format!("invalid JSON payload: {error}"))
    }
}
