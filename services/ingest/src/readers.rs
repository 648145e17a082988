//! Sources that ingest reads itself — polled HTTP APIs, outbox tables — each run by
//! one task per source, kept current as the catalog changes: a reader whose settings
//! changed is restarted, a removed one stops. Each task holds its source's lease, so
//! one replica reads a source at a time.

use std::{collections::HashMap, future::Future, sync::Arc};

use switchyard_core::{config::Settings, lease, operator, shutdown::Shutdown};

use crate::{Ingest, sources::Ready};

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
