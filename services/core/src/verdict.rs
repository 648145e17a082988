//! Failures explained for the person who has to act on them: a [`Verdict`] (will a
//! retry fix it, does a person have to look, does the configuration have to change)
//! and a few sentences built from the facts that end with the exact next step.
//!
//! The sentences are fixed templates filled with the facts, so the same failure
//! always reads the same in `syctl`, the API and the console. Control calls
//! [`explain`] when it answers; nothing here is stored, so an old dead letter reads
//! as well as a new one.

use crate::outcome::{ErrorKind, FailureCategory, Outcome, Verdict};

/// Characters of the provider's answer quoted in an explanation.
const EXCERPT: usize = 160;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// A dead letter: its DLQ sequence and why it is there.
    DeadLetter {
        /// Its sequence in stream DLQ.
        sequence: u64,
        /// Why it was dead-lettered.
        category: FailureCategory,
    },
    /// One delivery attempt, and the dead letter it led to when one is known.
    Attempt {
        /// What the attempt led to.
        outcome: Outcome,
        /// The DLQ sequence of the event's dead letter on that route.
        dead_letter: Option<u64>,
    },
}

/// Everything an explanation is built from. Empty text means unknown.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// What failed.
    pub failed: Failed,
    /// The provider (empty for a source's schema failure).
    pub provider: &'a str,
    /// The event's source.
    pub source: &'a str,
    /// The route.
    pub route: &'a str,
    /// The mapping, `name@version`.
    pub mapping: &'a str,
    /// The provider's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What kind of error the (last) attempt met.
    pub error: Option<ErrorKind>,
    /// The reason recorded with the failure.
    pub reason: &'a str,
    /// The start of the provider's answer.
    pub excerpt: &'a str,
    /// JSON pointers that broke a contract.
    pub failing_paths: &'a [String],
    /// Counted delivery attempts.
    pub attempts: u32,
    /// The provider's circuit breaker is open now.
    pub breaker_open: bool,
    /// Names (never values) of the secrets the provider's requests authenticate with.
    pub secrets: &'a [String],
}

/// A verdict and its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What it takes.
    pub verdict: Verdict,
    /// What happened and the next step, in a few sentences.
    pub text: String,
}

/// The verdict on a failure and its explanation; `None` for an attempt that
/// delivered, which needs neither.
pub fn explain(facts: &Facts<'_>) -> Option<Explanation> {
    let (verdict, text) = match facts.failed {
        Failed::DeadLetter { sequence, category } => dead_letter(facts, category, Some(sequence)),
        Failed::Attempt {
            outcome,
            dead_letter: sequence,
        } => match outcome {
            Outcome::Delivered => return None,
            Outcome::Deferred => (
                Verdict::RetryWillFix,
                format!(
                    "{} asked for a pause ({}), and Switchyard waits as asked and sends it \
                     again without spending an attempt. Next: nothing to do.",
                    provider(facts),
                    answered(facts),
                ),
            ),
            Outcome::Retry => (
                Verdict::RetryWillFix,
                format!(
                    "Attempt {} to provider {} failed ({}{}). Switchyard tries again after the retry \
                     policy's delay. Next: nothing to do unless it keeps failing{}; \
                     `syctl providers status {}` shows whether it recovers.",
                    facts.attempts.max(1),
                    facts.provider,
                    answered(facts),
                    reason(facts),
                    if facts.breaker_open {
                        " (the breaker is open: the provider is failing now)"
                    } else {
                        ""
                    },
                    facts.provider,
                ),
            ),
            Outcome::Rejected => dead_letter(facts, FailureCategory::Rejected, sequence),
            Outcome::Exhausted => dead_letter(facts, FailureCategory::Exhausted, sequence),
        },
    };
    Some(Explanation { verdict, text })
}

