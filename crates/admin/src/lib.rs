//! The client of the Cloud's administration API behind the `halo-admin` binary.
//!
//! It speaks HTTP only (`reqwest`) and links none of the Cloud: answers are read as
//! JSON values, so a Cloud that adds a field never breaks the CLI. Errors say what
//! the operator can do: the Cloud's status and message, or why it could not be
//! reached.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

pub mod render;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The URL given (flag or environment) is not usable.
    #[error("invalid cloud url {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Nothing answered: refused, unresolvable, timed out.
    #[error("cannot reach the Cloud at {url}: {reason}")]
    Unreachable {
        /// The Cloud's base URL.
        url: String,
        /// What happened and what to check.
        reason: String,
    },
    /// The Cloud answered with an error status.
    #[error("the Cloud answered {status}: {message}{hint}")]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The Cloud's message (from its error envelope), or the body.
        message: String,
        /// A hint for the operator (empty when none applies).
        hint: Hint,
    },
    /// The Cloud answered success with a body that is not JSON.
    #[error("the Cloud answered {status} with a body that is not JSON: {reason}")]
    InvalidResponse {
        /// The HTTP status.
        status: StatusCode,
        /// Why it could not be read.
        reason: String,
    },
    /// The input given to the CLI is not usable (for example invalid JSON).
    #[error("{0}")]
    Input(String),
}

impl AdminError {
    /// The process exit status for this error: 1 when the Cloud refused the call,
    /// 3 when it could not be reached, 2 for bad input.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Http { .. } | Self::InvalidResponse { .. } => 1,
            Self::BadUrl { .. } | Self::Input(_) => 2,
            Self::Unreachable { .. } => 3,
        }
    }
}

/// A hint added to an HTTP error, shown after the Cloud's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(&'static str);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " ({})", self.0)
        }
    }
}

fn hint_for(status: StatusCode) -> Hint {
    Hint(match status {
        StatusCode::UNAUTHORIZED => {
            "check HALO_ADMIN_TOKEN: it must be the token the Cloud was started with"
        }
        StatusCode::NOT_FOUND => "check the id, and that --url names the right Cloud",
        _ => "",
    })
}

/// A client of one Cloud's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the Cloud at `base` (for example `http://127.0.0.1:8080`),
    /// authenticating with the admin `token`.
    ///
    /// # Errors
    /// [`AdminError::BadUrl`] when `base` is not an `http://` URL with a host.
    pub fn new(base: &str, token: &str) -> Result<Self, AdminError> {
        let bad = |reason: &str| AdminError::BadUrl {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let url = Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "this build speaks plain http only; reach the Cloud's admin listener directly or through a local tunnel",
                ));
            }
            _ => return Err(bad("must start with http://")),
        }
        if url.host().is_none() {
            return Err(bad("has no host"));
        }
        if url.cannot_be_a_base() {
            return Err(bad("cannot hold a path"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            base: url,
            token: token.to_owned(),
            http,
        })
    }

    /// The URL of `segments` under the base; each segment is percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Calls `method` on `segments` with an optional JSON body; the answer's JSON,
    /// or `None` for an empty answer (204).
    ///
    /// # Errors
    /// [`AdminError::Unreachable`], [`AdminError::Http`] with the Cloud's message,
    /// [`AdminError::InvalidResponse`].
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<Option<Value>, AdminError> {
        self.call_with_query(method, segments, &[], body).await
    }

    /// [`AdminClient::call`] with query parameters (percent-encoded).
    ///
    /// # Errors
    /// As [`AdminClient::call`].
    pub async fn call_with_query(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, AdminError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(AdminError::Http {
                status,
                message: error_message(&bytes),
                hint: hint_for(status),
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AdminError::InvalidResponse {
                status,
                reason: e.to_string(),
            })
    }

    fn unreachable(&self, e: &reqwest::Error) -> AdminError {
        let url = self.base.as_str().trim_end_matches('/').to_owned();
        let reason = if e.is_connect() {
            let cause = root_cause(e);
            if cause.contains("refused") {
                "connection refused: nothing listens there. Is `halo-cloud serve` running, and \
                 does --url (or HALO_CLOUD_URL) name its --listen address?"
                    .to_owned()
            } else {
                format!("cannot connect ({cause}); check --url (or HALO_CLOUD_URL)")
            }
        } else if e.is_timeout() {
            "no answer in time (timed out)".to_owned()
        } else {
            root_cause(e)
        };
        AdminError::Unreachable { url, reason }
    }
}

/// The innermost cause of an error, which names what the OS said.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The message of the Cloud's error envelope `{"error": {"message"}}`, or the body
/// itself (cut to 300 characters) when it is not one.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = value.pointer("/error/message").and_then(Value::as_str) {
            return message.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no message)".to_owned();
    }
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        let client = AdminClient::new("http://127.0.0.1:1/", "t").expect("client");
        let url = client.url(&["admin", "integrators", "a/b c", "enable"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/admin/integrators/a%2Fb%20c/enable"
        );
        let prefixed = AdminClient::new("http://h:1/halo", "t").expect("client");
        assert_eq!(
            prefixed.url(&["admin", "sites", "x"]).as_str(),
            "http://h:1/halo/admin/sites/x"
        );
    }

    #[test]
    fn the_envelope_message_is_taken_else_the_body() {
        let envelope =
            br#"{"error":{"status":404,"statusText":"Not Found","message":"site not found"}}"#;
        assert_eq!(error_message(envelope), "site not found");
        assert_eq!(error_message(b"plain words\n"), "plain words");
        assert_eq!(error_message(b""), "(no message)");
    }

    #[test]
    fn unusable_urls_are_refused_up_front() {
        for url in ["127.0.0.1:8080", "ftp://h", "https://h", "http://"] {
            let err = AdminClient::new(url, "t").expect_err(url);
            assert!(matches!(err, AdminError::BadUrl { .. }), "{url}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}
