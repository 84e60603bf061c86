//! Prometheus text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let t = start(50, |_| {}).await;
    t.get_until("/api/npcs/1", |s, _| s == StatusCode::OK).await;
    t.get("/api/npcs/1").await;
    // The tick publishes its counters at the start of the next tick: scrape until the batch
    // that was just read shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let res = t.http.get(t.url("/metrics")).header("x-api-key", KEY).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = res.text().await.unwrap();
        if text.lines().any(|l| l.starts_with("terrarium_batches_total ") && !l.ends_with(" 0")) {
            break text;
        }
        assert!(Instant::now() < deadline, "no batch counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Every line is a HELP, a TYPE or a sample with a number; every sample's metric is typed,
    // and every family has its HELP text.
    let mut typed: HashMap<String, prometheus_parse::SampleType> = HashMap::new();
    for line in text.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ").and_then(|l| l.split(' ').next()) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# HELP {family} ")) && l.len() > family.len() + 8),
                "metric family {family} has no HELP text"
            );
        }
        match prometheus_parse::LineInfo::parse(line) {
            prometheus_parse::LineInfo::Type { metric_name, sample_type, .. } => {
                typed.insert(metric_name, sample_type);
            }
            prometheus_parse::LineInfo::Sample { metric_name, value, .. } => {
                assert!(typed.contains_key(metric_name), "sample before its TYPE: {line}");
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            }
            prometheus_parse::LineInfo::Doc { .. } | prometheus_parse::LineInfo::Empty => {}
            prometheus_parse::LineInfo::Ignored => panic!("not Prometheus text: {line:?}"),
        }
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    use prometheus_parse::SampleType::{Counter, Gauge};
    assert_eq!(typed["terrarium_ticks_total"], Counter);
    assert_eq!(typed["terrarium_npcs"], Gauge);
    assert_eq!(value("terrarium_npcs", &[]), 50.0);
    assert!(value("terrarium_ticks_total", &[]) > 0.0);
    assert_eq!(value("terrarium_tick_hz", &[]), 50.0);
    let p50 = value("terrarium_tick_duration_seconds", &[("quantile", "0.5")]);
    let p99 = value("terrarium_tick_duration_seconds", &[("quantile", "0.99")]);
    assert!(p50 > 0.0 && p99 >= p50 && p99 < 1.0, "seconds: {p50} {p99}");
    assert!(value("terrarium_stage_duration_seconds", &[("stage", "act"), ("quantile", "0.99")]) > 0.0);
    assert!(value("terrarium_batches_total", &[]) > 0.0);
    let lag = value("terrarium_store_lag_seconds", &[("quantile", "0.99")]);
    assert!((0.0..60.0).contains(&lag), "storage lag, simulated seconds: {lag}");
    assert!(value("terrarium_batch_rows_total", &[("stream", "positions")]) > 0.0);
    assert!(value("terrarium_write_behind_batches_written_total", &[]) > 0.0);
    assert_eq!(value("terrarium_write_behind_rows_dropped_total", &[]), 0.0);
    assert!(value("terrarium_cache_hits_total", &[("tier", "l1")]) >= 1.0);
    assert_eq!(
        value("terrarium_circuit_breaker_state", &[("name", "storage.memory"), ("state", "closed")]),
        1.0
    );
    assert_eq!(
        value("terrarium_circuit_breaker_state", &[("name", "storage.memory"), ("state", "open")]),
        0.0
    );
    assert_eq!(value("terrarium_pathfinding_threads", &[]), 1.0);
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("terrarium_http_responses_total", &[("class", "2xx")]) >= 2.0);
    t.server.shutdown().await.unwrap();
}
