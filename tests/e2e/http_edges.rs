//! HTTP edges on a real socket: slowloris connections (partial request heads, trickled
//! bodies) are closed by the server within seconds, `/healthz` keeps answering while
//! they are open, Link sessions survive them, and every error is in the envelope.
//! Every loop here is bounded in count and time.

use std::net::SocketAddr;
use std::time::Duration;

use halo_cloud::HttpLimits;
use halo_ids::Environment;
use halo_router::RouterConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::fixture::{ADMIN, Harness, message, practice, rows};

/// Attacking connections per test.
const ATTACKERS: usize = 300;

/// A request head that never ends: the last header line is never finished.
const PARTIAL_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: halo\r\nX-Slow: ";

async fn cloud(max_connections: usize, header_read_timeout: Duration) -> Harness {
    Harness::start_with_limits(
        RouterConfig::standard(),
        HttpLimits {
            max_connections,
            header_read_timeout,
            ..HttpLimits::default()
        },
    )
    .await
}

/// Opens `n` connections that each send a partial request head and then nothing.
async fn slowloris(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // The server may already have closed it (evicted at the cap): that is fine.
        let _ = socket.write_all(PARTIAL_HEAD).await;
        sockets.push(socket);
    }
    sockets
}

/// How many of `sockets` the server closes (FIN or reset) within `limit`.
async fn closed_within(sockets: Vec<TcpStream>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let waits: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                // Bounded: at most a few reads before the deadline.
                for _ in 0..64 {
                    match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
                        Err(_) => return false,
                        Ok(Ok(0) | Err(_)) => return true,
                        Ok(Ok(_)) => {} // an error response before the close
                    }
                }
                false
            })
        })
        .collect();
    let mut closed = 0;
    for wait in waits {
        if wait.await.unwrap() {
            closed += 1;
        }
    }
    closed
}

