//! `syctl dlq`: list, show, replay and purge dead letters.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switchyard_proto::{
    DeadLetter, DeadLetterFilter, DeadLetterProgress, DeadLetterSelection, GetDeadLetterRequest,
    ListDeadLettersRequest, PurgeDeadLettersRequest, ReplayDeadLettersRequest,
    dead_letter_service_client::DeadLetterServiceClient,
};

use crate::{Connection, Failure, Format, bar, print_value, rfc3339, time_flag, usage};

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
) -> Result<(), Failure> {
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
            if format == Format::Table {
                println!(
                    "{:>6}  {:<20}  {:<12} {:<10} {:<14} {:<36}  REASON",
                    "SEQ", "DEAD-LETTERED", "PROVIDER", "CATEGORY", "ROUTE", "EVENT"
                );
                for letter in &response.dead_letters {
                    let provider = if letter.provider.is_empty() {
                        format!("({})", letter.source)
                    } else {
                        letter.provider.clone()
                    };
                    println!(
                        "{:>6}  {:<20}  {:<12} {:<10} {:<14} {:<36}  {}",
                        letter.sequence,
                        rfc3339(letter.dead_lettered_at.as_ref()).unwrap_or_default(),
                        provider,
                        letter.category,
                        letter.route,
                        letter.event_id,
                        letter.reason
                    );
                }
                if !response.next_page_token.is_empty() {
                    println!("more: --page {}", response.next_page_token);
                }
            } else {
                print_value(
                    format,
                    &json!({
                        "dead_letters": response.dead_letters.iter().map(to_json).collect::<Vec<_>>(),
                        "next_page_token": response.next_page_token,
                    }),
                );
            }
        }
        DlqCommand::Show { sequence } => {
            let letter = client
                .get_dead_letter(GetDeadLetterRequest { sequence })
                .await?
                .into_inner();
            let mut shown = to_json(&letter);
            let mut headers: Vec<_> = letter.headers.iter().collect();
            headers.sort();
            shown["headers"] = json!(
                headers
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            );
            shown["body"] = match serde_json::from_slice::<Value>(&letter.body) {
                Ok(body) => body,
                Err(_) => Value::String(String::from_utf8_lossy(&letter.body).into_owned()),
            };
            let format = if format == Format::Table {
                Format::Yaml
            } else {
                format
            };
            print_value(format, &shown);
        }
        DlqCommand::Replay {
            sequences,
            all,
            filter,
            dry_run,
        } => {
            let mut stream = client
                .replay_dead_letters(ReplayDeadLettersRequest {
                    selection: Some(selection(sequences, all, &filter)?),
                    dry_run,
                })
                .await?
                .into_inner();
            let show_bar =
                format == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = None;
            while let Some(progress) = stream.message().await? {
                if show_bar {
                    eprint!(
                        "\r{} dead letters, {} replayed",
                        bar(progress.scanned, progress.total),
                        progress.replayed
                    );
                }
                last = Some(progress);
            }
            if show_bar {
                eprintln!();
            }
            let last = last.ok_or_else(|| Failure {
                message: "the replay ended without a result".into(),
                code: 1,
            })?;
            print_progress(format, &last);
            if last.failed > 0 {
                return Err(Failure {
                    message: format!("{} dead letters still fail and were kept", last.failed),
                    code: 4,
                });
            }
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
            if format == Format::Table {
                println!("purged {} dead letters", response.purged);
            } else {
                print_value(format, &json!({"purged": response.purged}));
            }
        }
    }
    Ok(())
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
        "attempts": letter.attempts,
        "last_status": (letter.last_status != 0).then_some(letter.last_status),
        "response_excerpt": letter.response_excerpt,
        "failing_paths": letter.failing_paths,
        "dead_lettered_at": rfc3339(letter.dead_lettered_at.as_ref()),
        "received_at": rfc3339(letter.received_at.as_ref()),
        "size": letter.size,
    })
}

fn print_progress(format: Format, progress: &DeadLetterProgress) {
    if format == Format::Table {
        let verb = if progress.dry_run {
            "would be replayed"
        } else {
            "replayed"
        };
        println!("{} dead letters looked at", progress.scanned);
        println!("{:>6} {verb}", progress.replayed);
        println!(
            "{:>6} already delivered (removed)",
            progress.already_delivered
        );
        println!("{:>6} still failing (kept)", progress.failed);
        for failure in &progress.failures {
            println!("       {failure}");
        }
        return;
    }
    print_value(
        format,
        &json!({
            "replay_id": progress.replay_id,
            "scanned": progress.scanned,
            "replayed": progress.replayed,
            "already_delivered": progress.already_delivered,
            "failed": progress.failed,
            "failures": progress.failures,
            "dry_run": progress.dry_run,
        }),
    );
}
