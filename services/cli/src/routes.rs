//! `syctl routes`: a route's canary — each version's results, promote, roll back.

use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_proto::{
    CanaryActionRequest, CanaryStatus, GetCanaryRequest, VersionResults,
    route_service_client::RouteServiceClient,
};

use crate::{
    connect::Connection,
    exit::Failure,
    output::{Output, Text, rfc3339},
};

#[derive(Subcommand)]
pub enum RoutesCommand {
    /// The route's canary: versions, share, state and each version's results.
    Canary { route: String },
    /// Make the route pin its canary's version (changes the catalog).
    Promote {
        route: String,
        /// Why, kept with the canary's record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop the canary taking events; the route's own version takes them all.
    Rollback {
        route: String,
        /// Why, kept with the canary's record.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(command: RoutesCommand, connection: Connection) -> Result<Output, Failure> {
    let mut client = RouteServiceClient::new(connection);
    let status = match command {
        RoutesCommand::Canary { route } => client.get_canary(GetCanaryRequest { route }).await?,
        RoutesCommand::Promote { route, reason } => {
            client
                .promote_canary(CanaryActionRequest { route, reason })
                .await?
        }
        RoutesCommand::Rollback { route, reason } => {
            client
                .rollback_canary(CanaryActionRequest { route, reason })
                .await?
        }
    }
    .into_inner();
    Ok(output(&status))
}

fn results_json(results: Option<&VersionResults>) -> Value {
    let Some(r) = results else {
        return Value::Null;
    };
    json!({
        "mapping": r.mapping,
        "delivered": r.delivered,
        "mapping_errors": r.mapping_errors,
        "contract_violations": r.contract_violations,
        "rejected": r.rejected,
        "exhausted": r.exhausted,
        "retries": r.retries,
        "failed_percent": r.failed_percent,
        "retries_per_delivery": r.retries_per_delivery,
    })
}

/// The canary's status as JSON (also in `syctl describe route`).
pub(crate) fn to_json(status: &CanaryStatus) -> Value {
    json!({
        "route": status.route,
        "stable": status.stable,
        "canary": status.canary,
        "percent": status.percent,
        "by": status.by,
        "state": status.state,
        "reason": status.reason,
        "since": rfc3339(status.since.as_ref()),
        "changed_at": rfc3339(status.changed_at.as_ref()),
        "min_events": status.min_events,
        "margin": status.margin,
        "stable_results": results_json(status.stable_results.as_ref()),
        "canary_results": results_json(status.canary_results.as_ref()),
    })
}

fn output(status: &CanaryStatus) -> Output {
    let value = to_json(status);
    let mut text = Text::default();
    text.line(format_args!(
        "route {}: canary {} ({}% by {}) beside {}: {}",
        status.route, status.canary, status.percent, status.by, status.stable, status.state
    ));
    if !status.reason.is_empty() {
        text.line(format_args!("  {}", status.reason));
    }
    text.line(format_args!(
        "  since {}; judged after {} events each, margin {} points",
        rfc3339(status.since.as_ref()).unwrap_or_default(),
        status.min_events,
        status.margin
    ));
    text.blank();
    text.line(format_args!(
        "  {:<8} {:<28} {:>9} {:>7} {:>8} {:>8} {:>9} {:>7} {:>7}  {:>9}",
        "VERSION",
        "MAPPING",
        "DELIVERED",
        "MAPPING",
        "CONTRACT",
        "REJECTED",
        "EXHAUSTED",
        "RETRIES",
        "FAILED",
        "RETRIES/EV"
    ));
    for (version, results) in [
        ("stable", status.stable_results.as_ref()),
        ("canary", status.canary_results.as_ref()),
    ] {
        if let Some(r) = results {
            text.line(format_args!(
                "  {:<8} {:<28} {:>9} {:>7} {:>8} {:>8} {:>9} {:>7} {:>6.1}%  {:>9.2}",
                version,
                r.mapping,
                r.delivered,
                r.mapping_errors,
                r.contract_violations,
                r.rejected,
                r.exhausted,
                r.retries,
                r.failed_percent,
                r.retries_per_delivery
            ));
        }
    }
    Output::with_table(value, text)
}
