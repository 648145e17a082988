//! `syctl replay`: re-run stored events through the current routes and mappings.

use clap::Args;
use serde_json::json;
use switchyard_proto::{ReplayProgress, ReplayRequest, replay_service_client::ReplayServiceClient};

use crate::{
    connect::Connection,
    exit::Failure,
    flags::{Bound, bound},
    output::{Format, Output, Text},
    progress::{bar, follow},
};

#[derive(Args)]
pub struct ReplayArgs {
    /// Replay the events of this source through every route that takes them.
    #[arg(long, required_unless_present = "route")]
    source: Option<String>,
    /// Replay only through this route.
    #[arg(long)]
    route: Option<String>,
    /// Start: an INGEST sequence number, an RFC 3339 time, or a duration ago (`2h`).
    #[arg(long)]
    from: Option<String>,
    /// End, in the same forms; the newest stored event when omitted.
    #[arg(long)]
    to: Option<String>,
    /// Also replay events already delivered; providers receive them again.
    #[arg(long)]
    redeliver: bool,
    /// Count what would happen without publishing anything.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(
    args: ReplayArgs,
    connection: Connection,
    format: Format,
) -> Result<Output, Failure> {
    let mut request = ReplayRequest {
        source: args.source.unwrap_or_default(),
        route: args.route.unwrap_or_default(),
        redeliver: args.redeliver,
        dry_run: args.dry_run,
        ..Default::default()
    };
    if let Some(from) = args.from {
        match bound("--from", &from)? {
            Bound::Sequence(sequence) => request.from_sequence = sequence,
            Bound::Time(time) => request.from_time = Some(time),
        }
    }
    if let Some(to) = args.to {
        match bound("--to", &to)? {
            Bound::Sequence(sequence) => request.to_sequence = sequence,
            Bound::Time(time) => request.to_time = Some(time),
        }
    }
    let stream = ReplayServiceClient::new(connection)
        .replay(request)
        .await?
        .into_inner();
    let last = follow(stream, format, |progress: &ReplayProgress| {
        format!(
            "{} events, {} published",
            bar(progress.scanned, progress.total),
            progress.published
        )
    })
    .await?;
    Ok(report(&last))
}

fn report(progress: &ReplayProgress) -> Output {
    let value = json!({
        "replay_id": progress.replay_id,
        "dry_run": progress.dry_run,
        "scanned": progress.scanned,
        "published": progress.published,
        "already_delivered": progress.already_delivered,
        "dead_lettered": progress.dead_lettered,
        "not_routed": progress.not_routed,
        "last_sequence": progress.last_sequence,
    });
    let published = if progress.dry_run {
        "would publish"
    } else {
        "published"
    };
    let mut text = Text::default();
    text.line(format_args!("replay {}", progress.replay_id));
    text.line(format_args!("  events read        {}", progress.scanned));
    text.line(format_args!("  {published:<19}{}", progress.published));
    text.line(format_args!(
        "  already delivered  {} (left out; --redeliver sends them again)",
        progress.already_delivered
    ));
    text.line(format_args!(
        "  dead-lettered      {}",
        progress.dead_lettered
    ));
    text.line(format_args!("  not routed         {}", progress.not_routed));
    if progress.last_sequence > 0 {
        text.line(format_args!(
            "  last sequence      {}",
            progress.last_sequence
        ));
    }
    Output::with_table(value, text)
}
