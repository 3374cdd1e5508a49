//! The `server` role over real HTTPS with mutual TLS, on 127.0.0.1 port 0.

mod common;

use actix_web::http::StatusCode;
use cardgate::actors::counter::Stats;
use cardgate::http::server::{start, SpawnedServer, REQUEST_ID_HEADER};
use common::{anonymous_client, client, proxy_client, server_config, url, TestCerts};
use serde_json::Value;

/// Certificates, a store folder and a started server.
struct TestServer {
    certs: TestCerts,
    store: tempfile::TempDir,
    running: SpawnedServer,
}

async fn spawn_server() -> TestServer {
    let certs = TestCerts::new();
    let store = tempfile::tempdir().expect("store tempdir");
    let running = start(server_config(&certs, store.path()))
        .await
        .expect("server starts")
        .spawn();
    TestServer {
        certs,
        store,
        running,
    }
}

/// Sends `POST /resource/counter` and returns the status and JSON body.
async fn post_counter(client: &awc::Client, server: &SpawnedServer) -> (StatusCode, Value) {
    let mut response = client
        .post(url(server.addr, "/resource/counter"))
        .send()
        .await
        .expect("request succeeds");
    let body: Value = response.json().await.expect("JSON body");
    (response.status(), body)
}

async fn next_value(client: &awc::Client, server: &SpawnedServer) -> u64 {
    let (status, body) = post_counter(client, server).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], Value::Bool(true), "{body}");
    body["value"].as_u64().expect("value is a number")
}

#[actix_web::test]
async fn counter_returns_one_then_two() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);

    assert_eq!(next_value(&client, &server.running).await, 1);
    assert_eq!(next_value(&client, &server.running).await, 2);

    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn client_without_cert_fails_handshake() {
    let server = spawn_server().await;

    let result = anonymous_client(&server.certs)
        .post(url(server.running.addr, "/resource/counter"))
        .send()
        .await;
    let error = result.expect_err("the server requires a client certificate");
    let text = error.to_string();
    // With TLS 1.3 the client learns of the rejection from the server's
    // alert, after it considered its own side of the handshake done.
    assert!(
        text.contains("CertificateRequired"),
        "unexpected error: {text}"
    );

    // The rejected request did not reach the counter.
    let client = proxy_client(&server.certs);
    assert_eq!(next_value(&client, &server.running).await, 1);
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn client_cert_from_other_ca_fails_handshake() {
    let server = spawn_server().await;
    let other = TestCerts::new();
    let (cert, key) = other.proxy_client();
    // Trusts the server's CA, but presents a certificate from another CA.
    let stranger = client(&server.certs.ca(), Some((&cert, &key)));

    let result = stranger
        .post(url(server.running.addr, "/resource/counter"))
        .send()
        .await;
    let error = result.expect_err("a certificate from another CA is rejected");
    let text = error.to_string();
    assert!(text.contains("UnknownCA"), "unexpected error: {text}");

    let client = proxy_client(&server.certs);
    assert_eq!(next_value(&client, &server.running).await, 1);
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn restart_continues_from_stored_value() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);
    assert_eq!(next_value(&client, &server.running).await, 1);
    assert_eq!(next_value(&client, &server.running).await, 2);
    server.running.stop(true).await.expect("server stops");

    let running = start(server_config(&server.certs, server.store.path()))
        .await
        .expect("server restarts on the same store")
        .spawn();
    let client = proxy_client(&server.certs);
    assert_eq!(next_value(&client, &running).await, 3);
    running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn concurrent_increments_are_contiguous_and_batched() {
    const REQUESTS: u64 = 200;
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);

    let requests = (0..REQUESTS).map(|_| next_value(&client, &server.running));
    let mut values = futures_util::future::join_all(requests).await;
    values.sort_unstable();
    assert_eq!(values, (1..=REQUESTS).collect::<Vec<_>>());

    let stats = server.running.counter.send(Stats).await.expect("stats");
    assert_eq!(stats.increments, REQUESTS, "{stats:?}");
    assert_eq!(stats.value, REQUESTS, "{stats:?}");
    assert!(
        stats.batches < REQUESTS,
        "every increment was flushed alone: {stats:?}"
    );
    assert!(stats.largest_batch > 1, "{stats:?}");
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn health_reports_role_and_counter() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);
    next_value(&client, &server.running).await;

    let mut response = client
        .get(url(server.running.addr, "/health"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["ok"], Value::Bool(true), "{body}");
    assert_eq!(body["role"], "server", "{body}");
    assert_eq!(body["counter"]["value"], 1, "{body}");
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn oversized_body_is_rejected_without_increment() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);
    let limit = cardgate::config::Http::default().max_body_bytes;

    let mut response = client
        .post(url(server.running.addr, "/resource/counter"))
        .send_body(vec![b'x'; limit + 1])
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"], "payload_too_large", "{body}");

    let mut response = client
        .post(url(server.running.addr, "/resource/counter"))
        .send_body(vec![b'x'; limit])
        .await
        .expect("request succeeds");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a body at the limit passes"
    );
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["value"], 1, "{body}");
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn unknown_route_and_wrong_method_are_json_errors() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);

    for request in [
        client.get(url(server.running.addr, "/nowhere")),
        client.get(url(server.running.addr, "/resource/counter")),
    ] {
        let mut response = request.send().await.expect("request succeeds");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(body["ok"], Value::Bool(false), "{body}");
        assert_eq!(body["error"], "not_found", "{body}");
    }

    let stats = server.running.counter.send(Stats).await.expect("stats");
    assert_eq!(stats.increments, 0, "GET must not increment");
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn request_id_is_echoed_or_generated() {
    let server = spawn_server().await;
    let client = proxy_client(&server.certs);

    let response = client
        .get(url(server.running.addr, "/health"))
        .insert_header((REQUEST_ID_HEADER, "proxy-42"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(
        response
            .headers()
            .get(REQUEST_ID_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"proxy-42"[..])
    );

    let response = client
        .get(url(server.running.addr, "/health"))
        .insert_header((REQUEST_ID_HEADER, "bad id with spaces"))
        .send()
        .await
        .expect("request succeeds");
    let generated = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .expect("request id header")
        .to_str()
        .expect("ASCII id");
    assert_eq!(generated.len(), 16, "{generated}");
    assert!(
        generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    server.running.stop(true).await.expect("server stops");
}

#[actix_web::test]
async fn start_fails_on_store_in_use() {
    let server = spawn_server().await;

    let error = start(server_config(&server.certs, server.store.path()))
        .await
        .err()
        .expect("sled locks its folder");
    assert!(
        error
            .to_string()
            .contains(&server.store.path().display().to_string()),
        "{error}"
    );
    server.running.stop(true).await.expect("server stops");
}
