//! A 3-node NATS cluster on loopback with every stream and bucket replicated three
//! times: killing the node that leads the INGEST stream while events flow loses
//! nothing and doubles nothing.

use std::time::{Duration, Instant};

use switchyard_tests::{
    FakeProvider, Pipeline, TestNats,
    chaos::{catalog, send, tally},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leading_node_of_a_three_node_cluster_loses_nothing() {
    let provider = FakeProvider::start().await;
    let nats = TestNats::cluster(3).await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.topology.replicas = 3;
    let mut pipeline = Pipeline::start_with(
        nats,
        settings,
        &catalog(provider.url(), Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let mut ingest = pipeline.jetstream.get_stream("INGEST").await.unwrap();
    assert_eq!(ingest.cached_info().config.num_replicas, 3);

    let started = Instant::now();
    let events = 1_500;
    let sender = tokio::spawn(send(pipeline.ingest_url.clone(), events, 250));
    // The leader is killed while events are flowing end to end.
    switchyard_tests::eventually(Duration::from_secs(30), "deliveries under way", || async {
        (provider.accepted().len() >= 200).then_some(())
    })
    .await;
    let leader = stream_leader(&mut ingest)
        .await
        .expect("INGEST has a leader");
    pipeline.nats.kill_node(&leader).await;
    let sent = sender.await.unwrap().unwrap();
    assert_eq!(sent, events, "ingest accepted every event in the end");

    provider
        .wait_for_accepted(usize::try_from(sent).unwrap(), Duration::from_secs(120))
        .await;
    // Once the pipeline is at rest, nothing more can arrive.
    pipeline.quiescent().await;
    let counted = tally(sent, &provider.received(), started.elapsed().as_secs_f64());
    eprintln!("cluster failover (killed {leader}): {counted:?}");
    assert_eq!(counted.lost, 0, "{counted:?}");
    assert_eq!(counted.duplicates, 0, "{counted:?}");
    assert_eq!(counted.delivered, sent, "{counted:?}");
    let new_leader = stream_leader(&mut ingest).await;
    assert!(
        new_leader.is_some_and(|node| node != leader),
        "INGEST moved to another node"
    );
}

/// The node that leads a stream now.
async fn stream_leader(stream: &mut async_nats::jetstream::stream::Stream) -> Option<String> {
    stream.info().await.ok()?.cluster.clone()?.leader
}