/// The verdict on an event dead-lettered under `category`.
fn dead_letter(
    facts: &Facts<'_>,
    category: FailureCategory,
    sequence: Option<u64>,
) -> (Verdict, String) {
    let replay_one = replay(facts, category, sequence);
    let replay_all = replay(facts, category, None);
    let test = match facts.mapping {
        "" => "`syctl mapping test`".to_owned(),
        mapping => format!("`syctl mapping test {mapping} --sample event.json`"),
    };
    let body = match sequence {
        Some(sequence) => format!(" (`syctl dlq show {sequence}` prints it)"),
        None => String::new(),
    };
    let mapping = match facts.mapping {
        "" => format!("The mapping of route {}", facts.route),
        mapping => format!("Mapping {mapping}"),
    };
    let error = facts
        .error
        .or(facts.status.map(ErrorKind::of_status))
        .unwrap_or(ErrorKind::Other);
    match category {
        FailureCategory::Schema => (
            Verdict::NeedsHuman,
            format!(
                "The event does not match the JSON Schema of source {}{}{}. Either the \
                 sender or the schema is wrong, and a person has to decide which. Next: fix \
                 the sender and send the event again, or change the source's schema and run \
                 {replay_one}.",
                facts.source,
                paths(facts),
                reason(facts),
            ),
        ),
        FailureCategory::Mapping => (
            Verdict::NeedsConfig,
            format!(
                "{mapping} failed on this event{}. The event is kept as it came; the mapping \
                 has to handle it. Next: run {test} on the event{body}, apply a fixed \
                 version, then {replay_one}.",
                reason(facts),
            ),
        ),
        FailureCategory::Contract => (
            Verdict::NeedsConfig,
            format!(
                "The event or {} output breaks the mapping's JSON Schema{}{}. Next: run \
                 {test} on the event{body} to see each violation, fix the mapping or its \
                 schema and apply it, then {replay_one}.",
                match facts.mapping {
                    "" => "the mapping's".to_owned(),
                    mapping => format!("{mapping}'s"),
                },
                paths(facts),
                reason(facts),
            ),
        ),
        FailureCategory::Filter => (
            Verdict::NeedsConfig,
            format!(
                "The filter of route {} failed to run on this event{}. Next: fix the filter \
                 (`syctl describe route {}`) and apply it, then {replay_one}.",
                facts.route,
                reason(facts),
                facts.route,
            ),
        ),
        FailureCategory::Rejected => match (error, facts.status) {
            (ErrorKind::Blocked, _) => (
                Verdict::NeedsConfig,
                format!(
                    "The outbound guard refused to send to provider {}{}, and no retry changes \
                     that. Next: if the address is right, allow it in delivery's \
                     `outbound.allow` setting and restart delivery, then {replay_all}.",
                    facts.provider,
                    reason(facts),
                ),
            ),
            (_, Some(status @ (401 | 403))) => (
                Verdict::NeedsConfig,
                match facts.secrets {
                    [] => format!(
                        "{} answered HTTP {status}{}, and its catalog entry sends no \
                         credentials. Next: add `auth` to provider {} and apply it, then \
                         {replay_all}.",
                        provider(facts),
                        said(facts),
                        facts.provider,
                    ),
                    secrets => format!(
                        "{} answered HTTP {status}{}: {} {} refused{}. Next: rotate {} — put a \
                         valid value in {} where delivery reads its secrets — then \
                         {replay_all}.",
                        provider(facts),
                        said(facts),
                        secret_names(secrets),
                        if secrets.len() == 1 { "was" } else { "were" },
                        if status == 403 {
                            ", or lacks a permission at the provider"
                        } else {
                            ""
                        },
                        if secrets.len() == 1 { "it" } else { "them" },
                        secret_names(secrets),
                    ),
                },
            ),
            (_, Some(status @ (300..=399 | 404 | 405 | 410))) => (
                Verdict::NeedsConfig,
                format!(
                    "{} answered HTTP {status}{}{}: the URL or method in its catalog entry does \
                     not lead to the API. Next: check `syctl describe provider {}`, fix its \
                     `url` or `method` and apply it, then {replay_all}.",
                    provider(facts),
                    said(facts),
                    reason(facts),
                    facts.provider,
                ),
            ),
            _ => (
                Verdict::NeedsHuman,
                format!(
                    "{} refused this delivery ({}{}{}). Sending it again gets the same \
                     answer; a person has to see what it objects to. Next: compare the \
                     body{body} with what the provider expects, fix the mapping ({test}) or \
                     the data at source {}, then {replay_one}.",
                    provider(facts),
                    answered(facts),
                    said(facts),
                    reason(facts),
                    facts.source,
                ),
            ),
        },
        FailureCategory::Exhausted => match error {
            ErrorKind::Credentials => (
                Verdict::NeedsConfig,
                format!(
                    "Nothing was sent: the credentials for provider {} could not be \
                     obtained{}. Next: make {} readable by delivery{}, then {replay_all}.",
                    facts.provider,
                    reason(facts),
                    match facts.secrets {
                        [] => "its secrets".to_owned(),
                        secrets => secret_names(secrets),
                    },
                    " (and check the OAuth2 token URL, if it has one)",
                ),
            ),
            ErrorKind::Tls => (
                Verdict::NeedsConfig,
                format!(
                    "The TLS handshake with provider {} failed on {}{}. Next: check the \
                     provider's certificate, or add its CA to the provider's `tls` settings and \
                     apply it, then {replay_all}.",
                    facts.provider,
                    every_attempt(facts.attempts),
                    reason(facts),
                ),
            ),
            _ => (
                Verdict::RetryWillFix,
                format!(
                    "{} failed {} (the last: {}{}). Nothing is wrong with the event: the \
                     provider was down, slow or overloaded. Next: {}{replay_all}.",
                    provider(facts),
                    every_attempt(facts.attempts),
                    answered(facts),
                    reason(facts),
                    if facts.breaker_open {
                        format!(
                            "its breaker is open, so it is still failing; once `syctl \
                             providers status {}` shows it closed, run ",
                            facts.provider
                        )
                    } else {
                        String::new()
                    },
                ),
            ),
        },
    }
}

