//! What went wrong with a request that got no answer, classified once from the
//! client's error (timeout, connection, TLS, blocked), with a reason for people that
//! names the fix where one is known and never carries credentials.

use super::Blocked;

/// What kind of failure kept a request from getting an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request or connection took too long.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The TLS handshake failed (certificate refused or untrusted).
    Tls,
    /// The outbound guard refused the address.
    Blocked,
    /// Anything else (the connection broke, the response was malformed).
    Other,
}

impl From<FailureKind> for crate::outcome::ErrorKind {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Timeout => Self::Timeout,
            FailureKind::Connect => Self::Connect,
            FailureKind::Tls => Self::Tls,
            FailureKind::Blocked => Self::Blocked,
            FailureKind::Other => Self::Other,
        }
    }
}

/// A request that got no answer: its kind, and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why, in one line (no secrets: URLs are shown without credentials).
    pub message: String,
}

impl Failure {
    /// Classifies a failed request; made once, here, for every outbound caller.
    pub fn of(err: &reqwest::Error) -> Self {
        let chain = || std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source());
        if let Some(blocked) = chain().find_map(|e| e.downcast_ref::<Blocked>()) {
            return Self {
                kind: FailureKind::Blocked,
                message: blocked.to_string(),
            };
        }
        if let Some(tls) = chain().find_map(rustls_error) {
            return Self {
                kind: FailureKind::Tls,
                message: format!("TLS failed: {tls}{}", tls_hint(tls)),
            };
        }
        let kind = if err.is_timeout() {
            FailureKind::Timeout
        } else if err.is_connect() {
            FailureKind::Connect
        } else {
            FailureKind::Other
        };
        let lead = match kind {
            FailureKind::Timeout => "timed out",
            FailureKind::Connect => "connection failed",
            _ => "request failed",
        };
        let text = chain()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        Self {
            kind,
            message: format!("{lead}: {}", strip_credentials(&text)),
        }
    }
}

/// The rustls error inside `err`, also when I/O errors carry it, one inside another
/// (an I/O error's `source` skips its payload, so the chain alone does not show it).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut err = err;
    loop {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        err = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// What to check for the common TLS failures.
fn tls_hint(err: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, CertificateError, Error as E};
    match err {
        E::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::HandshakeFailure,
        ) => {
            " (the server refused the client certificate or wanted one: check tls.client_cert and tls.client_key)"
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by a trusted root: add its CA as tls.ca)"
        }
        E::InvalidCertificate(CertificateError::NotValidForName) => {
            " (the server's certificate does not name the host in the URL)"
        }
        E::InvalidCertificate(CertificateError::Expired) => " (the server's certificate expired)",
        _ => "",
    }
}

/// `text` with the user and password of any URL in it removed.
pub(super) fn strip_credentials(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let candidate = word.trim_matches(['(', ')', ',']);
            match url::Url::parse(candidate) {
                Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                    let _ = url.set_username("");
                    let _ = url.set_password(None);
                    word.replacen(candidate, url.as_str(), 1)
                }
                _ => word.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
