//! `syctl providers`: status, pause, resume and breaker reset.

use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_proto::{
    GetProviderStatusRequest, ListProviderStatusRequest, PauseProviderRequest, ProviderStatus,
    ResetBreakerRequest, ResumeProviderRequest, provider_service_client::ProviderServiceClient,
};

use crate::{
    connect::Connection,
    exit::Failure,
    output::{Output, Text, rfc3339},
};

#[derive(Subcommand)]
pub enum ProvidersCommand {
    /// Breaker, pause, rate limit, backlog, in flight, dead letters, last success and
    /// failure: of one provider, or of all.
    Status {
        /// The provider; every provider when omitted.
        provider: Option<String>,
    },
    /// Stop sending to a provider; messages wait and spend no attempts.
    Pause {
        provider: String,
        /// Why, shown in the status.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a pause.
    Resume { provider: String },
    /// Close the provider's circuit breaker now.
    Reset { provider: String },
}

pub async fn run(command: ProvidersCommand, connection: Connection) -> Result<Output, Failure> {
    let mut client = ProviderServiceClient::new(connection);
    let statuses = match command {
        ProvidersCommand::Status { provider: None } => {
            client
                .list_provider_status(ListProviderStatusRequest {})
                .await?
                .into_inner()
                .providers
        }
        ProvidersCommand::Status {
            provider: Some(provider),
        } => vec![
            client
                .get_provider_status(GetProviderStatusRequest { provider })
                .await?
                .into_inner(),
        ],
        ProvidersCommand::Pause { provider, reason } => vec![
            client
                .pause_provider(PauseProviderRequest { provider, reason })
                .await?
                .into_inner(),
        ],
        ProvidersCommand::Resume { provider } => vec![
            client
                .resume_provider(ResumeProviderRequest { provider })
                .await?
                .into_inner(),
        ],
        ProvidersCommand::Reset { provider } => vec![
            client
                .reset_breaker(ResetBreakerRequest { provider })
                .await?
                .into_inner(),
        ],
    };
    Ok(statuses_output(&statuses))
}

pub(crate) fn to_json(status: &ProviderStatus) -> Value {
    let unlimited = status.rate_per_second == 0.0;
    json!({
        "provider": status.provider,
        "active": status.active,
        "instance": status.instance,
        "breaker": breaker_name(status),
        "breaker_retry_at": rfc3339(status.breaker_retry_at.as_ref()),
        "paused": status.paused,
        "paused_reason": status.paused_reason,
        "paused_by": status.paused_by,
        "paused_at": rfc3339(status.paused_at.as_ref()),
        "rate_per_second": (!unlimited).then_some(status.rate_per_second),
        "burst": (!unlimited).then_some(status.burst),
        "tokens": (!unlimited).then_some(status.tokens),
        "provider_pause_until": rfc3339(status.provider_pause_until.as_ref()),
        "backlog": status.backlog,
        "in_flight": status.in_flight,
        "sending": status.sending,
        "dead_letters": status.dead_letters,
        "last_success": rfc3339(status.last_success.as_ref()),
        "last_failure": rfc3339(status.last_failure.as_ref()),
        "last_failure_reason": status.last_failure_reason,
    })
}

fn breaker_name(status: &ProviderStatus) -> &'static str {
    use switchyard_proto::BreakerState as B;
    match status.breaker() {
        B::Closed => "closed",
        B::Open => "open",
        B::HalfOpen => "half-open",
        B::Unspecified => "unknown",
    }
}

fn statuses_output(statuses: &[ProviderStatus]) -> Output {
    let mut text = Text::default();
    text.line(format_args!(
        "{:<20} {:<8} {:<10} {:<8} {:>8} {:>9} {:>6}  {:<20}  LAST FAILURE",
        "PROVIDER", "ACTIVE", "BREAKER", "PAUSED", "BACKLOG", "IN FLIGHT", "DLQ", "LAST SUCCESS"
    ));
    for status in statuses {
        let failure = match rfc3339(status.last_failure.as_ref()) {
            Some(at) => format!("{at} {}", status.last_failure_reason),
            None => "-".into(),
        };
        text.line(format_args!(
            "{:<20} {:<8} {:<10} {:<8} {:>8} {:>9} {:>6}  {:<20}  {failure}",
            status.provider,
            if status.active { "yes" } else { "no" },
            breaker_name(status),
            if status.paused { "yes" } else { "no" },
            status.backlog,
            status.in_flight,
            status.dead_letters,
            rfc3339(status.last_success.as_ref()).unwrap_or_else(|| "-".into()),
        ));
        if status.paused {
            text.line(format_args!(
                "  paused by {} at {}: {}",
                status.paused_by,
                rfc3339(status.paused_at.as_ref()).unwrap_or_default(),
                if status.paused_reason.is_empty() {
                    "(no reason given)"
                } else {
                    &status.paused_reason
                }
            ));
        }
    }
    Output::with_table(Value::Array(statuses.iter().map(to_json).collect()), text)
}
