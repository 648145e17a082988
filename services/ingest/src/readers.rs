//! Sources that ingest reads itself — polled HTTP APIs, outbox tables — each run by
//! one task per source, kept current as the catalog changes: a reader whose settings
//! changed is restarted, a removed one stops. Each task holds its source's lease, so
//! one replica reads a source at a time.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use switchyard_core::{config::Settings, lease, operator, shutdown::Shutdown};

use crate::{Ingest, postgres::Fault, sources::Ready};

/// Runs `run(state, source, setup, stop, instance)` for every source that `setup_of`
/// gives a setup, restarting it when `same` says its setup changed. A reader that
/// fails stops the service (its error is logged with the source).
pub(crate) fn supervise<S, Run, Fut>(
    state: Arc<Ingest>,
    settings: &Settings,
    shutdown: &Shutdown,
    what: &'static str,
    setup_of: fn(&Ready) -> Option<Arc<S>>,
    same: fn(&S, &S) -> bool,
    run: Run,
) where
    S: Send + Sync + 'static,
    Run: Fn(Arc<Ingest>, String, Arc<S>, Shutdown, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), switchyard_core::Error>> + Send + 'static,
{
    let instance = settings
        .delivery
        .instance
        .clone()
        .unwrap_or_else(lease::default_instance);
    let scope = shutdown.clone();
    shutdown.spawn(what, async move {
        let mut sources = state.sources.clone();
        let mut running: HashMap<String, (Arc<S>, Shutdown, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        loop {
            let wanted: HashMap<String, Arc<S>> = sources
                .borrow_and_update()
                .ready()
                .filter_map(|ready| Some((ready.config.name.clone(), setup_of(ready)?)))
                .collect();
            let stale: Vec<String> = running
                .iter()
                .filter(|(name, (setup, _, _))| {
                    wanted.get(*name).is_none_or(|now| !same(now, setup))
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in stale {
                let (_, stop, task) = running.remove(&name).expect("listed above");
                stop.trigger();
                let _ = task.await;
                tracing::info!(source = name, "{what} stopped");
            }
            for (name, setup) in wanted {
                if running.contains_key(&name) {
                    continue;
                }
                let stop = scope.child();
                let reader = run(
                    state.clone(),
                    name.clone(),
                    setup.clone(),
                    stop.clone(),
                    instance.clone(),
                );
                let (scope, source) = (scope.clone(), name.clone());
                let task = tokio::spawn(async move {
                    if let Err(err) = reader.await {
                        tracing::error!(source, error = %err, "{what} failed");
                        scope.trigger();
                    }
                });
                running.insert(name, (setup, stop, task));
            }
            tokio::select! {
                changed = sources.changed() => if changed.is_err() { break },
                () = scope.cancelled() => break,
            }
        }
        for (_, (_, stop, task)) in running {
            stop.trigger();
            let _ = task.await;
        }
        Ok::<_, std::convert::Infallible>(())
    });
}

/// Answers the control API's status requests for `source` with `status` until
/// `active` ends (while this replica holds the source's lease).
pub(crate) async fn answer_status(
    state: &Ingest,
    source: &str,
    status: &std::sync::Mutex<operator::SourceStatus>,
    active: &Shutdown,
) {
    let client = &state.nats.client;
    let mut requests = match client.subscribe(operator::source_subject(source)).await {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(source, error = %err, "cannot answer operator requests");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            () = active.cancelled() => break,
            request = futures::StreamExt::next(&mut requests) => request,
        };
        let Some(request) = request else { break };
        let Some(reply) = request.reply else { continue };
        let answer = status.lock().expect("status lock").clone();
        let answer = serde_json::to_vec(&answer).expect("status serializes");
        if let Err(err) = client.publish(reply, answer.into()).await {
            tracing::warn!(source, error = %err, "operator answer not sent");
        }
    }
    let _ = requests.unsubscribe().await;
}

/// The first wait after a failed session; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between sessions, and the wait after a configuration fault.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A reader of a source's database: one session is one connection that reads until
/// it fails or `active` ends.
pub(crate) trait Sessions: Sync {
    fn source(&self) -> &str;
    /// What operators are told while this replica reads.
    fn status(&self) -> &std::sync::Mutex<operator::SourceStatus>;
    /// One connection, read until `active` ends or something fails; it resets
    /// `backoff` once it works.
    fn session(
        &self,
        active: &Shutdown,
        backoff: &mut Duration,
    ) -> impl Future<Output = Result<(), Fault>> + Send;

    /// Changes what operators are told.
    fn note(&self, change: impl FnOnce(&mut operator::SourceStatus)) {
        change(&mut self.status().lock().expect("status lock"));
    }
}

/// Holds the source's lease `key` and, while it lasts, runs `reader`'s sessions and
/// answers the operators' status requests; stands by while another replica holds
/// it. Returns on shutdown.
pub(crate) async fn while_leased(
    reader: &impl Sessions,
    state: &Ingest,
    key: &str,
    (instance, ttl): (&str, Duration),
    stop: &Shutdown,
) -> Result<(), switchyard_core::Error> {
    let source = reader.source();
    loop {
        let Some(mut held) = lease::acquire(&state.nats.jetstream, key, instance, ttl, stop).await
        else {
            return Ok(());
        };
        tracing::info!(source, lease = key, "reading");
        let active = stop.child();
        let keep = async {
            held.keep(&active).await;
            active.trigger();
        };
        let reading = async {
            sessions(reader, &active).await;
            // Let `keep` end with the reading.
            active.trigger();
        };
        let answering = answer_status(state, source, reader.status(), &active);
        tokio::join!(keep, reading, answering);
        if stop.is_shutting_down() {
            held.release().await;
            return Ok(());
        }
        tracing::warn!(source, lease = key, "lost the lease; standing by again");
    }
}

/// Runs `reader`'s sessions until `active` ends. After a failed one it waits — from
/// 250 ms, doubling to 30 s, and 30 s at once after a configuration fault — and shows
/// the fault as the status's last error.
async fn sessions(reader: &impl Sessions, active: &Shutdown) {
    let source = reader.source();
    let mut backoff = FIRST_BACKOFF;
    while !active.is_shutting_down() {
        let ended = reader.session(active, &mut backoff).await;
        if let Err(fault) = &ended {
            reader.note(|status| status.last_error = Some(fault.to_string()));
        }
        match ended {
            Ok(()) => {}
            Err(Fault::Away(why)) => tracing::warn!(
                source,
                reason = why,
                retry_ms = backoff.as_millis() as u64,
                "the source's database is unreachable; trying again"
            ),
            Err(Fault::Config(why)) => {
                backoff = MAX_BACKOFF;
                tracing::error!(
                    source,
                    reason = why,
                    retry_ms = backoff.as_millis() as u64,
                    "the source cannot be read as configured"
                );
            }
        }
        active.sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What a session sets its backoff to once it works.
pub(crate) fn reset(backoff: &mut Duration) {
    *backoff = FIRST_BACKOFF;
}
