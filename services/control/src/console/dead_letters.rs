//! The dead-letter queue: filter and page through it, read one, replay the selected
//! or every matching one with live progress, and purge after a confirmation.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use futures::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;
use switchyard_core::outcome::FailureCategory;

use super::{Failure, Shared, layout, request, session::Session};
use crate::proto::{
    DeadLetter, DeadLetterFilter, DeadLetterProgress, DeadLetterSelection, GetDeadLetterRequest,
    ListDeadLettersRequest, PurgeDeadLettersRequest, ReplayDeadLettersRequest,
    dead_letter_service_server::DeadLetterService,
};

/// Dead letters on one page.
const PAGE_SIZE: u32 = 50;
/// Replays whose progress is kept for their pages; the oldest goes first.
const KEPT_REPLAYS: usize = 100;

/// The filter, as the list page's query and the action forms' fields carry it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Filter {
    provider: String,
    source: String,
    category: String,
    route: String,
    /// `YYYY-MM-DDTHH:MM[:SS]` in UTC, as a `datetime-local` field sends it.
    since: String,
    until: String,
    page: String,
}

impl Filter {
    fn to_proto(&self) -> Result<DeadLetterFilter, Failure> {
        Ok(DeadLetterFilter {
            provider: self.provider.trim().to_owned(),
            source: self.source.trim().to_owned(),
            category: self.category.trim().to_owned(),
            route: self.route.trim().to_owned(),
            since: utc("since", &self.since)?,
            until: utc("until", &self.until)?,
        })
    }

    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("provider", &self.provider),
            ("source", &self.source),
            ("category", &self.category),
            ("route", &self.route),
            ("since", &self.since),
            ("until", &self.until),
        ]
    }

    /// The filter as hidden fields of an action's form.
    fn hidden(&self) -> Markup {
        html! {
            @for (name, value) in self.fields() {
                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.fields()
            .iter()
            .all(|(_, value)| value.trim().is_empty())
    }
}

/// A `datetime-local` value read as UTC; empty is none.
fn utc(field: &str, text: &str) -> Result<Option<prost_types::Timestamp>, Failure> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // `datetime-local` leaves the seconds out when they are zero.
    let full = if text.len() == 16 {
        format!("{text}:00Z")
    } else {
        format!("{text}Z")
    };
    let at = time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            Failure::Invalid(format!(
                "{field}: {text:?} is not a time like 2026-12-01T09:30"
            ))
        })?;
    Ok(Some(crate::proto::convert::timestamp_of(at)))
}