/// `syctl dlq replay` for one dead letter, or for all of the provider's (or source's)
/// under `category`.
fn replay(facts: &Facts<'_>, category: FailureCategory, sequence: Option<u64>) -> String {
    match (sequence, facts.provider) {
        (Some(sequence), _) => format!("`syctl dlq replay {sequence}`"),
        (None, "") => format!(
            "`syctl dlq replay --all --source {} --category {category}`",
            facts.source
        ),
        (None, provider) => {
            format!("`syctl dlq replay --all --provider {provider} --category {category}`")
        }
    }
}

fn provider(facts: &Facts<'_>) -> String {
    format!("Provider {}", facts.provider)
}

/// What the provider answered, or what came instead of an answer.
fn answered(facts: &Facts<'_>) -> String {
    if let Some(status) = facts.status {
        return format!("HTTP {status}");
    }
    match facts.error {
        Some(ErrorKind::Timeout) => "no answer within its timeout",
        Some(ErrorKind::Connect) => "the connection could not be made or broke",
        Some(ErrorKind::Tls) => "the TLS handshake failed",
        Some(ErrorKind::Blocked) => "the outbound guard blocked the address",
        Some(ErrorKind::Credentials) => "its credentials could not be obtained",
        _ => "no answer",
    }
    .to_owned()
}

/// `: <reason>`, or nothing; without the `HTTP <status>` it starts with when the
/// explanation names the status already.
fn reason(facts: &Facts<'_>) -> String {
    let reason = facts.reason.trim();
    if let Some(status) = facts.status
        && let Some(rest) = reason.strip_prefix(&format!("HTTP {status}"))
    {
        return rest.to_owned();
    }
    match reason {
        "" => String::new(),
        reason => format!(": {reason}"),
    }
}

/// `, saying "<excerpt>"`, or nothing.
fn said(facts: &Facts<'_>) -> String {
    match facts.excerpt.trim() {
        "" => String::new(),
        excerpt => {
            let mut quoted: String = excerpt.chars().take(EXCERPT).collect();
            if quoted.len() < excerpt.len() {
                quoted.push('…');
            }
            format!(", saying \"{quoted}\"")
        }
    }
}

/// ` at /a, /b`, or nothing.
fn paths(facts: &Facts<'_>) -> String {
    match facts.failing_paths {
        [] => String::new(),
        paths => format!(" at {}", paths.join(", ")),
    }
}

/// `all 8 attempts`, or `its only attempt`.
fn every_attempt(attempts: u32) -> String {
    match attempts {
        0 | 1 => "its only attempt".to_owned(),
        n => format!("all {n} attempts"),
    }
}

