//! TLS to PostgreSQL and Redis, against servers of the test's own started with a certificate of
//! a CA made for the test (`OwnServers::with_tls`): a verified connection stores and reads; a
//! CA not trusted, another host name, or a server without TLS where TLS is required, is refused
//! with `StorageError::Tls`. They run where the shared services run (same binaries).
#![cfg(all(feature = "postgres", feature = "redis"))]

mod common;

use common::{batch, npc, service_url, unique_name};
use terrarium_persistence::testing::{OwnServers, test_certificates};
use terrarium_persistence::{
    MemoryStore, PgStore, PgTlsMode, PostgresConfig, RedisCache, RedisConfig, Storage, StorageError, Tier,
    WriteBatch,
};

fn pg_config(url: String) -> PostgresConfig {
    PostgresConfig { url, schema: unique_name(), min_size: 1, max_size: 2, ..Default::default() }
}

/// The reason of a `StorageError::Tls`, or a panic naming what came instead.
fn tls_reason(result: Result<PgStore, StorageError>) -> String {
    match result {
        Err(StorageError::Tls { backend: "postgres", reason }) => reason,
        Err(other) => panic!("expected StorageError::Tls, got {other:?}"),
        Ok(_) => panic!("expected StorageError::Tls, connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_stores_and_reads_and_refuses_a_wrong_ca_or_host() {
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let servers = OwnServers::with_tls();
    servers.run("start-pg");
    let ca = servers.certificates().expect("with_tls").ca.display().to_string();
    let plain_url = servers.url("DATABASE_URL"); // postgres://postgres@127.0.0.1:PORT/terrarium

    // verify-full: the certificate names 127.0.0.1 and chains to the test's CA.
    let cfg = pg_config(format!("{plain_url}?sslmode=verify-full&sslrootcert={ca}"));
    let store = PgStore::connect(&cfg).await.expect("a verified TLS connection");
    let batch = WriteBatch { npcs: (1..=10).map(npc).collect(), ..batch(7, 1) };
    store.write(&[batch]).await.unwrap();
    assert_eq!(store.get_npc(3).await.unwrap(), Some(npc(3)));
    // The server saw TLS on the store's connections (asked over a plain connection: the test
    // server still accepts those).
    let (sql, conn) = tokio_postgres::connect(&plain_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = sql
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'terrarium'",
            &[],
        )
        .await
        .unwrap();
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(tls >= 1 && plain == 0, "{tls} TLS and {plain} plain connections of the store");
    store.drop_schema().await.unwrap();
    store.close();

    // Another CA: refused, whatever the mode that checks the chain.
    let other = tempfile::tempdir().unwrap();
    let other_ca = test_certificates(other.path(), &["localhost", "127.0.0.1"]).ca.display().to_string();
    for mode in ["verify-ca", "verify-full"] {
        let cfg = pg_config(format!("{plain_url}?sslmode={mode}&sslrootcert={other_ca}"));
        let reason = tls_reason(PgStore::connect(&cfg).await);
        assert!(reason.contains("UnknownIssuer"), "{mode}: {reason}");
    }

    // Another host name (TLS to the name `db.invalid`, TCP to 127.0.0.1): verify-full refuses,
    // verify-ca (chain only) accepts; the mode given as the setting this time.
    let renamed = plain_url.replace("127.0.0.1", "db.invalid");
    let url = format!("{renamed}?hostaddr=127.0.0.1&sslrootcert={ca}");
    let cfg = PostgresConfig { tls: PgTlsMode::VerifyFull, ..pg_config(url.clone()) };
    let reason = tls_reason(PgStore::connect(&cfg).await);
    assert!(reason.contains("not valid for name \"db.invalid\""), "{reason}");
    let cfg = PostgresConfig { tls: PgTlsMode::VerifyCa, ..pg_config(url) };
    let store = PgStore::connect(&cfg).await.expect("verify-ca does not check the host name");
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_against_a_server_without_tls_is_a_tls_error() {
    // The shared test server has no TLS.
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let cfg = pg_config(format!("{url}{sep}sslmode=require"));
    let reason = tls_reason(PgStore::connect(&cfg).await);
    assert!(reason.contains("server does not support TLS"), "{reason}");
    // The setting alone asks the same.
    let cfg = PostgresConfig { tls: PgTlsMode::Require, ..pg_config(url.clone()) };
    let err = PgStore::connect(&cfg).await.map(drop).unwrap_err();
    assert!(err.to_string().starts_with("TLS connection to postgres failed"), "{err}");
    // `prefer` (the default) falls back to plain.
    let store = PgStore::connect(&pg_config(url)).await.expect("prefer connects without TLS");
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_caches_and_refuses_a_ca_it_does_not_trust() {
    if service_url("TERRARIUM_TEST_REDIS_URL").is_none() {
        return;
    }
    let servers = OwnServers::with_tls();
    servers.run("start-redis");
    let url = servers.url("REDIS_URL");
    assert!(url.starts_with("rediss://"), "{url}");
    let cfg = RedisConfig {
        url,
        tls_ca_file: servers.certificates().expect("with_tls").ca.clone(),
        key_prefix: format!("{}:", unique_name()),
        connect_timeout_ms: 2_000,
        command_timeout_ms: 2_000,
        warm_on_start: 0,
        ..Default::default()
    };
    let cache = RedisCache::connect(MemoryStore::default(), &cfg).await.unwrap();
    let batch = WriteBatch { npcs: (1..=10).map(npc).collect(), ..batch(9, 1) };
    cache.write(&[batch]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(cache.get_npc(4).await.unwrap(), Some(npc(4)));
    }
    assert!(cache.put_value(Tier::Cold, "probe", &42u32).await, "{:?}", cache.metrics());
    assert_eq!(cache.get_value::<u32>(Tier::Cold, "probe").await, Some(42));
    let m = cache.metrics();
    assert!(m.warm.hits >= 1 && m.errors == 0, "{m:?}");

    // A CA the server's certificate does not chain to: no connection; the cache runs in bypass
    // (reads still served by the store) and counts the error.
    let other = tempfile::tempdir().unwrap();
    let untrusted = RedisConfig {
        tls_ca_file: test_certificates(other.path(), &["127.0.0.1"]).ca,
        connect_timeout_ms: 1_000,
        ..cfg
    };
    let cache = RedisCache::connect(MemoryStore::default(), &untrusted).await.unwrap();
    assert!(!cache.put_value(Tier::Cold, "probe", &1u32).await);
    assert_eq!(cache.get_value::<u32>(Tier::Cold, "probe").await, None);
    assert!(cache.metrics().errors >= 1, "{:?}", cache.metrics());
}
