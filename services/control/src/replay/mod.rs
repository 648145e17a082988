//! `switchyard.v1.ReplayService`: re-running stored events, with progress. The
//! replay itself is in `run`; the progress stream here serves dead-letter replays too.

mod run;

use std::pin::Pin;

use async_nats::jetstream;
use futures::Stream;
use switchyard_core::config::Scope;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use self::run::Progress;
use crate::{
    auth,
    error::ApiError,
    proto::{ReplayProgress, ReplayRequest, replay_service_server::ReplayService},
};

/// Replays over the INGEST stream.
#[derive(Clone)]
pub struct ReplayApi {
    jetstream: jetstream::Context,
}

impl ReplayApi {
    /// Replays events stored in `jetstream`.
    pub fn new(jetstream: jetstream::Context) -> Self {
        Self { jetstream }
    }
}

fn to_proto(progress: Progress) -> ReplayProgress {
    ReplayProgress {
        replay_id: progress.replay_id,
        scanned: progress.scanned,
        total: progress.total,
        published: progress.published,
        already_delivered: progress.already_delivered,
        dead_lettered: progress.dead_lettered,
        not_routed: progress.not_routed,
        last_sequence: progress.last_sequence,
        done: progress.done,
        dry_run: progress.dry_run,
    }
}

pub(crate) fn time(
    field: &str,
    timestamp: Option<prost_types::Timestamp>,
) -> Result<Option<time::OffsetDateTime>, Status> {
    let Some(timestamp) = timestamp else {
        return Ok(None);
    };
    let nanos = i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(Some)
        .map_err(|err| Status::invalid_argument(format!("{field}: {err}")))
}

/// A server stream of progress reports.
pub(crate) type ProgressStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ReplayService for ReplayApi {
    type ReplayStream = ProgressStream<ReplayProgress>;

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        if request.get_ref().dry_run {
            auth::require(&request, Scope::Read, "a dry-run Replay")?;
        } else {
            auth::require(&request, Scope::Operate, "Replay")?;
        }
        let request = request.into_inner();
        let request = run::Request {
            source: request.source,
            route: request.route,
            from_sequence: request.from_sequence,
            to_sequence: request.to_sequence,
            from_time: time("from_time", request.from_time)?,
            to_time: time("to_time", request.to_time)?,
            redeliver: request.redeliver,
            dry_run: request.dry_run,
        };
        let jetstream = self.jetstream.clone();
        Ok(Response::new(progress_stream(
            move |progress| async move { run::replay(&jetstream, request, progress).await },
            to_proto,
        )))
    }
}

/// How often a long run reports its progress.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The progress reports of one long run (a replay or a dead-letter replay): at most
/// one per [`REPORT_EVERY`] while it runs, and its final state at the end.
pub(crate) struct Reporter<P> {
    progress: mpsc::Sender<P>,
    last: std::time::Instant,
}

impl<P: Clone> Reporter<P> {
    /// Reports on `progress`.
    pub(crate) fn new(progress: mpsc::Sender<P>) -> Self {
        Self {
            progress,
            last: std::time::Instant::now(),
        }
    }

    /// Reports `state` when the last report is old enough; [`ApiError::Cancelled`]
    /// when nobody listens any more, which stops the run.
    pub(crate) async fn tick(&mut self, state: &P) -> Result<(), ApiError> {
        if self.last.elapsed() < REPORT_EVERY {
            return Ok(());
        }
        self.last = std::time::Instant::now();
        self.progress
            .send(state.clone())
            .await
            .map_err(|_| ApiError::Cancelled)
    }

    /// Reports the final state. The caller may already be gone; the run is complete
    /// all the same.
    pub(crate) async fn finish(&self, state: &P) {
        let _ = self.progress.send(state.clone()).await;
    }
}

/// Runs `run` in its own task and streams the progress it reports, converted by
/// `convert`, ending with its error if it fails. When the caller goes away, the run
/// is dropped and stops.
pub(crate) fn progress_stream<P, T, F, Fut>(run: F, convert: fn(P) -> T) -> ProgressStream<T>
where
    P: Send + 'static,
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<P>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<P, ApiError>> + Send,
{
    let (progress_tx, mut progress_rx) = mpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let run = run(progress_tx);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                Some(progress) = progress_rx.recv() => {
                    if out_tx.send(Ok(convert(progress))).await.is_err() {
                        // The caller left; dropping `run` stops it.
                        return;
                    }
                }
                result = &mut run => break result,
            }
        };
        while let Ok(progress) = progress_rx.try_recv() {
            let _ = out_tx.send(Ok(convert(progress))).await;
        }
        if let Err(err) = result {
            let _ = out_tx.send(Err(err.into())).await;
        }
    });
    let stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Box::pin(stream)
}
