//! Real clients against the registry: images built with umoci and copied with skopeo, the Docker
//! engine, the oras Python SDK and python-dxf. Each test starts its own registry (see
//! `registry`: the gateway, or distribution 2.8 when checking the tests themselves) and requires
//! its tools, failing loudly when one is missing (`.ci/run` installs them).

/// docker build, push, rmi, pull, inspect and cp through the registry.
mod docker;
/// Garbage collection after `skopeo delete`: `flotilla gc` offline and the gateway's own.
mod gc;
/// oras (Python SDK) artifacts with a subject, the referrers API, python-dxf blobs and tags.
mod oras;
/// The registry under test: flotilla, or distribution 2.8 to validate the tests.
pub mod registry;
/// skopeo + umoci: OCI, Docker v2s2 and two-platform index round trips, inspect, tags, delete.
mod skopeo;

use reqwest::header::HeaderMap;

/// Lowercase hex SHA-256, computed independently of the code under test (which uses aws-lc-rs)
/// with ring, whose assembly is fast even in debug builds: the crash test hashes gigabytes.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// `sha256:<hex>` of `b`.
pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// One HTTP answer, read whole.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics with the body otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A blocking `GET` for tests that otherwise drive command-line clients.
pub fn get(url: &str, accept: Option<&str>) -> Answer {
    request(reqwest::Method::GET, url, accept)
}

/// A blocking request with an empty body (`POST` to an endpoint that takes no body, say).
pub fn request(method: reqwest::Method, url: &str, accept: Option<&str>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = flotilla_node::gateway_http::client_builder()
            .build()
            .unwrap()
            .request(method.clone(), url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.unwrap().to_vec();
        Answer {
            status,
            headers,
            body,
        }
    })
}
