//! Who is signed in to the console, and the CSRF check of every POST.
//!
//! Signing in presents a control API key once; the console keeps the key's caller in
//! a session and gives the browser only a random token for it, in an HttpOnly,
//! SameSite=Strict cookie. The server keeps the token's SHA-256, never the token. A
//! session ends after `control.console.session_idle` without a request, on sign-out,
//! and with the process (sign in again after a restart).
//!
//! Every POST carries the session's CSRF token in a form field, and the sign-in form
//! one bound to a short-lived cookie (double submit), so no other site can make a
//! signed-in browser act. [`gate`] checks both for every route behind it, before any
//! handler runs: a handler cannot forget it.
//!
//! Where the control API accepts every caller (`control.allow_unauthenticated` with no
//! keys, as in `switchyard dev`), there is no sign-in: a visit gets a session of the
//! anonymous admin, and the CSRF check still applies.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Form,
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::{Failure, MAX_FORM_BYTES, Shared, layout};
use crate::auth::{Authenticate, Caller};

/// The cookie that holds a session's token.
const SESSION_COOKIE: &str = "switchyard_session";
/// The cookie that binds the sign-in form's CSRF token to the browser.
const SIGN_IN_COOKIE: &str = "switchyard_sign_in";
/// How long a sign-in form may be left open before it is submitted.
const SIGN_IN_TTL: Duration = Duration::from_secs(15 * 60);
/// Sessions kept at once; beyond it the longest idle one ends.
const MAX_SESSIONS: usize = 10_000;

/// A signed-in caller, as the pages see it.
#[derive(Clone)]
pub struct Session {
    /// The API key's caller, with its scope.
    pub caller: Caller,
    /// The token every POST of this session carries.
    pub csrf: Arc<str>,
}

/// The sessions of one console process.
pub struct Sessions {
    idle: Duration,
    open: Mutex<HashMap<[u8; 32], Entry>>,
}

struct Entry {
    session: Session,
    last_seen: Instant,
}

impl Sessions {
    /// No sessions yet; each ends after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            open: Mutex::default(),
        }
    }

    /// Starts a session for `caller`; returns its token, for the cookie.
    fn start(&self, caller: Caller) -> Result<(String, Session), Failure> {
        let token = random_token()?;
        let session = Session {
            caller,
            csrf: random_token()?.into(),
        };
        let now = Instant::now();
        let mut open = self.open.lock().expect("sessions lock");
        open.retain(|_, entry| now.duration_since(entry.last_seen) < self.idle);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, entry)| entry.last_seen)
                .map(|(key, _)| *key)
        {
            open.remove(&oldest);
        }
        open.insert(
            digest(&token),
            Entry {
                session: session.clone(),
                last_seen: now,
            },
        );
        Ok((token, session))
    }

    /// The live session of `token`, which this request keeps alive.
    fn find(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut open = self.open.lock().expect("sessions lock");
        let key = digest(token);
        let entry = open.get_mut(&key)?;
        if now.duration_since(entry.last_seen) >= self.idle {
            open.remove(&key);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    /// Ends the session of `token`.
    fn end(&self, token: &str) {
        self.open
            .lock()
            .expect("sessions lock")
            .remove(&digest(token));
    }
}

/// Lets a request through to the pages only with a live session (or where no key is
/// needed), and a POST only with that session's CSRF token; puts the [`Session`] in
/// the request's extensions.
pub async fn gate(State(console): State<Shared>, request: Request, next: Next) -> Response {
    let found = cookie(request.headers(), SESSION_COOKIE).and_then(|t| console.sessions.find(t));
    let (session, new_token) = match found {
        Some(session) => (session, None),
        None if console.authenticate.is_open() => {
            match console.sessions.start(Authenticate::anonymous()) {
                Ok((token, session)) => (session, Some(token)),
                Err(failure) => return failure.into_response(),
            }
        }
        None => return to_sign_in(&request),
    };
    let mut request = if is_safe(request.method()) {
        request
    } else {
        match checked(request, &session.csrf).await {
            Ok(request) => request,
            Err(failure) => return failure.into_response(),
        }
    };
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Some(token) = new_token {
        response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token, None));
    }
    response
}

/// A redirect to the sign-in page that comes back to where `request` was going (a
/// POST comes back to the page it was sent from, as a GET).
fn to_sign_in(request: &Request) -> Response {
    let next = if is_safe(request.method()) {
        request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
    } else {
        "/"
    };
    let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
    Redirect::to(&format!("/sign-in?{query}")).into_response()
}

fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `request` again, once its form's `csrf` field matched `expected`.
async fn checked(request: Request, expected: &str) -> Result<Request, Failure> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Failure::TooLarge)?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|err| Failure::Invalid(format!("the form cannot be read: {err}")))?;
    let presented = fields
        .iter()
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.as_str());
    if !tokens_match(presented, expected) {
        return Err(Failure::Csrf);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn tokens_match(presented: Option<&str>, expected: &str) -> bool {
    presented.is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(expected.as_bytes())))
}