fn secret_names(secrets: &[String]) -> String {
    match secrets {
        [one] => format!("the secret {one}"),
        many => format!("the secrets {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn facts(failed: Failed) -> Facts<'static> {
        Facts {
            failed,
            provider: "crm",
            source: "shop",
            route: "orders-to-crm",
            mapping: "order-to-crm@2",
            status: None,
            error: None,
            reason: "",
            excerpt: "",
            failing_paths: &[],
            attempts: 1,
            breaker_open: false,
            secrets: &[],
        }
    }

    fn letter(category: FailureCategory) -> Facts<'static> {
        facts(Failed::DeadLetter {
            sequence: 42,
            category,
        })
    }

    fn attempt(outcome: Outcome) -> Facts<'static> {
        facts(Failed::Attempt {
            outcome,
            dead_letter: None,
        })
    }

    fn answer(mut facts: Facts<'static>, status: Option<u16>, error: ErrorKind) -> Facts<'static> {
        facts.status = status;
        facts.error = Some(error);
        facts
    }

    /// Every category and outcome, each with the verdict it must get and what its
    /// explanation must say, in order, ending with the next step.
    #[test]
    fn every_category_and_outcome_gets_its_verdict_and_next_step() {
        let token = [String::from("CRM_TOKEN")];
        let paths = [String::from("/total"), String::from("/items/0/sku")];
        let with_secret = |mut facts: Facts<'static>| {
            facts.secrets = Box::leak(Box::new(token.clone()));
            facts
        };
        let with = |mut facts: Facts<'static>, reason: &'static str, excerpt: &'static str| {
            facts.reason = reason;
            facts.excerpt = excerpt;
            facts
        };
        let attempts = |mut facts: Facts<'static>, attempts: u32, breaker_open: bool| {
            facts.attempts = attempts;
            facts.breaker_open = breaker_open;
            facts
        };
        let mut schema = letter(FailureCategory::Schema);
        schema.provider = "";
        schema.failing_paths = Box::leak(Box::new(paths.clone()));
        let mut contract = letter(FailureCategory::Contract);
        contract.failing_paths = Box::leak(Box::new(paths.clone()));
        let mut rejected_attempt =
            answer(attempt(Outcome::Rejected), Some(422), ErrorKind::Http4xx);
        rejected_attempt.failed = Failed::Attempt {
            outcome: Outcome::Rejected,
            dead_letter: Some(7),
        };
        let cases: Vec<(&str, Facts<'static>, Verdict, &[&str])> = vec![
            (
                "schema",
                with(schema, "/total: \"x\" is not of type \"number\"", ""),
                Verdict::NeedsHuman,
                &[
                    "source shop at /total, /items/0/sku",
                    "is not of type",
                    "Next:",
                    "`syctl dlq replay 42`.",
                ],
            ),
            (
                "mapping",
                with(
                    letter(FailureCategory::Mapping),
                    "function call error for \"parse_timestamp\" at (12:40)",
                    "",
                ),
                Verdict::NeedsConfig,
                &[
                    "Mapping order-to-crm@2 failed",
                    "parse_timestamp",
                    "`syctl mapping test order-to-crm@2 --sample event.json`",
                    "(`syctl dlq show 42` prints it)",
                    "`syctl dlq replay 42`.",
                ],
            ),
            (
                "contract",
                with(contract, "output /total: is required", ""),
                Verdict::NeedsConfig,
                &[
                    "order-to-crm@2's output",
                    "at /total, /items/0/sku",
                    "`syctl mapping test order-to-crm@2",
                    "`syctl dlq replay 42`.",
                ],
            ),
            (
                "filter",
                with(letter(FailureCategory::Filter), "undefined path .x", ""),
                Verdict::NeedsConfig,
                &[
                    "filter of route orders-to-crm",
                    "`syctl describe route orders-to-crm`",
                    "`syctl dlq replay 42`.",
                ],
            ),
            (
                "rejected 422",
                with(
                    answer(
                        letter(FailureCategory::Rejected),
                        Some(422),
                        ErrorKind::Http4xx,
                    ),
                    "",
                    "{\"error\":\"email is invalid\"}",
                ),
                Verdict::NeedsHuman,
                &[
                    "Provider crm refused this delivery (HTTP 422",
                    "email is invalid",
                    "a person has to see",
                    "`syctl mapping test order-to-crm@2 --sample event.json`",
                    "source shop",
                    "`syctl dlq replay 42`.",
                ],
            ),
            (
                "rejected 401 with a secret",
                with_secret(answer(
                    letter(FailureCategory::Rejected),
                    Some(401),
                    ErrorKind::Http4xx,
                )),
                Verdict::NeedsConfig,
                &[
                    "HTTP 401",
                    "the secret CRM_TOKEN was refused",
                    "rotate it",
                    "`syctl dlq replay --all --provider crm --category rejected`.",
                ],
            ),
            (
                "rejected 403 with a secret",
                with_secret(answer(
                    letter(FailureCategory::Rejected),
                    Some(403),
                    ErrorKind::Http4xx,
                )),
                Verdict::NeedsConfig,
                &[
                    "HTTP 403",
                    "CRM_TOKEN was refused, or lacks a permission",
                    "--category rejected`.",
                ],
            ),
            (
                "rejected 401 without credentials",
                answer(
                    letter(FailureCategory::Rejected),
                    Some(401),
                    ErrorKind::Http4xx,
                ),
                Verdict::NeedsConfig,
                &[
                    "sends no credentials",
                    "add `auth` to provider crm",
                    "--category rejected`.",
                ],
            ),
            (
                "rejected 404",
                answer(
                    letter(FailureCategory::Rejected),
                    Some(404),
                    ErrorKind::Http4xx,
                ),
                Verdict::NeedsConfig,
                &[
                    "HTTP 404",
                    "`syctl describe provider crm`",
                    "`url`",
                    "--category rejected`.",
                ],
            ),
            (
                "rejected by the outbound guard",
                with(
                    answer(letter(FailureCategory::Rejected), None, ErrorKind::Blocked),
                    "10.0.0.5 is a private address",
                    "",
                ),
                Verdict::NeedsConfig,
                &[
                    "outbound guard",
                    "10.0.0.5",
                    "`outbound.allow`",
                    "--category rejected`.",
                ],
            ),
            (
                "exhausted on 503, breaker closed",
                attempts(
                    answer(
                        letter(FailureCategory::Exhausted),
                        Some(503),
                        ErrorKind::Http5xx,
                    ),
                    8,
                    false,
                ),
                Verdict::RetryWillFix,
                &[
                    "all 8 attempts (the last: HTTP 503)",
                    "Nothing is wrong with the event",
                    "Next: `syctl dlq replay --all --provider crm --category exhausted`.",
                ],
            ),
            (
                "exhausted on timeouts, breaker open",
                attempts(
                    answer(letter(FailureCategory::Exhausted), None, ErrorKind::Timeout),
                    8,
                    true,
                ),
                Verdict::RetryWillFix,
                &[
                    "no answer within its timeout",
                    "breaker is open",
                    "`syctl providers status crm` shows it closed",
                    "--category exhausted`.",
                ],
            ),
            (
                "exhausted on connection errors",
                attempts(
                    answer(letter(FailureCategory::Exhausted), None, ErrorKind::Connect),
                    3,
                    false,
                ),
                Verdict::RetryWillFix,
                &["the connection could not be made", "--category exhausted`."],
            ),
            (
                "exhausted without credentials",
                with_secret(answer(
                    letter(FailureCategory::Exhausted),
                    None,
                    ErrorKind::Credentials,
                )),
                Verdict::NeedsConfig,
                &[
                    "Nothing was sent",
                    "the secret CRM_TOKEN readable",
                    "--category exhausted`.",
                ],
            ),
            (
                "exhausted on TLS",
                attempts(
                    answer(letter(FailureCategory::Exhausted), None, ErrorKind::Tls),
                    3,
                    false,
                ),
                Verdict::NeedsConfig,
                &[
                    "TLS handshake",
                    "all 3 attempts",
                    "`tls` settings",
                    "--category exhausted`.",
                ],
            ),
            (
                "an attempt to be retried",
                attempts(
                    answer(attempt(Outcome::Retry), Some(502), ErrorKind::Http5xx),
                    2,
                    false,
                ),
                Verdict::RetryWillFix,
                &[
                    "Attempt 2 to provider crm failed (HTTP 502)",
                    "tries again",
                    "`syctl providers status crm`",
                ],
            ),
            (
                "an attempt deferred",
                answer(attempt(Outcome::Deferred), Some(429), ErrorKind::Http429),
                Verdict::RetryWillFix,
                &[
                    "asked for a pause (HTTP 429)",
                    "without spending an attempt",
                    "Next: nothing to do.",
                ],
            ),
            (
                "a rejected attempt whose dead letter is known",
                rejected_attempt,
                Verdict::NeedsHuman,
                &["HTTP 422", "`syctl dlq replay 7`."],
            ),
            (
                "an exhausted attempt",
                answer(attempt(Outcome::Exhausted), Some(500), ErrorKind::Http5xx),
                Verdict::RetryWillFix,
                &[
                    "failed its only attempt (the last: HTTP 500)",
                    "--provider crm --category exhausted`.",
                ],
            ),
        ];
        let (mut verdicts, mut categories, mut outcomes) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        for (name, facts, verdict, says) in cases {
            let explanation = explain(&facts).unwrap_or_else(|| panic!("{name}: no explanation"));
            assert_eq!(explanation.verdict, verdict, "{name}: {}", explanation.text);
            let mut rest = explanation.text.as_str();
            for part in says {
                let at = rest.find(part).unwrap_or_else(|| {
                    panic!("{name}: {part:?} not in order in {:?}", explanation.text)
                });
                rest = &rest[at + part.len()..];
            }
            assert!(
                explanation.text.ends_with(".") && explanation.text.contains("Next: "),
                "{name}: {}",
                explanation.text
            );
            verdicts.insert(verdict);
            match facts.failed {
                Failed::DeadLetter { category, .. } => categories.insert(category),
                Failed::Attempt { outcome, .. } => outcomes.insert(outcome),
            };
        }
        assert!(explain(&attempt(Outcome::Delivered)).is_none());
        outcomes.insert(Outcome::Delivered);
        assert_eq!(verdicts.len(), Verdict::ALL.len(), "every verdict is given");
        assert_eq!(
            categories.len(),
            FailureCategory::ALL.len(),
            "a case per category"
        );
        assert_eq!(outcomes.len(), Outcome::ALL.len(), "a case per outcome");
    }

    #[test]
    fn a_dead_letter_without_its_error_kind_is_judged_by_its_status() {
        let mut old = letter(FailureCategory::Rejected);
        old.status = Some(404);
        assert_eq!(explain(&old).unwrap().verdict, Verdict::NeedsConfig);
        old.status = Some(400);
        assert_eq!(explain(&old).unwrap().verdict, Verdict::NeedsHuman);
    }

    #[test]
    fn the_status_is_not_said_twice() {
        let mut facts = answer(
            letter(FailureCategory::Exhausted),
            Some(503),
            ErrorKind::Http5xx,
        );
        facts.attempts = 5;
        facts.reason = "HTTP 503";
        let text = explain(&facts).unwrap().text;
        assert!(text.contains("(the last: HTTP 503)"), "{text}");
        facts.status = Some(308);
        facts.failed = Failed::DeadLetter {
            sequence: 1,
            category: FailureCategory::Rejected,
        };
        facts.reason = "HTTP 308 (redirect to https://crm.example/v2; update the provider URL)";
        let text = explain(&facts).unwrap().text;
        assert!(
            text.contains("HTTP 308 (redirect to https://crm.example/v2; update"),
            "{text}"
        );
    }

    #[test]
    fn a_long_answer_is_cut() {
        let long = "x".repeat(1000);
        let mut facts = answer(
            letter(FailureCategory::Rejected),
            Some(400),
            ErrorKind::Http4xx,
        );
        facts.excerpt = Box::leak(long.into_boxed_str());
        let text = explain(&facts).unwrap().text;
        assert!(
            text.contains(&format!("\"{}…\"", "x".repeat(EXCERPT))),
            "{text}"
        );
        assert!(text.len() < 800, "{text}");
    }
}
