//! `syctl dlq`: list, show, replay and purge dead letters.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switchyard_proto::{
    DeadLetter, DeadLetterFilter, DeadLetterProgress, DeadLetterSelection, GetDeadLetterRequest,
    ListDeadLettersRequest, PurgeDeadLettersRequest, ReplayDeadLettersRequest,
    dead_letter_service_client::DeadLetterServiceClient,
};

use crate::{
    connect::Connection,
    exit::{Failure, usage},
    flags::time_flag,
    output::{Format, Output, Text, body, rfc3339},
    progress::{bar, follow},
};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page: Option<String>,
    },
    /// One dead letter with its headers and body.
    Show {
        /// Its sequence (the first column of `dlq list`).
        sequence: u64,
    },
    /// Send dead letters on again; those that still fail stay.
    Replay {
        /// These sequences.
        sequences: Vec<u64>,
        /// Every dead letter the filter matches.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Report what would happen without sending or removing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove dead letters for good.
    Purge {
        /// These sequences.
        sequences: Vec<u64>,
        /// Every dead letter the filter matches.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Confirm: purged dead letters cannot be brought back.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
pub struct FilterArgs {
    /// Of this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Of events from this source.
    #[arg(long)]
    source: Option<String>,
    /// rejected, exhausted, mapping, contract, filter or schema.
    #[arg(long)]
    category: Option<String>,
    /// From this route.
    #[arg(long)]
    route: Option<String>,
    /// Dead-lettered since: an RFC 3339 time or a duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before, in the same forms.
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn to_proto(&self) -> Result<DeadLetterFilter, Failure> {
        Ok(DeadLetterFilter {
            provider: self.provider.clone().unwrap_or_default(),
            source: self.source.clone().unwrap_or_default(),
            category: self.category.clone().unwrap_or_default(),
            route: self.route.clone().unwrap_or_default(),
            since: self
                .since
                .as_deref()
                .map(|t| time_flag("--since", t))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| time_flag("--until", t))
                .transpose()?,
        })
    }
}

fn selection(
    sequences: Vec<u64>,
    all: bool,
    filter: &FilterArgs,
) -> Result<DeadLetterSelection, Failure> {
    if sequences.is_empty() && !all {
        return Err(usage(
            "name dead letters by sequence, or give --all (with filters to narrow it)",
        ));
    }
    Ok(DeadLetterSelection {
        sequences,
        filter: Some(filter.to_proto()?),
        all,
    })
}

pub async fn run(
    command: DlqCommand,
    connection: Connection,
    format: Format,
) -> Result<Output, Failure> {
    let mut client = DeadLetterServiceClient::new(connection);
    match command {
        DlqCommand::List {
            filter,
            limit,
            page,
        } => {
            let response = client
                .list_dead_letters(ListDeadLettersRequest {
                    filter: Some(filter.to_proto()?),
                    page_size: limit,
                    page_token: page.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let mut text = Text::default();
            text.line(format_args!(
                "{:>6}  {:<20}  {:<12} {:<10} {:<14} {:<14} {:<36}  REASON",
                "SEQ", "DEAD-LETTERED", "PROVIDER", "CATEGORY", "VERDICT", "ROUTE", "EVENT"
            ));
            for letter in &response.dead_letters {
                let provider = if letter.provider.is_empty() {
                    format!("({})", letter.source)
                } else {
                    letter.provider.clone()
                };
                text.line(format_args!(
                    "{:>6}  {:<20}  {:<12} {:<10} {:<14} {:<14} {:<36}  {}",
                    letter.sequence,
                    rfc3339(letter.dead_lettered_at.as_ref()).unwrap_or_default(),
                    provider,
                    letter.category,
                    letter.verdict,
                    letter.route,
                    letter.event_id,
                    letter.reason
                ));
            }
            if !response.next_page_token.is_empty() {
                text.line(format_args!("more: --page {}", response.next_page_token));
            }
            Ok(Output::with_table(
                json!({
                    "dead_letters": response.dead_letters.iter().map(to_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }),
                text,
            ))
        }
        DlqCommand::Show { sequence } => {
            let letter = client
                .get_dead_letter(GetDeadLetterRequest { sequence })
                .await?
                .into_inner();
            let mut shown = to_json(&letter);
            let headers: std::collections::BTreeMap<_, _> = letter.headers.iter().collect();
            shown["headers"] = json!(headers);
            shown["body"] = body(&letter.body);
            // People read a dead letter as YAML: headers and body in full.
            Ok(Output::new(shown))
        }
        DlqCommand::Replay {
            sequences,
            all,
            filter,
            dry_run,
        } => {
            let stream = client
                .replay_dead_letters(ReplayDeadLettersRequest {
                    selection: Some(selection(sequences, all, &filter)?),
                    dry_run,
                })
                .await?
                .into_inner();
            let last = follow(stream, format, |progress: &DeadLetterProgress| {
                format!(
                    "{} dead letters, {} replayed",
                    bar(progress.scanned, progress.total),
                    progress.replayed
                )
            })
            .await?;
            let output = report(&last);
            Ok(if last.failed > 0 {
                output.check_failed(format!(
                    "{} dead letters still fail and were kept",
                    last.failed
                ))
            } else {
                output
            })
        }
        DlqCommand::Purge {
            sequences,
            all,
            filter,
            yes,
        } => {
            if !yes {
                return Err(usage("purging cannot be undone: add --yes"));
            }
            let response = client
                .purge_dead_letters(PurgeDeadLettersRequest {
                    selection: Some(selection(sequences, all, &filter)?),
                })
                .await?
                .into_inner();
            let mut text = Text::default();
            text.line(format_args!("purged {} dead letters", response.purged));
            Ok(Output::with_table(json!({"purged": response.purged}), text))
        }
    }
}

fn to_json(letter: &DeadLetter) -> Value {
    json!({
        "sequence": letter.sequence,
        "subject": letter.subject,
        "provider": letter.provider,
        "source": letter.source,
        "event_type": letter.event_type,
        "event_id": letter.event_id,
        "route": letter.route,
        "mapping": letter.mapping,
        "category": letter.category,
        "reason": letter.reason,
        "verdict": letter.verdict,
        "explanation": letter.explanation,
        "attempts": letter.attempts,
        "last_status": (letter.last_status != 0).then_some(letter.last_status),
        "response_excerpt": letter.response_excerpt,
        "failing_paths": letter.failing_paths,
        "dead_lettered_at": rfc3339(letter.dead_lettered_at.as_ref()),
        "received_at": rfc3339(letter.received_at.as_ref()),
        "size": letter.size,
    })
}

fn report(progress: &DeadLetterProgress) -> Output {
    let verb = if progress.dry_run {
        "would be replayed"
    } else {
        "replayed"
    };
    let mut text = Text::default();
    text.line(format_args!("{} dead letters looked at", progress.scanned));
    text.line(format_args!("{:>6} {verb}", progress.replayed));
    text.line(format_args!(
        "{:>6} already delivered (removed)",
        progress.already_delivered
    ));
    text.line(format_args!("{:>6} still failing (kept)", progress.failed));
    for failure in &progress.failures {
        text.line(format_args!("       {failure}"));
    }
    Output::with_table(
        json!({
            "replay_id": progress.replay_id,
            "scanned": progress.scanned,
            "replayed": progress.replayed,
            "already_delivered": progress.already_delivered,
            "failed": progress.failed,
            "failures": progress.failures,
            "dry_run": progress.dry_run,
        }),
        text,
    )
}
