//! The frame every page shares and the small pieces pages are made of: times, bodies,
//! headers, the CSRF field.

use std::collections::HashMap;

use maud::{DOCTYPE, Markup, html};
use switchyard_core::config::Scope;

use super::session::Session;

/// The sections of the console, in the navigation's order.
const SECTIONS: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/events", "Events"),
    ("/dead-letters", "Dead letters"),
    ("/providers", "Providers"),
    ("/mappings", "Mappings"),
    ("/catalog", "Catalog"),
];

/// A page of the signed-in console: navigation, who is signed in, and `content`.
pub fn page(session: &Session, title: &str, content: Markup) -> Markup {
    signed_in(session, title, content, false)
}

/// [`page`] that reloads itself every second, for progress under way.
pub fn refreshing(session: &Session, title: &str, content: Markup) -> Markup {
    signed_in(session, title, content, true)
}

fn signed_in(session: &Session, title: &str, content: Markup, refresh: bool) -> Markup {
    document(
        title,
        refresh,
        html! {
            a.skip href="#content" { "Skip to the content" }
            header {
                a.brand href="/" { "Switchyard" }
                nav aria-label="Sections" {
                    @for (path, name) in SECTIONS {
                        a href=(path) { (name) }
                    }
                }
                div.who {
                    span { (session.caller.name) " · " (session.caller.scope) }
                    form method="post" action="/sign-out" {
                        (csrf(session))
                        button.link type="submit" { "Sign out" }
                    }
                }
            }
            main #content {
                h1 { (title) }
                (content)
            }
        },
    )
}

/// A page outside the signed-in console: sign-in and errors.
pub fn bare(title: &str, content: Markup) -> Markup {
    document(
        title,
        false,
        html! {
            header { a.brand href="/" { "Switchyard" } }
            main {
                h1 { (title) }
                (content)
            }
        },
    )
}

fn document(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="1"; }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Switchyard console" }
                link rel="stylesheet" href="/console.css";
            }
            body { (body) }
        }
    }
}

/// A message saying what went wrong.
pub fn problem(message: &str) -> Markup {
    html! { p.problem role="alert" { (message) } }
}

/// The hidden field that carries the session's CSRF token in a form.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Whether the signed-in key may act (pause, replay, purge, …).
pub fn can_operate(session: &Session) -> bool {
    session.caller.scope >= Scope::Operate
}

/// Whether the signed-in key may change the catalog.
pub fn can_administer(session: &Session) -> bool {
    session.caller.scope >= Scope::Admin
}

/// A time, to the second in UTC, or a dash when there is none.
pub fn when(at: Option<&prost_types::Timestamp>) -> Markup {
    let Some(at) = at else {
        return html! { span.none { "–" } };
    };
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp(at.seconds) else {
        return html! { span.none { "–" } };
    };
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    let machine = crate::proto::convert::rfc3339(at).unwrap_or_default();
    html! { time datetime=(machine) { (text) } }
}

/// A body: pretty-printed when it is JSON, as text otherwise; always escaped.
pub fn body(bytes: &[u8]) -> Markup {
    let text = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    html! { pre.body { (text) } }
}

/// Headers as a table, sorted by name.
pub fn headers(headers: &HashMap<String, String>) -> Markup {
    let mut sorted: Vec<_> = headers.iter().collect();
    sorted.sort();
    html! {
        table.headers {
            thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
            tbody {
                @for (name, value) in sorted {
                    tr { td { code { (name) } } td { code { (value) } } }
                }
            }
        }
    }
}

/// A failure's verdict and what to do about it; nothing when it has none.
pub fn verdict(verdict: &str, explanation: &str) -> Markup {
    let label = match verdict {
        "retry_will_fix" => "Retry will fix it",
        "needs_human" => "Needs a person",
        "needs_config" => "Needs a configuration change",
        _ => return html! {},
    };
    html! {
        p.explained.(verdict) {
            strong { (label) ": " }
            (explanation)
        }
    }
}

/// A definition list of label and value pairs.
pub fn facts(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl.facts {
            @for (label, value) in rows {
                dt { (label) }
                dd { (value) }
            }
        }
    }
}

/// `query` as a URL query string (without the `?`), leaving out empty values.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<_> = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_escaped_and_pretty_printed() {
        let html = body(br#"{"note":"<script>alert(1)</script>","n":1}"#).into_string();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("\n  &quot;n&quot;: 1"),
            "pretty-printed: {html}"
        );
        let text = body(b"<b>not json</b>").into_string();
        assert_eq!(
            text,
            "<pre class=\"body\">&lt;b&gt;not json&lt;/b&gt;</pre>"
        );
    }

    #[test]
    fn times_read_in_utc_to_the_second() {
        let at = prost_types::Timestamp {
            seconds: 1_796_200_000,
            nanos: 5,
        };
        let html = when(Some(&at)).into_string();
        assert!(html.contains(">2026-12-02 08:26:40<"), "{html}");
        assert!(when(None).into_string().contains('–'));
    }

    #[test]
    fn queries_leave_out_empty_values() {
        assert_eq!(
            query(&[("provider", "crm"), ("route", ""), ("category", "a b")]),
            "provider=crm&category=a+b"
        );
    }
}
