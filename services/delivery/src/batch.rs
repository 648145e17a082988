//! Batch delivery: many messages in one request, each still delivered on its own.
//!
//! A message that is owed (its ordering turn came, the ledger says it was not yet
//! delivered) joins the open batch instead of making its own request. The batch is
//! sent when it holds `max_events`, when the next member would take it over
//! `max_bytes`, or when its first member has waited `max_wait`, and then only when an
//! in-flight slot, a rate-limit token and the breaker allow: while it waits for those,
//! it keeps filling. One request spends one token, one slot and one breaker outcome.
//!
//! The request carries an `Idempotency-Key` made from its members' keys (the same
//! members give the same key, in any order) and is signed as one body. Each member
//! then settles itself by what the request led to — ack after its ledger record,
//! NAK with its own retry delay, or dead letter — with an outcome record naming the
//! batch. With `batch_results`, each member gets its own status from the response,
//! so only the failed ones are retried or dead-lettered.
//!
//! Ordering keys: a member waits for its turn before it joins, and its turn comes only
//! once every earlier same-key message in this process has settled, so same-key
//! events travel one per batch, in order, and none leaves while an earlier one
//! waits for a retry.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_core::{
    catalog::BatchFormat,
    mapping::Program,
    metrics::{self, ProviderLabels},
    outbound::{Failure, FailureKind},
    shutdown::Shutdown,
    telemetry,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::Instant,
};

use crate::{
    Shared,
    attempt::{Deferral, Delivery, Owed, Request, put},
    sender::{Answer, Verdict, classify},
    target::Target,
};

/// Bytes of a batch response kept for `batch_results`.
const RESULTS_BODY_LIMIT: usize = 4 << 20;

/// A message waiting in a batch.
pub(crate) struct Member {
    body: Bytes,
    idempotency_key: String,
    /// This member's counted attempt number if the batch is sent.
    attempt: u32,
    target: Arc<Target>,
    /// The member's own span, linked from the batch request's.
    span: tracing::Span,
    joined: Instant,
    reply: oneshot::Sender<Reply>,
}

/// What became of a member's batch.
enum Reply {
    /// The request was made; this is the member's share of the answer.
    Answered {
        verdict: Verdict,
        answer: Box<Answer>,
        batch: String,
    },
    /// No request was made (shutdown, pause, open breaker).
    Deferred(Deferral),
}

impl Delivery {
    /// Hands the message to the open batch and settles it by what the batch led to.
    pub(crate) async fn join_batch(&self, owed: Owed<'_>, batches: &mpsc::Sender<Member>) {
        let (reply, replied) = oneshot::channel();
        let member = Member {
            body: owed.message.payload.clone(),
            idempotency_key: owed.idempotency_key.to_owned(),
            attempt: owed.record.attempts + 1,
            target: self.target.clone(),
            span: tracing::Span::current(),
            joined: Instant::now(),
            reply,
        };
        if batches.send(member).await.is_err() {
            return Deferral::HandBack.settle(owed.message).await;
        }
        match replied.await {
            Ok(Reply::Answered {
                verdict,
                answer,
                batch,
            }) => self.settle(owed, verdict, *answer, Some(&batch)).await,
            Ok(Reply::Deferred(deferral)) => deferral.settle(owed.message).await,
            Err(_) => Deferral::HandBack.settle(owed.message).await,
        }
    }
}

type Slot = Pin<Box<dyn Future<Output = (Delivery, Result<bool, Deferral>)> + Send>>;