/// Where the sign-in form returns to.
#[derive(Deserialize)]
pub struct ReturnTo {
    next: Option<String>,
}

/// The sign-in form, bound to this browser by a fresh cookie.
pub async fn sign_in_form(
    State(console): State<Shared>,
    Query(query): Query<ReturnTo>,
) -> Result<Response, Failure> {
    let next = local(query.next.as_deref());
    if console.authenticate.is_open() {
        return Ok(Redirect::to(next).into_response());
    }
    let token = random_token()?;
    let page = sign_in_page(&token, next, None);
    let cookie = set_cookie(SIGN_IN_COOKIE, &token, Some(SIGN_IN_TTL));
    Ok(([(header::SET_COOKIE, cookie)], page).into_response())
}

/// A submitted sign-in form.
#[derive(Deserialize)]
pub struct SignIn {
    csrf: String,
    key: String,
    next: Option<String>,
}

/// Starts a session for the key in the form, or shows the form again saying why not.
pub async fn sign_in(
    State(console): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Result<Response, Failure> {
    if !tokens_match(
        Some(&form.csrf),
        cookie(&headers, SIGN_IN_COOKIE).unwrap_or(""),
    ) {
        return Err(Failure::Csrf);
    }
    let next = local(form.next.as_deref());
    let Some(caller) = console.authenticate.caller_of(&form.key) else {
        let page = sign_in_page(
            &form.csrf,
            next,
            Some("That is not one of control's API keys."),
        );
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    tracing::info!(key = %caller.name, scope = %caller.scope, "console sign-in");
    let (token, _) = console.sessions.start(caller)?;
    let mut response = Redirect::to(next).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token, None));
    headers.append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, "", Some(Duration::ZERO)),
    );
    Ok(response)
}

/// Ends the session (the gate has checked the form's CSRF token).
pub async fn sign_out(State(console): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        console.sessions.end(token);
    }
    let to = if console.authenticate.is_open() {
        "/"
    } else {
        "/sign-in"
    };
    (
        [(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", Some(Duration::ZERO)),
        )],
        Redirect::to(to),
    )
        .into_response()
}

fn sign_in_page(csrf: &str, next: &str, problem: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form.sign-in method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="key" { "Control API key" }
                input #key type="password" name="key" required autofocus autocomplete="off";
                button type="submit" { "Sign in" }
            }
            p.hint { "A key from " code { "control.api_keys" } " (" code { "syctl keys create" } " makes one). Its scope decides what you may do here, as in the gRPC API." }
        },
    )
}

/// `next` when it is a path on this site, `/` otherwise: the sign-in page redirects
/// nowhere else.
fn local(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next
        }
        _ => "/",
    }
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the whole console; a session
/// cookie unless `max_age` is given (zero removes it).
fn set_cookie(name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    HeaderValue::from_str(&cookie).expect("tokens are hex")
}

/// 32 random bytes from the system, in hex.
fn random_token() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| Failure::Internal(format!("no random numbers from the system: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use switchyard_core::config::Scope;

    use super::*;

    fn caller(name: &str) -> Caller {
        Caller {
            name: name.into(),
            scope: Scope::Read,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_after_its_idle_time_and_on_sign_out() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (token, session) = sessions.start(caller("ops")).unwrap();
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(
            &*session.csrf,
            token.as_str(),
            "the CSRF token is not the session's"
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.find(&token).is_some(), "a request keeps it alive");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.find(&token).is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(sessions.find(&token).is_none(), "idle for its whole time");

        let (token, _) = sessions.start(caller("ops")).unwrap();
        sessions.end(&token);
        assert!(sessions.find(&token).is_none());
        assert!(sessions.find("not a token").is_none());
    }

    #[test]
    fn only_the_right_token_passes() {
        assert!(tokens_match(Some("abc"), "abc"));
        assert!(!tokens_match(Some("abd"), "abc"));
        assert!(!tokens_match(Some(""), "abc"));
        assert!(!tokens_match(None, "abc"));
    }

    #[test]
    fn sign_in_returns_only_to_a_local_path() {
        assert_eq!(local(Some("/events/1?x=2")), "/events/1?x=2");
        assert_eq!(local(Some("//evil.example/")), "/");
        assert_eq!(local(Some("/\\evil.example")), "/");
        assert_eq!(local(Some("https://evil.example/")), "/");
        assert_eq!(local(None), "/");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            "a=1; switchyard_session=tok".parse().unwrap(),
        );
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "tok", None);
        assert_eq!(
            set.to_str().unwrap(),
            "switchyard_session=tok; Path=/; HttpOnly; SameSite=Strict"
        );
    }
}
