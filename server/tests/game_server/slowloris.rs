//! A slowloris attack on loopback, bounded: 256 connections from 127.0.0.2 to 127.0.0.5 that
//! send nothing, or one header byte every second, while a client on 127.0.0.1 is served as
//! usual; the server closes every slow connection within its header timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEADER_TIMEOUT_S: u64 = 2;

async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local.parse::<IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Holds a connection the slow way until the server closes it; how long that took.
async fn slow_client(local: &'static str, server: SocketAddr, trickle: bool) -> Duration {
    let mut s = connect_from(local, server).await;
    let opened = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nhost: x\r\n";
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        // Wait a second for the server to close (read 0 or an error), trickling a byte each time.
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return opened.elapsed(),
            Ok(Ok(_)) => {} // a 408 or similar before the close
            Err(_) if trickle && sent < head.len() => {
                if s.write_all(&head[sent..=sent]).await.is_err() {
                    return opened.elapsed();
                }
                sent += 1;
            }
            Err(_) => {}
        }
        assert!(opened.elapsed() < Duration::from_secs(30), "never closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_are_closed_in_time_while_others_are_served() {
    let t = start(10, |c| c.server.header_read_timeout_s = HEADER_TIMEOUT_S).await;
    let addr = t.server.local_addr();
    let attackers = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let slow: Vec<_> =
        (0..256).map(|i| tokio::spawn(slow_client(attackers[i % 4], addr, i % 2 == 1))).collect();

    // Meanwhile, a client on 127.0.0.1: requests on one keep-alive connection, each timed.
    let client =
        reqwest::Client::builder().local_address("127.0.0.1".parse::<IpAddr>().unwrap()).build().unwrap();
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(HEADER_TIMEOUT_S + 1) {
        let t0 = Instant::now();
        let res = client.get(t.url("/health")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        latencies.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort_unstable();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("{} requests during the attack, p99 {p99:?}", latencies.len());
    assert!(p99 <= Duration::from_millis(50), "p99 {p99:?} over {} requests", latencies.len());

    // Every slow connection closed within the header timeout (plus the 1 s poll of the
    // client and scheduling slack).
    let limit = Duration::from_secs(HEADER_TIMEOUT_S + 2);
    for task in slow {
        let held = task.await.unwrap();
        assert!(held <= limit, "held {held:?}, header timeout {HEADER_TIMEOUT_S} s");
    }
    // An idle keep-alive connection is closed by the same timeout.
    let mut s = connect_from("127.0.0.1", addr).await;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let idle_from = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(HEADER_TIMEOUT_S + 3), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(idle_from.elapsed() <= limit, "idle keep-alive held {:?}", idle_from.elapsed());
    t.server.shutdown().await.unwrap();
}