/// `GET /dead-letters`: the filter, and a page of what it matches.
pub async fn list(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(filter): Query<Filter>,
) -> Result<Markup, Failure> {
    let listed = console
        .apis
        .dead_letters
        .list_dead_letters(request(
            &session,
            ListDeadLettersRequest {
                filter: Some(filter.to_proto()?),
                page_size: PAGE_SIZE,
                page_token: filter.page.clone(),
            },
        ))
        .await?
        .into_inner();
    let next = (!listed.next_page_token.is_empty()).then(|| {
        let mut pairs = filter.fields().to_vec();
        pairs.push(("page", &listed.next_page_token));
        format!("/dead-letters?{}", layout::query(&pairs))
    });
    let operate = layout::can_operate(&session);
    Ok(layout::page(
        &session,
        "Dead letters",
        html! {
            (filter_form(&filter))
            @if listed.dead_letters.is_empty() {
                p.none { "No dead letters match." }
            } @else {
                form method="post" action="/dead-letters/replay" {
                    (layout::csrf(&session))
                    (filter.hidden())
                    table {
                        thead {
                            tr {
                                @if operate { th scope="col" { span.visually-hidden { "Select" } } }
                                th scope="col" { "#" }
                                th scope="col" { "Dead-lettered" }
                                th scope="col" { "Provider / source" }
                                th scope="col" { "Route" }
                                th scope="col" { "Category" }
                                th scope="col" { "Verdict" }
                                th scope="col" { "Reason" }
                            }
                        }
                        tbody {
                            @for letter in &listed.dead_letters {
                                tr {
                                    @if operate {
                                        td {
                                            input type="checkbox" name="sequence" value=(letter.sequence)
                                                aria-label=(format!("select dead letter {}", letter.sequence));
                                        }
                                    }
                                    td.number { a href=(format!("/dead-letters/{}", letter.sequence)) { (letter.sequence) } }
                                    td { (layout::when(letter.dead_lettered_at.as_ref())) }
                                    td { @if letter.provider.is_empty() { (letter.source) } @else { (letter.provider) } }
                                    td { (letter.route) }
                                    td { (letter.category) }
                                    td { (letter.verdict.replace('_', " ")) }
                                    td.reason { (letter.reason) }
                                }
                            }
                        }
                    }
                    @if operate {
                        div.actions {
                            button type="submit" name="scope" value="selected" { "Replay selected" }
                            button type="submit" name="scope" value="all" { "Replay all matching" }
                            button.danger type="submit" name="scope" value="selected" formaction="/dead-letters/purge" { "Purge selected…" }
                            button.danger type="submit" name="scope" value="all" formaction="/dead-letters/purge" { "Purge all matching…" }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p { a href=(next) rel="next" { "Next page" } }
            }
        },
    ))
}

fn filter_form(filter: &Filter) -> Markup {
    html! {
        form.filter method="get" action="/dead-letters" role="search" {
            label { "Provider " input type="text" name="provider" value=(filter.provider); }
            label { "Source " input type="text" name="source" value=(filter.source); }
            label {
                "Category "
                select name="category" {
                    option value="" { "any" }
                    @for category in FailureCategory::ALL {
                        option value=(category.as_str()) selected[filter.category == category.as_str()] { (category.as_str()) }
                    }
                }
            }
            label { "Route " input type="text" name="route" value=(filter.route); }
            label { "Since (UTC) " input type="datetime-local" name="since" value=(filter.since); }
            label { "Until (UTC) " input type="datetime-local" name="until" value=(filter.until); }
            button type="submit" { "Filter" }
            @if !filter.is_empty() { " " a href="/dead-letters" { "Clear" } }
        }
    }
}

/// `GET /dead-letters/{sequence}`.
pub async fn show(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(sequence): Path<u64>,
) -> Result<Markup, Failure> {
    let letter = console
        .apis
        .dead_letters
        .get_dead_letter(request(&session, GetDeadLetterRequest { sequence }))
        .await?
        .into_inner();
    Ok(layout::page(
        &session,
        &format!("Dead letter {sequence}"),
        html! {
            (layout::verdict(&letter.verdict, &letter.explanation))
            (facts(&letter))
            @if layout::can_operate(&session) {
                form.actions method="post" action="/dead-letters/replay" {
                    (layout::csrf(&session))
                    input type="hidden" name="sequence" value=(sequence);
                    button type="submit" name="scope" value="selected" { "Replay" }
                    button.danger type="submit" name="scope" value="selected" formaction="/dead-letters/purge" { "Purge…" }
                }
            }
            h2 { "Body" }
            (layout::body(&letter.body))
            h2 { "Headers" }
            (layout::headers(&letter.headers))
        },
    ))
}

fn facts(letter: &DeadLetter) -> Markup {
    let event = format!("/events?{}", layout::query(&[("id", &letter.event_id)]));
    layout::facts(&[
        ("Category", html! { (letter.category) }),
        ("Reason", html! { (letter.reason) }),
        ("Provider", html! { (letter.provider) }),
        ("Source", html! { (letter.source) }),
        (
            "Event",
            html! { a href=(event) { (letter.event_id) } " (" (letter.event_type) ")" },
        ),
        ("Route", html! { (letter.route) }),
        ("Mapping", html! { (letter.mapping) }),
        ("Attempts", html! { (letter.attempts) }),
        (
            "Last status",
            html! { @if letter.last_status == 0 { "none" } @else { (letter.last_status) } },
        ),
        ("Response", html! { code { (letter.response_excerpt) } }),
        (
            "Failing paths",
            html! { @for path in &letter.failing_paths { code { (path) } " " } },
        ),
        ("Received", layout::when(letter.received_at.as_ref())),
        (
            "Dead-lettered",
            layout::when(letter.dead_lettered_at.as_ref()),
        ),
    ])
}

/// The fields of a replay or purge form: the filter, the ticked sequences, which of
/// them it takes, and for a purge whether it was confirmed.
struct Action {
    filter: Filter,
    sequences: Vec<u64>,
    all: bool,
    confirmed: bool,
}

impl Action {
    fn read(fields: Vec<(String, String)>) -> Result<Self, Failure> {
        let mut filter = HashMap::new();
        let mut sequences = Vec::new();
        let mut all = false;
        let mut confirmed = false;
        for (name, value) in fields {
            match name.as_str() {
                "sequence" => sequences.push(value.parse().map_err(|_| {
                    Failure::Invalid(format!("sequence: {value:?} is not a dead letter's number"))
                })?),
                "scope" => all = value == "all",
                "confirm" => confirmed = value == "yes",
                _ => {
                    filter.insert(name, value);
                }
            }
        }
        let take = |name: &str| filter.get(name).cloned().unwrap_or_default();
        let filter = Filter {
            provider: take("provider"),
            source: take("source"),
            category: take("category"),
            route: take("route"),
            since: take("since"),
            until: take("until"),
            page: String::new(),
        };
        if !all && sequences.is_empty() {
            return Err(Failure::Invalid(
                "no dead letter is selected: tick some, or take all matching".into(),
            ));
        }
        Ok(Self {
            filter,
            sequences,
            all,
            confirmed,
        })
    }

    fn selection(&self) -> Result<DeadLetterSelection, Failure> {
        Ok(DeadLetterSelection {
            sequences: if self.all {
                Vec::new()
            } else {
                self.sequences.clone()
            },
            filter: Some(self.filter.to_proto()?),
            all: self.all,
        })
    }

    fn describe(&self) -> String {
        if !self.all {
            return format!("{} selected dead letter(s)", self.sequences.len());
        }
        let parts: Vec<String> = self
            .filter
            .fields()
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        if parts.is_empty() {
            "every dead letter in the queue".into()
        } else {
            format!("every dead letter with {}", parts.join(", "))
        }
    }
}

/// Replays under way or finished, by id, for their progress pages.
#[derive(Default)]
pub struct Replays {
    kept: Mutex<VecDeque<(String, Arc<Mutex<Replay>>)>>,
}

struct Replay {
    what: String,
    by: String,
    progress: DeadLetterProgress,
    error: Option<String>,
}

impl Replays {
    fn add(&self, replay: Replay) -> (String, Arc<Mutex<Replay>>) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let replay = Arc::new(Mutex::new(replay));
        let mut kept = self.kept.lock().expect("replays lock");
        if kept.len() >= KEPT_REPLAYS {
            kept.pop_front();
        }
        kept.push_back((id.clone(), replay.clone()));
        (id, replay)
    }

    fn find(&self, id: &str) -> Option<Arc<Mutex<Replay>>> {
        let kept = self.kept.lock().expect("replays lock");
        kept.iter()
            .find(|(kept_id, _)| kept_id == id)
            .map(|(_, replay)| replay.clone())
    }
}

/// `POST /dead-letters/replay`: starts the replay and shows its progress page.
pub async fn replay(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let action = Action::read(fields)?;
    let replay = ReplayDeadLettersRequest {
        selection: Some(action.selection()?),
        dry_run: false,
    };
    // The scope check and the selection's validation happen here, before a page is
    // promised; the progress then streams into the kept replay.
    let mut progress = console
        .apis
        .dead_letters
        .replay_dead_letters(request(&session, replay))
        .await?
        .into_inner();
    let (id, kept) = console.replays.add(Replay {
        what: action.describe(),
        by: session.caller.name.to_string(),
        progress: DeadLetterProgress::default(),
        error: None,
    });
    tokio::spawn(async move {
        while let Some(update) = progress.next().await {
            let mut replay = kept.lock().expect("replay lock");
            match update {
                Ok(update) => replay.progress = update,
                Err(status) => {
                    replay.error = Some(status.message().to_owned());
                    break;
                }
            }
        }
        let mut replay = kept.lock().expect("replay lock");
        if !replay.progress.done && replay.error.is_none() {
            replay.error = Some("the replay ended before it was done".into());
        }
    });
    Ok(Redirect::to(&format!("/dead-letters/replays/{id}")).into_response())
}

/// `GET /dead-letters/replays/{id}`: a replay's progress, reloading itself every
/// second until it is done.
pub async fn progress(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Markup, Failure> {
    let replay = console.replays.find(&id).ok_or_else(|| {
        Failure::NotFound(format!(
            "no replay {id} (replays are kept while control runs)"
        ))
    })?;
    let replay = replay.lock().expect("replay lock");
    let progress = &replay.progress;
    let finished = progress.done || replay.error.is_some();
    let content = html! {
        p { "Replaying " (replay.what) ", started by " (replay.by) "." }
        (layout::facts(&[
            ("State", html! {
                @if let Some(error) = &replay.error { span.bad { "stopped: " (error) } }
                @else if progress.done { span.good { "done" } }
                @else { "under way" }
            }),
            ("Selected", html! { (progress.total) }),
            ("Looked at", html! { (progress.scanned) }),
            ("Sent on", html! { output #replayed { (progress.replayed) } }),
            ("Already delivered", html! { (progress.already_delivered) }),
            ("Still failing (kept)", html! { (progress.failed) }),
        ]))
        @if !progress.failures.is_empty() {
            h2 { "Failures" }
            ul { @for failure in &progress.failures { li { (failure) } } }
        }
        p { a href="/dead-letters" { "Back to the dead letters" } }
    };
    Ok(if finished {
        layout::page(&session, "Replay", content)
    } else {
        layout::refreshing(&session, "Replay", content)
    })
}

/// `POST /dead-letters/purge`: without `confirm=yes`, the question; with it, the purge.
pub async fn purge(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Markup, Failure> {
    let action = Action::read(fields)?;
    let selection = action.selection()?;
    if !action.confirmed {
        return Ok(layout::page(
            &session,
            "Purge dead letters?",
            html! {
                p { "This removes " strong { (action.describe()) } " for good: they cannot be replayed afterwards." }
                form.actions method="post" action="/dead-letters/purge" {
                    (layout::csrf(&session))
                    (action.filter.hidden())
                    @if action.all {
                        input type="hidden" name="scope" value="all";
                    } @else {
                        @for sequence in &action.sequences { input type="hidden" name="sequence" value=(sequence); }
                    }
                    button.danger type="submit" name="confirm" value="yes" { "Purge" }
                    " " a href="/dead-letters" { "Cancel" }
                }
            },
        ));
    }
    let purged = console
        .apis
        .dead_letters
        .purge_dead_letters(request(
            &session,
            PurgeDeadLettersRequest {
                selection: Some(selection),
            },
        ))
        .await?
        .into_inner()
        .purged;
    Ok(layout::page(
        &session,
        "Purged",
        html! {
            p role="status" { "Purged " output #purged { (purged) } " dead letter(s): " (action.describe()) "." }
            p { a href="/dead-letters" { "Back to the dead letters" } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_action_takes_the_ticked_or_all_matching() {
        let action = Action::read(fields(&[
            ("csrf", "t"),
            ("provider", "crm"),
            ("sequence", "4"),
            ("sequence", "9"),
            ("scope", "selected"),
        ]))
        .unwrap();
        let selection = action.selection().unwrap();
        assert_eq!(selection.sequences, vec![4, 9]);
        assert!(!selection.all);
        assert_eq!(action.describe(), "2 selected dead letter(s)");

        let action = Action::read(fields(&[
            ("provider", "crm"),
            ("sequence", "4"),
            ("scope", "all"),
        ]))
        .unwrap();
        let selection = action.selection().unwrap();
        assert!(selection.all && selection.sequences.is_empty());
        assert_eq!(selection.filter.unwrap().provider, "crm");
        assert_eq!(action.describe(), "every dead letter with provider crm");
    }

    #[test]
    fn a_bad_action_names_what_is_wrong() {
        let none = Action::read(fields(&[("scope", "selected")]))
            .err()
            .unwrap();
        assert!(
            none.message().contains("no dead letter is selected"),
            "{}",
            none.message()
        );
        let bad = Action::read(fields(&[("sequence", "x")])).err().unwrap();
        assert!(bad.message().contains("\"x\""), "{}", bad.message());
        let time = utc("since", "yesterday").err().unwrap();
        assert!(
            time.message().starts_with("since: \"yesterday\""),
            "{}",
            time.message()
        );
    }

    #[test]
    fn times_are_read_as_utc() {
        let at = utc("since", "2026-12-01T09:30").unwrap().unwrap();
        assert_eq!(at.seconds, 1_796_117_400);
        let at = utc("since", "2026-12-01T09:30:15").unwrap().unwrap();
        assert_eq!(at.seconds, 1_796_117_415);
        assert_eq!(utc("since", " ").unwrap(), None);
    }
}
