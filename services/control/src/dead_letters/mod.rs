//! `switchyard.v1.DeadLetterService`: list, show, replay and purge dead letters. The
//! queue is read in `queue` and replayed in `replayer`.

mod queue;
mod replayer;

use async_nats::jetstream;
use switchyard_core::{
    config::Scope,
    outcome::FailureCategory,
    verdict::{Explanation, Facts, Failed},
};
use tonic::{Request, Response, Status};

use self::{
    queue::{Criteria, DeadLetter, DeadLetters, MAX_PAGE, Selection},
    replayer::Progress,
};

use crate::{
    auth,
    explain::{Explainer, Session},
    proto::convert::timestamp_of,
    proto::{
        self, DeadLetterProgress, GetDeadLetterRequest, ListDeadLettersRequest,
        ListDeadLettersResponse, PurgeDeadLettersRequest, PurgeDeadLettersResponse,
        ReplayDeadLettersRequest, dead_letter_service_server::DeadLetterService,
    },
    replay::{ProgressStream, progress_stream, time},
};

/// Page size when the request gives none.
const DEFAULT_PAGE: usize = 50;

/// The dead-letter queue in stream DLQ.
#[derive(Clone)]
pub struct DeadLetterApi {
    queue: DeadLetters,
    explainer: Explainer,
}

impl DeadLetterApi {
    /// Serves the queue stored in `jetstream`, explaining each dead letter with
    /// `explainer`.
    pub fn new(jetstream: jetstream::Context, explainer: Explainer) -> Self {
        Self {
            queue: DeadLetters::new(jetstream),
            explainer,
        }
    }
}

/// The verdict on `letter` and its explanation; none for a letter whose category
/// header is missing or unknown.
async fn explain(
    session: &mut Session<'_>,
    letter: &DeadLetter,
) -> Result<Option<Explanation>, Status> {
    let Some(category) = letter.category else {
        return Ok(None);
    };
    session
        .explain(Facts {
            failed: Failed::DeadLetter {
                sequence: letter.sequence,
                category,
            },
            provider: &letter.provider,
            source: &letter.source,
            route: &letter.route,
            mapping: &letter.mapping,
            status: Some(letter.last_status).filter(|status| *status != 0),
            error: letter.error,
            reason: &letter.reason,
            excerpt: &letter.response_excerpt,
            failing_paths: &letter.failing_paths,
            attempts: letter.attempts,
            breaker_open: false,
            secrets: &[],
        })
        .await
}

/// The criteria of a request's filter; empty fields match any.
fn criteria(filter: Option<proto::DeadLetterFilter>) -> Result<Criteria, Status> {
    let filter = filter.unwrap_or_default();
    let given = |text: String| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let category = given(filter.category)
        .map(|category| category.parse::<FailureCategory>())
        .transpose()
        .map_err(|err| Status::invalid_argument(format!("filter.category: {err}")))?;
    let since = time("filter.since", filter.since)?;
    let until = time("filter.until", filter.until)?;
    if let (Some(since), Some(until)) = (since, until)
        && until < since
    {
        return Err(Status::invalid_argument(
            "filter.until is before filter.since",
        ));
    }
    Ok(Criteria {
        provider: given(filter.provider),
        source: given(filter.source),
        category,
        route: given(filter.route),
        since,
        until,
    })
}

fn selection(selection: Option<proto::DeadLetterSelection>) -> Result<Selection, Status> {
    let selection = selection.unwrap_or_default();
    Ok(Selection {
        sequences: selection.sequences,
        criteria: criteria(selection.filter)?,
        all: selection.all,
    })
}

fn to_proto(letter: DeadLetter, full: bool, explanation: Option<Explanation>) -> proto::DeadLetter {
    let received_at = proto::convert::timestamp(&letter.received_at);
    let (verdict, explanation) = explanation
        .map(|e| (e.verdict.to_string(), e.text))
        .unwrap_or_default();
    proto::DeadLetter {
        verdict,
        explanation,
        sequence: letter.sequence,
        subject: letter.subject,
        provider: letter.provider,
        source: letter.source,
        event_type: letter.event_type,
        event_id: letter.event_id,
        route: letter.route,
        mapping: letter.mapping,
        category: letter
            .category
            .map(|category| category.to_string())
            .unwrap_or_default(),
        reason: letter.reason,
        attempts: letter.attempts,
        last_status: u32::from(letter.last_status),
        response_excerpt: letter.response_excerpt,
        failing_paths: letter.failing_paths,
        dead_lettered_at: Some(timestamp_of(letter.dead_lettered_at)),
        received_at,
        size: letter.body.len() as u64,
        body: if full {
            letter.body.to_vec()
        } else {
            Vec::new()
        },
        headers: if full {
            letter.headers.into_iter().collect()
        } else {
            Default::default()
        },
    }
}

fn progress_to_proto(progress: Progress) -> DeadLetterProgress {
    DeadLetterProgress {
        replay_id: progress.replay_id,
        total: progress.total,
        scanned: progress.scanned,
        replayed: progress.replayed,
        already_delivered: progress.already_delivered,
        failed: progress.failed,
        failures: progress.failures,
        done: progress.done,
        dry_run: progress.dry_run,
    }
}

#[tonic::async_trait]
impl DeadLetterService for DeadLetterApi {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        auth::require(&request, Scope::Read, "ListDeadLetters")?;
        let request = request.into_inner();
        let criteria = criteria(request.filter)?;
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        };
        let from = match request.page_token.trim() {
            "" => 0,
            token => token.parse().map_err(|_| {
                Status::invalid_argument("page_token: not a token this API returned")
            })?,
        };
        let (page, next) = self.queue.list(&criteria, from, page_size).await?;
        let mut session = self.explainer.session();
        let mut dead_letters = Vec::with_capacity(page.len());
        for letter in page {
            let explanation = explain(&mut session, &letter).await?;
            dead_letters.push(to_proto(letter, false, explanation));
        }
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters,
            next_page_token: next
                .map(|sequence| sequence.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<proto::DeadLetter>, Status> {
        auth::require(&request, Scope::Read, "GetDeadLetter")?;
        let sequence = request.into_inner().sequence;
        let letter =
            self.queue.get(sequence).await?.ok_or_else(|| {
                Status::not_found(format!("no dead letter at sequence {sequence}"))
            })?;
        let explanation = explain(&mut self.explainer.session(), &letter).await?;
        Ok(Response::new(to_proto(letter, true, explanation)))
    }

    type ReplayDeadLettersStream = ProgressStream<DeadLetterProgress>;

    async fn replay_dead_letters(
        &self,
        request: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<Self::ReplayDeadLettersStream>, Status> {
        if request.get_ref().dry_run {
            auth::require(&request, Scope::Read, "a dry-run ReplayDeadLetters")?;
        } else {
            auth::require(&request, Scope::Operate, "ReplayDeadLetters")?;
        }
        let request = request.into_inner();
        let selection = selection(request.selection)?;
        let dry_run = request.dry_run;
        let queue = self.queue.clone();
        Ok(Response::new(progress_stream(
            move |progress| async move { queue.replay(&selection, dry_run, progress).await },
            progress_to_proto,
        )))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<PurgeDeadLettersRequest>,
    ) -> Result<Response<PurgeDeadLettersResponse>, Status> {
        auth::require(&request, Scope::Operate, "PurgeDeadLetters")?;
        let by = auth::caller(&request);
        let selection = selection(request.into_inner().selection)?;
        let purged = self.queue.purge(&selection).await?;
        tracing::warn!(purged, by, "dead letters purged");
        Ok(Response::new(PurgeDeadLettersResponse { purged }))
    }
}