/// GET /healthz on a fresh connection, bounded in time.
async fn healthz(h: &Harness) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    match client.get(h.url("/healthz")).send().await {
        Ok(resp) => resp.status() == 200 && resp.text().await.unwrap_or_default() == "ok",
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_heads_are_closed_by_the_header_timeout() {
    // A cap far above the attack: only the header timeout can close these.
    let h = cloud(4096, Duration::from_secs(1)).await;
    let attack = slowloris(h.cloud.addr, ATTACKERS).await;
    assert!(healthz(&h).await, "/healthz must answer during the attack");
    let closed = closed_within(attack, Duration::from_secs(10)).await;
    assert_eq!(
        closed, ATTACKERS,
        "every connection without a complete head is closed by the server"
    );
    assert!(healthz(&h).await);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_beyond_the_connection_cap_evicts_unfinished_connections() {
    // A header timeout far beyond the test: only the cap can close these.
    let cap = 64;
    let h = cloud(cap, Duration::from_secs(600)).await;
    let attack = slowloris(h.cloud.addr, ATTACKERS).await;
    assert!(
        healthz(&h).await,
        "/healthz must answer while the cap is full of slowloris connections"
    );
    let closed = closed_within(attack, Duration::from_secs(3)).await;
    assert!(
        closed >= ATTACKERS - cap,
        "at most {cap} attacking connections may stay open, {} did",
        ATTACKERS - closed
    );
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_evict_link_sessions_or_requests_in_flight() {
    let cap = 8;
    let mut h = Harness::start_with_limits(
        RouterConfig::standard(),
        HttpLimits {
            max_connections: cap,
            header_read_timeout: Duration::from_secs(600),
            body_read_timeout: Duration::from_secs(2),
            ..HttpLimits::default()
        },
    )
    .await;
    let link = h
        .link(Environment::Stage, &[practice("EDGE01", "Edge Dental")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(link.sites[0].0).await;
    assert_eq!(h.pair(&key, link.sites[0].0).await.0, 200);

    // The cap is full of slowloris connections; the Link's WebSocket left the cap when
    // it was upgraded and is never evicted, so queries still reach the Link.
    let first_wave = slowloris(h.cloud.addr, 50).await;
    let (status, body) = h
        .query(&key, link.sites[0].1, "SELECT patient_id FROM patients")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body).len(), 12);

    // A request in flight (its head is complete, its body still coming) is not
    // evicted by a wave arriving meanwhile: it gets its answer, here the 408 of its
    // body deadline, not a cut connection.
    let mut in_flight = TcpStream::connect(h.cloud.addr).await.unwrap();
    in_flight
        .write_all(trickled_admin_head().as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second_wave = slowloris(h.cloud.addr, 50).await;
    let answer = response(&mut in_flight, Duration::from_secs(10)).await;
    assert_eq!(answer.map(|(status, _)| status), Some(408));
    assert!(healthz(&h).await);
    drop((first_wave, second_wave));
    link.handle.shutdown().await.unwrap();
    h.cloud.stop().await;
}

/// A complete admin request head announcing 100 bytes of body, and 10 of them.
fn trickled_admin_head() -> String {
    format!(
        "POST /admin/link-credentials HTTP/1.1\r\nHost: halo\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"label\":"
    )
}

/// Reads one response from `socket` (until its body is complete or the connection
/// closes), or `None` at `limit`.
async fn response(socket: &mut TcpStream, limit: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..256 {
        match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_trickled_body_is_answered_408_after_the_body_deadline() {
    let h = Harness::start_with_limits(
        RouterConfig::standard(),
        HttpLimits {
            body_read_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        },
    )
    .await;
    // A complete head announcing 100 bytes of body, then 10 of them, then nothing.
    let mut socket = TcpStream::connect(h.cloud.addr).await.unwrap();
    socket
        .write_all(trickled_admin_head().as_bytes())
        .await
        .unwrap();
    let (status, body) = response(&mut socket, Duration::from_secs(10))
        .await
        .expect("the server answers a trickled body within its deadline");
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message(&body), "the request body was not received in time");

    // Anonymous, on an integrator endpoint (the body is read before the key is
    // checked): the connection is answered, so released, all the same.
    let mut socket = TcpStream::connect(h.cloud.addr).await.unwrap();
    socket
        .write_all(
            b"POST /integrator/sites/6f1c2a9e-0000-4000-8000-000000000001/queries/immediate HTTP/1.1\r\n\
              Host: halo\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let (status, _) = response(&mut socket, Duration::from_secs(10))
        .await
        .expect("the server answers a trickled body within its deadline");
    assert_eq!(status, 401);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_answered_in_the_envelope() {
    let h = Harness::start().await;
    let key = h.integrator(Environment::Stage).await;
    let cases: [(reqwest::Method, &str, u16, &str); 5] = [
        (
            reqwest::Method::GET,
            "/integrator/nope",
            404,
            "operation not found: no such route",
        ),
        (
            reqwest::Method::DELETE,
            "/healthz",
            405,
            "method not allowed on this route",
        ),
        (
            reqwest::Method::GET,
            "/integrator/sites?practiceManagementSiteId=AB123&practiceManagementSiteId=CD456",
            400,
            "invalid query string: duplicate field `practiceManagementSiteId`",
        ),
        (
            reqwest::Method::GET,
            "/integrator/sites?practiceManagementSiteId=%FF",
            400,
            "the query string is not valid UTF-8 once percent-decoded",
        ),
        (
            reqwest::Method::GET,
            "/integrator/sites/%FF",
            400,
            "the path parameter `site_id` is not valid UTF-8 once percent-decoded",
        ),
    ];
    for (method, path, status, expected) in cases {
        let resp = h
            .http
            .request(method, h.url(path))
            .header(halo_cloud::KEY_HEADER, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["status"], status, "{path}");
        assert_eq!(message(&body), expected, "{path}");
    }

    // A 2 MiB body: 413, in the envelope. The server closes a connection whose
    // body it did not read; the client must not pool it for the next request (it
    // would race that close: `IncompleteMessage`, seen once under CI load).
    let big = serde_json::json!({"label": "x".repeat(2 << 20)});
    let resp = h
        .http
        .post(h.url("/admin/link-credentials"))
        .bearer_auth(ADMIN)
        .header("connection", "close")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        message(&body),
        format!(
            "the request body is larger than the limit of {} bytes",
            halo_cloud::app::MAX_BODY_BYTES
        )
    );

    // Invalid UTF-8 in a JSON body: 400, in the envelope.
    let resp = h
        .http
        .post(h.url("/admin/link-credentials"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(&b"{\"label\":\"\xff\"}"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(message(&body).starts_with("invalid JSON body: "), "{body}");
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_reader_that_stops_reading_is_closed_after_the_write_timeout() {
    let h = Harness::start_with_limits(
        RouterConfig::standard(),
        HttpLimits {
            write_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        },
    )
    .await;
    // A small receive window, so the server's writes stall soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (mut rd, mut wr) = socket.connect(h.cloud.addr).await.unwrap().into_split();
    // Pipelined requests whose responses (the OpenAPI document, tens of KiB each) far
    // exceed what the socket buffers hold; the client never reads while sending.
    const REQUESTS: usize = 400;
    const BATCH: usize = 50;
    let writer = tokio::spawn(async move {
        let batch = b"GET /openapi.json HTTP/1.1\r\nHost: halo\r\n\r\n".repeat(BATCH);
        for _ in 0..REQUESTS / BATCH {
            match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&batch)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        wr
    });
    // Stall: the server needs a second or two to fill the socket buffers (about 4 MiB
    // here), then its write waits; this stays well past that plus the write timeout.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    };
    let answered = received
        .windows(12)
        .filter(|w| *w == b"HTTP/1.1 200")
        .count();
    assert!(
        closed,
        "the server closes the connection of a client that stopped reading"
    );
    assert!(
        answered < REQUESTS,
        "the connection was closed on the stall, not after serving everything ({answered} answers)"
    );
    drop(writer.await.unwrap());
    h.cloud.stop().await;
}
