//! Limits (issue 5): a blob larger than `max_blob_bytes` is refused (monolithic and chunked)
//! without losing the upload's accepted bytes; sessions beyond `max_uploads` get
//! `429 TOOMANYREQUESTS` until one ends; a request body that stalls longer than
//! `body_idle_secs` is cut off and what arrived stays resumable; connections beyond
//! `max_connections` wait, and a connection that sends no headers is closed after
//! `header_timeout_secs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::util::{Api, blob, sha256};
use crate::support::{Gateway, Member};

const KIB: usize = 1024;

#[tokio::test]
async fn a_blob_over_the_limit_is_413_and_the_upload_keeps_its_bytes() {
    let api = Api::with_gateway(Gateway::start_with_args(&["--max-blob-bytes", "1048576"]));
    // Monolithic.
    let big = blob(1, 2048 * KIB);
    let r = api
        .send(
            api.req(
                Method::POST,
                &format!("/v2/lim/blobs/uploads/?digest={}", sha256(&big)),
            )
            .body(big.clone()),
        )
        .await;
    r.expect_error(413, "SIZE_INVALID");
    api.get(&format!("/v2/lim/blobs/{}", sha256(&big)))
        .await
        .expect_error(404, "BLOB_UNKNOWN");

    // Chunked: the first 600 KiB fit, the second chunk would not.
    let loc = api
        .send(api.req(Method::POST, "/v2/lim/blobs/uploads/"))
        .await
        .expect(202)
        .location(&api);
    let chunk = blob(2, 600 * KIB);
    let loc = api
        .send(
            api.req(Method::PATCH, &loc)
                .header("Content-Range", format!("0-{}", chunk.len() - 1))
                .body(chunk.clone()),
        )
        .await
        .expect(202)
        .location(&api);
    api.send(
        api.req(Method::PATCH, &loc)
            .header(
                "Content-Range",
                format!("{}-{}", chunk.len(), 2 * chunk.len() - 1),
            )
            .body(chunk.clone()),
    )
    .await
    .expect_error(413, "SIZE_INVALID");
    // The session keeps what arrived before the limit: the accepted chunk and at most the
    // bytes up to the limit (a doomed upload, but nothing acknowledged is lost).
    let st = api.get(&loc).await;
    st.expect(204);
    let range = st.must_header("range");
    let end: usize = range
        .strip_prefix("0-")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("bad Range {range}"));
    assert!(
        (chunk.len() - 1..1 << 20).contains(&end),
        "Range {range}: the accepted chunk must stay and nothing past the limit be kept"
    );
    // A blob at the limit still completes.
    let fits = blob(3, 1024 * KIB);
    api.send(
        api.req(
            Method::POST,
            &format!("/v2/lim/blobs/uploads/?digest={}", sha256(&fits)),
        )
        .body(fits.clone()),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn upload_sessions_beyond_the_limit_are_429_until_one_ends() {
    let api = Api::with_gateway(Gateway::start_with_args(&["--max-uploads", "3"]));
    let mut open = Vec::new();
    for _ in 0..3 {
        let r = api
            .send(api.req(Method::POST, "/v2/many/blobs/uploads/"))
            .await;
        open.push(r.expect(202).location(&api));
    }
    api.send(api.req(Method::POST, "/v2/many/blobs/uploads/"))
        .await
        .expect_error(429, "TOOMANYREQUESTS");
    api.send(api.req(Method::DELETE, &open[0]))
        .await
        .expect(204);
    api.send(api.req(Method::POST, "/v2/many/blobs/uploads/"))
        .await
        .expect(202);
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_and_its_bytes_stay_resumable() {
    let api = Api::with_gateway(Gateway::start_with_args(&["--body-idle-secs", "1"]));
    let loc = api
        .send(api.req(Method::POST, "/v2/slow/blobs/uploads/"))
        .await
        .expect(202)
        .location(&api);
    let first = blob(5, 64 * KIB);
    // A body that sends 64 KiB, then nothing for far longer than the limit.
    let sent = first.clone();
    let body = futures::stream::unfold(0u8, move |step| {
        let sent = sent.clone();
        async move {
            match step {
                0 => Some((Ok::<Bytes, std::io::Error>(Bytes::from(sent)), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    None
                }
                _ => None,
            }
        }
    });
    let t0 = Instant::now();
    let url = api.url(&loc);
    let res = flotilla_node::gateway_http::client_builder()
        .build()
        .unwrap()
        .patch(&url)
        .body(reqwest::Body::wrap_stream(body))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    let took = t0.elapsed();
    // Either an error answer or a closed connection: the point is that it ends early.
    println!("stalled PATCH ended after {took:?}: {res:?}");
    assert!(
        took < Duration::from_secs(15),
        "a body stalled for 30 s held the request for {took:?} despite --body-idle-secs 1"
    );
    let st = api.get(&loc).await;
    st.expect(204);
    assert_eq!(st.must_header("range"), format!("0-{}", first.len() - 1));
    // Resume and finish.
    let rest = blob(6, 10 * KIB);
    let mut all = first.clone();
    all.extend_from_slice(&rest);
    api.send(
        api.req(Method::PUT, &with_digest(&loc, &sha256(&all)))
            .header(
                "Content-Range",
                format!("{}-{}", first.len(), all.len() - 1),
            )
            .body(rest),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn silent_connections_are_closed_and_extra_ones_wait() {
    let gw = Gateway::start_with_args(&["--header-timeout-secs", "1", "--max-connections", "2"]);
    let addr = gw.addr;
    // Two connections that never send a request fill the limit...
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    // ...and are closed by the gateway after the header timeout.
    let t0 = Instant::now();
    for s in [&mut a, &mut b] {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the gateway kept a silent connection open for 10 s")
            .unwrap_or(0);
        // hyper may answer 408 before closing; either way the connection ends.
        let _ = n;
    }
    let closed_after = t0.elapsed();
    println!("silent connections closed after {closed_after:?}");
    assert!(closed_after < Duration::from_secs(8));
    // Meanwhile a third client was served once a slot freed.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `url` with `digest=<d>` added to its query.
fn with_digest(url: &str, d: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={d}")
}

/// `upload_bytes_per_s`: one budget for every blob body the gateway sends. A docker-style GET
/// of the whole blob and a node-style piece GET at once, 8 MiB in all under 4 MiB/s, take two
/// seconds at least, and both bodies are whole.
#[tokio::test]
async fn blob_bodies_share_the_upload_cap() {
    let api = Api::with_gateway(Gateway::start_with_args(&[
        "--upload-bytes-per-s",
        "4194304",
    ]));
    let data = blob(7, 6 * 1024 * KIB);
    let d = sha256(&data);
    api.post_blob("cap/app", &d, &data).await.expect(201);
    let http = flotilla_node::gateway_http::client_builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let member = Member::enroll(&http, &api.gw.url(), &api.gw.fleet_token()).await;
    let url = api.url(&format!("/flotilla/v1/blobs/{d}"));
    let t0 = Instant::now();
    let whole = api.get_blob("cap/app", &d, None);
    let piece = api.send(member.get(&http, &url).header("range", "bytes=0-2097151"));
    let (whole, piece) = tokio::join!(whole, piece);
    let took = t0.elapsed();
    whole.expect(200);
    piece.expect(206);
    assert!(whole.body == data, "the capped body differs");
    assert!(
        piece.body[..] == data[..2 * 1024 * KIB],
        "the capped range differs"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "8 MiB went out in {took:?} under a cap of 4 MiB/s"
    );
}
