//! Ingest against hostile clients: slow headers, slow bodies, oversized headers and
//! connection floods are cut off by the listener's timeouts and limits, store nothing,
//! and do not slow down the clients that behave.

use std::time::{Duration, Instant};

use switchyard_core::config::Settings;
use switchyard_tests::{FakeProvider, Pipeline, TestNats};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{catalog, order};

/// A request head cut off before its end, as a slowloris client sends it.
const PARTIAL_HEAD: &[u8] = b"POST /v1/events/shop?type=order.created HTTP/1.1\r\nHost: x\r\n";

async fn pipeline_with(tune: impl FnOnce(&mut Settings)) -> (Pipeline, FakeProvider) {
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    tune(&mut settings);
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    (pipeline, provider)
}

fn address(pipeline: &Pipeline) -> String {
    pipeline.ingest_url.trim_start_matches("http://").to_owned()
}

/// Sends `count` events one after the other and returns each one's latency.
async fn latencies(pipeline: &Pipeline, prefix: &str, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let started = Instant::now();
        let response = pipeline
            .post("shop", "order.created", &order(&key, 1), Some(&key))
            .await;
        latencies.push(started.elapsed());
        assert_eq!(response.status(), 202, "{key}");
    }
    latencies
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// Reads until the peer closes (or `limit` passes) and returns what arrived.
async fn read_to_close(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trickled_headers_are_cut_off_while_other_clients_are_served_as_fast() {
    const TRICKLERS: usize = 2_000;
    let header_timeout = Duration::from_secs(5);
    let (pipeline, _provider) =
        pipeline_with(|settings| settings.ingest.http.header_read_timeout = header_timeout).await;
    latencies(&pipeline, "warm", 100).await;
    let calm = p99(latencies(&pipeline, "calm", 500).await);

    // 2,000 connections that send a partial head and then one more header line every
    // second, never finishing it.
    let target = address(&pipeline);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let opening = Instant::now();
    let mut tricklers = tokio::task::JoinSet::new();
    for index in 0..TRICKLERS {
        // In waves of 100, so that no connection waits for a place in the kernel's
        // accept queue before the server sees it and its clock starts.
        if index % 100 == 0 {
            switchyard_tests::eventually(Duration::from_secs(10), "a wave connected", || async {
                (connected.load(std::sync::atomic::Ordering::Relaxed) == index).then_some(())
            })
            .await;
        }
        let (target, connected) = (target.clone(), connected.clone());
        tricklers.spawn(async move {
            let mut stream = TcpStream::connect(&target).await.expect("connects");
            // Counted from the moment the connection exists.
            let started = Instant::now();
            stream.write_all(PARTIAL_HEAD).await.expect("writes");
            connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut buffer = [0u8; 512];
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            return started.elapsed();
                        }
                    }
                }
            }
        });
    }
    // Measure while they are all open.
    switchyard_tests::eventually(
        Duration::from_secs(10),
        "every trickler connected",
        || async {
            (connected.load(std::sync::atomic::Ordering::Relaxed) == TRICKLERS).then_some(())
        },
    )
    .await;
    let opened = opening.elapsed();
    let stormy = p99(latencies(&pipeline, "stormy", 500).await);
    let measured = opening.elapsed();
    let mut longest = Duration::ZERO;
    let mut closed = 0;
    while let Some(open_for) = tricklers.join_next().await {
        longest = longest.max(open_for.unwrap());
        closed += 1;
    }
    println!(
        "p99 undisturbed {calm:?}, beside {TRICKLERS} trickling connections {stormy:?}; opened in {opened:?}, measured until {measured:?}; longest trickler {longest:?}"
    );
    assert!(
        measured < header_timeout,
        "the measurement ended after {measured:?}, when the first tricklers may have been closed"
    );
    assert_eq!(closed, TRICKLERS);
    assert!(
        longest <= header_timeout + Duration::from_secs(2),
        "a trickling connection stayed open {longest:?}"
    );
    assert!(
        stormy <= calm * 2,
        "p99 beside the tricklers {stormy:?} is more than twice the undisturbed {calm:?}"
    );
    assert_eq!(pipeline.stream_len("INGEST").await, 1_100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_stores_nothing() {
    let (pipeline, _provider) =
        pipeline_with(|settings| settings.ingest.http.body_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(address(&pipeline)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"POST /v1/events/shop?type=order.created HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"id\":")
            .await
            .unwrap();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let (answer, closed) = read_to_close(&mut reader, Duration::from_secs(5)).await;
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("did not arrive within 1s") && answer.contains("nothing was stored"),
        "{answer}"
    );
    let closed = closed.expect("the connection is closed after the 408");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    assert_eq!(pipeline.stream_len("INGEST").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_store_nothing() {
    let (pipeline, _provider) = pipeline_with(|_| {}).await;
    let body = r#"{"id":"h-1","email":"a@b.c","total":1}"#;
    let request = |headers: &str| {
        format!(
            "POST /v1/events/shop?type=order.created HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        )
    };
    let long_line = format!("X-Big: {}\r\n", "a".repeat(17 * 1024));
    let many_lines: String = (0..5)
        .map(|i| format!("X-Part-{i}: {}\r\n", "b".repeat(15 * 1024)))
        .collect();
    let too_many: String = (0..120).map(|i| format!("X-N-{i}: 1\r\n")).collect();
    for (what, headers) in [
        ("a 17 KiB header line", &long_line),
        ("75 KiB of headers in 15 KiB lines", &many_lines),
        ("120 headers", &too_many),
    ] {
        let mut stream = TcpStream::connect(address(&pipeline)).await.unwrap();
        stream.write_all(request(headers).as_bytes()).await.unwrap();
        let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{what}: {answer}");
        assert!(closed.is_some(), "{what}: the connection is closed");
        if what.contains("17 KiB") {
            assert!(
                answer.contains("the header line x-big is 17415 bytes; at most 16384"),
                "{answer}"
            );
        }
    }
    assert_eq!(pipeline.stream_len("INGEST").await, 0, "nothing was stored");

    // Headers within the limits (a 15 KiB line, 60 KiB in all) are served.
    let within: String = (0..4)
        .map(|i| format!("X-Part-{i}: {}\r\n", "c".repeat(15 * 1024)))
        .collect();
    let mut stream = TcpStream::connect(address(&pipeline)).await.unwrap();
    stream
        .write_all(request(&format!("{within}Connection: close\r\n")).as_bytes())
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(pipeline.stream_len("INGEST").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let (pipeline, _provider) = pipeline_with(|settings| {
        settings.ingest.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let body = r#"{"id":"k-1","email":"a@b.c","total":1}"#;
    let mut stream = TcpStream::connect(address(&pipeline)).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/events/shop?type=order.created HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let closed = closed.expect("the idle connection is closed");
    assert!(
        closed >= Duration::from_millis(800) && closed <= Duration::from_millis(2500),
        "closed {closed:?} after the answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_cap_wait_until_one_closes() {
    let (pipeline, _provider) = pipeline_with(|settings| {
        settings.ingest.http.max_connections = 4;
        settings.ingest.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Four connections that say nothing take every slot until their header timeout.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(address(&pipeline)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let event = order("cap-1", 1);
    let request = pipeline.post("shop", "order.created", &event, Some("cap-1"));
    let gauge = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        switchyard_core::metrics::encode()
    };
    let (response, metrics) = tokio::join!(request, gauge);
    let waited = started.elapsed();
    assert_eq!(response.status(), 202);
    assert!(
        waited >= Duration::from_millis(600),
        "the fifth connection was served after {waited:?}, before a slot was free"
    );
    assert!(
        metrics.contains(r#"switchyard_http_connections{listener="ingest"} 4"#),
        "{metrics}"
    );
    assert_eq!(pipeline.stream_len("INGEST").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_in_flight_wait_for_a_place_while_nats_is_stalled() {
    let (pipeline, provider) = pipeline_with(|settings| settings.ingest.max_in_flight = 2).await;
    // Two clients that send their headers and a part of the body, and then nothing:
    // they hold connections, not places.
    let mut tricklers = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address(&pipeline)).await.unwrap();
        stream
            .write_all(b"POST /v1/events/shop?type=order.created HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"id\":")
            .await
            .unwrap();
        tricklers.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let first = pipeline
        .post("shop", "order.created", &order("wait-0", 1), Some("wait-0"))
        .await;
    assert_eq!(first.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an event beside two trickled bodies took {:?}",
        started.elapsed()
    );

    // While NATS is frozen, two requests wait for their acks and the other four wait
    // for a place; once it answers, all six are stored and delivered once.
    let stall = pipeline.nats.stall(Duration::from_secs(2));
    let sender = &pipeline;
    let burst = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let posts = (1..=6).map(|i| {
            let key = format!("wait-{i}");
            async move {
                sender
                    .post("shop", "order.created", &order(&key, 1), Some(&key))
                    .await
                    .status()
            }
        });
        futures::future::join_all(posts).await
    };
    let gauge = async {
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        switchyard_core::metrics::encode()
    };
    let (stalled, statuses, metrics) = tokio::join!(stall, burst, gauge);
    stalled.unwrap();
    assert!(
        metrics.contains("switchyard_ingest_requests_waiting 4\n"),
        "{}",
        metrics
            .lines()
            .filter(|line| line.contains("waiting"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");
    provider.wait_for_accepted(7, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.received().len(), 7, "each event delivered once");
    assert_eq!(pipeline.stream_len("INGEST").await, 7);
    assert!(switchyard_core::metrics::encode().contains("switchyard_ingest_requests_waiting 0\n"));
    drop(tricklers);
}