/// Collects members into batches and sends each when it is due, until every sender
/// of `members` is gone and every request has been answered.
pub(crate) async fn assemble(
    shared: Arc<Shared>,
    active: Shutdown,
    mut members: mpsc::Receiver<Member>,
) {
    let mut open: Vec<Member> = Vec::new();
    let mut open_bytes = 0usize;
    // A member that did not fit; it opens the next batch.
    let mut held: Option<Member> = None;
    // The wait for a slot's pace, once the open batch is due.
    let mut slot: Option<Slot> = None;
    let mut requests = JoinSet::new();
    let mut closed = false;
    loop {
        if open.is_empty()
            && let Some(member) = held.take()
        {
            open_bytes = member.body.len() + 1;
            open.push(member);
        }
        if closed && open.is_empty() && slot.is_none() {
            break;
        }
        // The open batch goes by its first member's provider settings.
        let target = open.first().map(|first| first.target.clone());
        let limits = target
            .as_ref()
            .and_then(|target| target.provider.batch.as_ref());
        let full = held.is_some() || limits.is_some_and(|limits| open.len() >= limits.max_events);
        let deadline = limits.map(|limits| open[0].joined + limits.max_wait);
        let due = !open.is_empty()
            && (full
                || closed
                || active.is_shutting_down()
                || deadline.is_some_and(|deadline| Instant::now() >= deadline));
        let max_in_flight = target
            .as_ref()
            .map_or(usize::MAX, |target| target.provider.max_in_flight);
        if let Some(target) =
            target.filter(|_| due && slot.is_none() && requests.len() < max_in_flight)
        {
            let delivery = Delivery {
                shared: shared.clone(),
                target,
                active: active.clone(),
                batches: None,
            };
            slot = Some(Box::pin(async move {
                let paced = delivery.pace().await;
                (delivery, paced)
            }));
        }
        let room = !full && !closed;
        tokio::select! {
            biased;
            (delivery, paced) = async { slot.as_mut().expect("enabled only with a slot").await },
                if slot.is_some() => {
                slot = None;
                let batch = std::mem::take(&mut open);
                open_bytes = 0;
                match paced {
                    Ok(probe) => {
                        requests.spawn(send(delivery, batch, probe));
                    }
                    Err(deferral) => {
                        for member in batch {
                            let _ = member.reply.send(Reply::Deferred(deferral));
                        }
                    }
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            member = members.recv(), if room => match member {
                None => closed = true,
                Some(member) => {
                    let max_bytes = member
                        .target
                        .provider
                        .batch
                        .as_ref()
                        .map_or(usize::MAX, |limits| usize::try_from(limits.max_bytes.0).unwrap_or(usize::MAX));
                    let size = member.body.len() + 1;
                    if !open.is_empty() && open_bytes + size > max_bytes {
                        held = Some(member);
                    } else {
                        open_bytes += size;
                        open.push(member);
                    }
                }
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if !due && deadline.is_some() => {}
            () = active.cancelled(), if !due && !open.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
}

/// Sends one batch and tells each member its share of the answer.
async fn send(delivery: Delivery, members: Vec<Member>, probe: bool) {
    let target = delivery.target.clone();
    let provider = &target.provider;
    let labels = ProviderLabels {
        provider: provider.name.clone(),
    };
    let metrics = metrics::metrics();
    metrics
        .batch_events
        .get_or_create(&labels)
        .observe(members.len() as f64);
    metrics
        .batch_fill
        .get_or_create(&labels)
        .observe(members[0].joined.elapsed().as_secs_f64());
    let batch = batch_key(members.iter().map(|member| member.idempotency_key.as_str()));
    let format = provider
        .batch
        .as_ref()
        .map(|limits| limits.format.clone())
        .unwrap_or_default();
    let bodies: Vec<Bytes> = members.iter().map(|member| member.body.clone()).collect();
    let keys: Vec<&str> = members
        .iter()
        .map(|member| member.idempotency_key.as_str())
        .collect();
    let body = match body(target.batch_program.as_ref(), &format, &bodies, &keys) {
        Ok(body) => body,
        Err(reason) => {
            tracing::warn!(
                batch,
                reason,
                "batch body could not be built; dead-lettering its members"
            );
            let answer = Answer {
                failure: Some(Failure {
                    kind: FailureKind::Other,
                    message: reason,
                }),
                ..Default::default()
            };
            return reply_all(members, Verdict::Rejected, &answer, &batch);
        }
    };
    let attempt = members
        .iter()
        .map(|member| member.attempt)
        .max()
        .unwrap_or(1);
    let mut request_headers = reqwest::header::HeaderMap::new();
    put(&mut request_headers, "content-type", format.content_type());
    put(
        &mut request_headers,
        "switchyard-attempt",
        &attempt.to_string(),
    );
    put(&mut request_headers, "switchyard-batch-id", &batch);
    put(
        &mut request_headers,
        "switchyard-batch-size",
        &members.len().to_string(),
    );
    let span = target.sender.span(attempt - 1, Some(members.len()));
    for member in &members {
        telemetry::link(&span, &member.span);
    }
    let request = Request {
        body,
        idempotency_key: batch.clone(),
        headers: request_headers,
        span,
        keep_body: target.batch_results.is_some().then_some(RESULTS_BODY_LIMIT),
    };
    let (verdict, answer) = delivery.call(&request, probe).await;
    let Some(program) = target
        .batch_results
        .as_ref()
        .filter(|_| matches!(verdict, Verdict::Delivered | Verdict::Rejected))
        .filter(|_| answer.status.is_some())
    else {
        return reply_all(members, verdict, &answer, &batch);
    };
    match item_results(program, &answer, members.len()) {
        Ok(items) => {
            for (member, (status, reason)) in members.into_iter().zip(items) {
                let item = Answer {
                    status: Some(status),
                    excerpt: reason.clone().unwrap_or_default(),
                    detail: reason.map(|reason| format!("item result: {reason}")),
                    latency: answer.latency,
                    ..Default::default()
                };
                let verdict = classify(&item, &provider.retry);
                let _ = member.reply.send(Reply::Answered {
                    verdict,
                    answer: Box::new(item),
                    batch: batch.clone(),
                });
            }
        }
        Err(reason) => {
            tracing::warn!(batch, reason, "batch_results could not read the response");
            let answer = Answer {
                failure: Some(Failure {
                    kind: FailureKind::Other,
                    message: format!(
                        "batch_results: {reason} (the provider answered HTTP {})",
                        answer.status.unwrap_or_default()
                    ),
                }),
                body: None,
                ..answer
            };
            reply_all(members, Verdict::Rejected, &answer, &batch);
        }
    }
}

fn reply_all(members: Vec<Member>, verdict: Verdict, answer: &Answer, batch: &str) {
    let answer = Answer {
        body: None,
        ..answer.clone()
    };
    for member in members {
        let _ = member.reply.send(Reply::Answered {
            verdict,
            answer: Box::new(answer.clone()),
            batch: batch.to_owned(),
        });
    }
}

/// The batch's idempotency key: the same for the same members in any order.
fn batch_key<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    let mut hash = Sha256::new();
    for key in keys {
        hash.update((key.len() as u64).to_le_bytes());
        hash.update(key.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("batch-{hex}")
}

/// The request body: the members' bodies in `format`, or what `batch_program` made
/// of their array (with the members' idempotency keys, in the same order, as
/// `%idempotency_keys`).
fn body(
    program: Option<&Program>,
    format: &BatchFormat,
    bodies: &[Bytes],
    keys: &[&str],
) -> Result<Bytes, String> {
    if let Some(program) = program {
        let items = bodies
            .iter()
            .map(|body| serde_json::from_slice(body))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|err| format!("batch_program: a member's body is not JSON: {err}"))?;
        let output = program
            .apply_json(
                Value::Array(items),
                serde_json::json!({ "idempotency_keys": keys }),
            )
            .map_err(|err| format!("batch_program: {err}"))?;
        return Ok(serde_json::to_vec(&output)
            .expect("JSON values serialize")
            .into());
    }
    let size: usize = bodies.iter().map(|body| body.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 32);
    let join = |out: &mut Vec<u8>| {
        for (i, body) in bodies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(body);
        }
    };
    match format {
        BatchFormat::JsonArray => {
            out.push(b'[');
            join(&mut out);
            out.push(b']');
        }
        BatchFormat::Wrap(field) => {
            out.push(b'{');
            out.extend_from_slice(&serde_json::to_vec(field).expect("strings serialize"));
            out.extend_from_slice(b":[");
            join(&mut out);
            out.extend_from_slice(b"]}");
        }
        BatchFormat::Ndjson => {
            for body in bodies {
                if body.contains(&b'\n') {
                    // Pretty-printed JSON: one line is needed.
                    let value: Value = serde_json::from_slice(body)
                        .map_err(|err| format!("a member's body is not JSON: {err}"))?;
                    out.extend_from_slice(&serde_json::to_vec(&value).expect("JSON serializes"));
                } else {
                    out.extend_from_slice(body);
                }
                out.push(b'\n');
            }
        }
    }
    Ok(out.into())
}

/// Runs `batch_results` over the response: one status (and reason) per member.
fn item_results(
    program: &Program,
    answer: &Answer,
    count: usize,
) -> Result<Vec<(u16, Option<String>)>, String> {
    let raw = answer.body.clone().unwrap_or_default();
    let body = serde_json::from_slice::<Value>(&raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
    let response = serde_json::json!({
        "status": answer.status,
        "body": body,
    });
    let output = program
        .evaluate_to_json(response)
        .map_err(|err| err.to_string())?;
    let Value::Array(items) = output else {
        return Err(format!("returned {output}, not an array of statuses"));
    };
    if items.len() != count {
        return Err(format!(
            "returned {} statuses for a batch of {count}",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let (status, reason) = match &item {
                Value::Number(_) => (item.as_u64(), None),
                Value::Object(fields) => (
                    fields.get("status").and_then(Value::as_u64),
                    fields.get("reason").map(|reason| match reason {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    }),
                ),
                _ => (None, None),
            };
            match status.and_then(|status| u16::try_from(status).ok()) {
                Some(status @ 100..=599) => Ok((status, reason)),
                _ => Err(format!(
                    "item {i} is {item}: give an HTTP status or {{\"status\": N, \"reason\": \"…\"}}"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_joined_in_each_format_or_given_to_the_program() {
        let bodies = [
            Bytes::from_static(br#"{"id":1}"#),
            Bytes::from_static(b"{\n  \"id\": 2\n}"),
        ];
        let keys = ["k-1", "k-2"];
        let made = |format: BatchFormat| body(None, &format, &bodies, &keys).unwrap();
        assert_eq!(
            made(BatchFormat::JsonArray),
            "[{\"id\":1},{\n  \"id\": 2\n}]"
        );
        assert_eq!(
            made(BatchFormat::Wrap("records".into())),
            "{\"records\":[{\"id\":1},{\n  \"id\": 2\n}]}"
        );
        assert_eq!(made(BatchFormat::Ndjson), "{\"id\":1}\n{\"id\":2}\n");
        let envelope = Program::compile(
            ". = {\"count\": length(.), \"items\": zip(array!(.), array!(%idempotency_keys))}",
        )
        .unwrap();
        let built = body(Some(&envelope), &BatchFormat::JsonArray, &bodies, &keys).unwrap();
        let value: Value = serde_json::from_slice(&built).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"count": 2, "items": [[{"id": 1}, "k-1"], [{"id": 2}, "k-2"]]})
        );
        let failing = Program::compile("abort \"no\"").unwrap();
        let err = body(Some(&failing), &BatchFormat::JsonArray, &bodies, &keys).unwrap_err();
        assert!(err.starts_with("batch_program: "), "{err}");
    }

    #[test]
    fn the_batch_key_depends_on_the_members_not_their_order() {
        let a = batch_key(["k-1", "k-2", "k-3"].into_iter());
        assert_eq!(a, batch_key(["k-3", "k-1", "k-2"].into_iter()));
        assert_ne!(a, batch_key(["k-1", "k-2"].into_iter()));
        assert_ne!(
            batch_key(["k-1\nk-2"].into_iter()),
            batch_key(["k-1", "k-2"].into_iter())
        );
        assert!(a.starts_with("batch-") && a.len() == 38, "{a}");
    }

    #[test]
    fn item_results_give_one_status_per_member_or_say_why_not() {
        let program = Program::compile(
            "map_values(array!(.body.results)) -> |r| { if r.ok == true { 200 } else { {\"status\": 422, \"reason\": r.error} } }",
        )
        .unwrap();
        let answer = |body: &str| Answer {
            status: Some(207),
            body: Some(Bytes::copy_from_slice(body.as_bytes())),
            ..Default::default()
        };
        let results = item_results(
            &program,
            &answer(r#"{"results": [{"ok": true}, {"ok": false, "error": "email invalid"}]}"#),
            2,
        )
        .unwrap();
        assert_eq!(results, [(200, None), (422, Some("email invalid".into()))]);
        let short = item_results(&program, &answer(r#"{"results": [{"ok": true}]}"#), 2);
        assert_eq!(short.unwrap_err(), "returned 1 statuses for a batch of 2");
        let wrong = Program::compile("[\"fine\", 200]").unwrap();
        let err = item_results(&wrong, &answer("{}"), 2).unwrap_err();
        assert!(err.starts_with("item 0 is \"fine\""), "{err}");
        let not_json = item_results(&program, &answer("<html>"), 2).unwrap_err();
        assert!(not_json.contains("array"), "{not_json}");
    }
}
