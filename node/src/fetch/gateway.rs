//! The gateway's node-facing HTTP endpoints, as the fetcher uses them: its identity
//! (`/flotilla/v1/info`), signed piece tables (`/flotilla/v1/pieces/<digest>`) and single pieces
//! of blobs (`/flotilla/v1/blobs/<digest>` with `Range`), the origin of last resort.
//!
//! A piece from the origin is streamed chunk by chunk into the store's [`PieceReceiver`], which
//! verifies it; nothing holds the piece whole here.

use std::ops::Range;
use std::time::Duration;

use flotilla_protocol::Digest;
use libp2p::PeerId;
use reqwest::{StatusCode, header};
use serde::Deserialize;

use super::FetchError;
use crate::gateway_http::{HttpTls, MemberSigner, RevocationsHeard};

/// The header naming the member an origin refusal's piece went to.
const HOLDER: &str = "flotilla-holder";
/// Header on an origin request: the other pieces (byte ranges) the gateway may send instead.
const ALTERNATIVES: &str = "flotilla-alternatives";
/// Header on an origin request: peers this download banned, whose copies are no use to it.
const BANNED: &str = "flotilla-banned";
/// Most banned peers named in one request (the gateway takes up to 32).
const MAX_BANNED: usize = 32;
use crate::ports::{PieceSink, Verdict};

/// The gateway's answer about a blob's swarm (SPEC §3.7, `GET /flotilla/v1/swarm/<digest>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct SwarmAnswer {
    /// Nodes that started downloading it in the last 30–60 s.
    #[serde(default)]
    pub(crate) fetchers: u32,
    /// No byte of it has left the gateway since it was pushed: no node holds a piece.
    #[serde(default)]
    pub(crate) unsent: bool,
}

/// Largest signed piece table accepted (a 128 GiB blob at 64 MiB pieces needs 64 KiB of hashes;
/// the limit leaves room for far larger blobs while bounding what a bad answer costs).
const MAX_TABLE_BYTES: usize = 8 << 20;

/// The `/flotilla/v1/info` answer (only the part used here).
#[derive(Deserialize)]
struct Info {
    peer_id: String,
}

/// Why the gateway did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// No HTTP answer (connection refused, timeout, reset).
    #[error("gateway unreachable: {0}")]
    Http(#[from] reqwest::Error),
    /// An answer with an unexpected status.
    #[error("gateway answered {0}")]
    Status(StatusCode),
    /// An answer that is not what the endpoint promises.
    #[error("bad answer from the gateway: {0}")]
    Malformed(String),
}

/// What became of one origin request.
#[derive(Debug)]
pub(crate) enum OriginOutcome {
    /// The store judged the piece (`bytes` were received).
    Received { verdict: Verdict, bytes: u64 },
    /// 429 or 503: the gateway is busy or sent that piece to the swarm moments ago; `holder` is
    /// the member it went to, when the gateway says (`Flotilla-Holder`).
    Refused { holder: Option<PeerId> },
    /// Anything else (no answer, an error status, a truncated body, a store error).
    Failed { reason: String },
}

/// One origin request: piece `index` (bytes `range`) of a blob of `blob_size` bytes, the pieces
/// the gateway may send instead, and the peers whose copies are no use to us.
pub(crate) struct OriginAsk<'a> {
    pub(crate) piece: (u32, Range<u64>),
    pub(crate) alternatives: &'a [(u32, Range<u64>)],
    pub(crate) banned: &'a [PeerId],
    pub(crate) blob_size: u64,
}

/// A client for one gateway.
#[derive(Clone)]
pub(crate) struct GatewayClient {
    base: String,
    http: reqwest::Client,
    member: MemberSigner,
    revocations: RevocationsHeard,
    timeout: Duration,
}

impl GatewayClient {
    /// A client for the gateway at `url` (`http://host:port`, an optional trailing `/`).
    pub(crate) fn new(
        url: &str,
        tls: &HttpTls,
        member: MemberSigner,
        revocations: RevocationsHeard,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Self, FetchError> {
        let bad = |reason: String| FetchError::BadGatewayUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("not an http(s) URL".to_owned()));
        }
        let http = tls.client(connect).map_err(|e| bad(e.to_string()))?;
        Ok(GatewayClient {
            base: url.trim_end_matches('/').to_owned(),
            http,
            member,
            revocations,
            timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a member-signed request and notes the revocation `seq` its answer names.
    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        let res = req.send().await?;
        self.revocations.note(res.headers());
        Ok(res)
    }

    /// A member-signed `GET` of `path`.
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let url = self.url(path);
        self.member
            .sign(self.http.get(&url), &reqwest::Method::GET, &url)
    }

    /// The gateway's peer id, from `/flotilla/v1/info`.
    pub(crate) async fn info(&self) -> Result<PeerId, FetchError> {
        let url = self.url("/flotilla/v1/info");
        let failed = |reason: String| FetchError::GatewayIdentity {
            url: url.clone(),
            reason,
        };
        let res = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !res.status().is_success() {
            return Err(failed(format!("status {}", res.status())));
        }
        let body = read_limited(res, 64 << 10)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let info: Info = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
        info.peer_id
            .parse::<PeerId>()
            .map_err(|e| failed(e.to_string()))
    }

    /// The signed piece table bytes of `digest`, or `None` if the gateway does not know it.
    pub(crate) async fn table(&self, digest: &Digest) -> Result<Option<Vec<u8>>, GatewayError> {
        let res = self
            .send(
                self.get(&format!("/flotilla/v1/pieces/{digest}"))
                    .timeout(self.timeout),
            )
            .await?;
        match res.status() {
            StatusCode::OK => Ok(Some(read_limited(res, MAX_TABLE_BYTES).await?)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(GatewayError::Status(s)),
        }
    }

    /// What the gateway knows of the swarm for `digest` (its `GET /flotilla/v1/swarm/<digest>`):
    /// how many nodes it saw start downloading it in the last 30–60 s, and whether no byte of it
    /// has left the gateway yet. Nothing known (0, not unsent) from a gateway that does not say.
    pub(crate) async fn swarm(&self, digest: &Digest) -> Result<SwarmAnswer, GatewayError> {
        let res = self
            .send(
                self.get(&format!("/flotilla/v1/swarm/{digest}"))
                    .timeout(self.timeout),
            )
            .await?;
        match res.status() {
            StatusCode::OK => {
                let body = read_limited(res, 4 << 10).await?;
                Ok(serde_json::from_slice(&body).unwrap_or_default())
            }
            StatusCode::NOT_FOUND => Ok(SwarmAnswer::default()),
            s => Err(GatewayError::Status(s)),
        }
    }

    /// Fetches piece `index` (bytes `range`) of `digest` and streams it into the store. With
    /// `alternatives` (other pieces, best first, SPEC §3.7) the gateway may send one of those
    /// instead when another member has `index`: `tell` hears which before the body streams, and
    /// the piece that came is returned with the outcome. `banned` peers are named so that the
    /// gateway does not refuse a piece because one of them holds it.
    pub(crate) async fn fetch_piece<F: Future<Output = ()>>(
        &self,
        sink: &dyn PieceSink,
        digest: &Digest,
        ask: OriginAsk<'_>,
        tell: impl FnOnce(u32) -> F,
    ) -> (u32, OriginOutcome) {
        let OriginAsk {
            piece: (index, range),
            alternatives,
            banned,
            blob_size,
        } = ask;
        let failed = |reason: String| OriginOutcome::Failed { reason };
        let offered: Vec<(u64, u64)> = alternatives
            .iter()
            .map(|(_, r)| (r.start, r.end.saturating_sub(1)))
            .collect();
        let mut req = self.get(&format!("/flotilla/v1/blobs/{digest}")).header(
            header::RANGE,
            format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
        );
        if let Some(v) = flotilla_protocol::range::format_alternatives(&offered) {
            req = req.header(ALTERNATIVES, v);
        }
        if !banned.is_empty() {
            let ids: Vec<String> = banned
                .iter()
                .take(MAX_BANNED)
                .map(|p| p.to_string())
                .collect();
            req = req.header(BANNED, ids.join(","));
        }
        let res = match self.send(req).await {
            Ok(res) => res,
            Err(e) => return (index, failed(e.to_string())),
        };
        let (index, range) = match res.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = res
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| flotilla_protocol::range::parse_content_range(v).ok())
                    .map(|(start, _)| start);
                match start {
                    Some(s) if s == range.start => (index, range),
                    Some(s) => match alternatives.iter().find(|(_, r)| r.start == s) {
                        Some((alt, r)) => {
                            tell(*alt).await;
                            (*alt, r.clone())
                        }
                        None => {
                            return (
                                index,
                                failed(format!(
                                    "gateway sent bytes from {s}, neither piece {index} nor an \
                                     alternative"
                                )),
                            );
                        }
                    },
                    None => {
                        return (
                            index,
                            failed("gateway sent 206 without a valid Content-Range".to_owned()),
                        );
                    }
                }
            }
            // A server may ignore `Range`; the whole blob is then exactly this piece only if the
            // blob is one piece.
            StatusCode::OK if range.start == 0 && range.end == blob_size => (index, range),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let holder = res
                    .headers()
                    .get(HOLDER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                return (index, OriginOutcome::Refused { holder });
            }
            s => {
                return (
                    index,
                    failed(format!("gateway answered {s} for piece {index}")),
                );
            }
        };
        (
            index,
            self.stream_piece(sink, digest, index, range, res).await,
        )
    }

    /// Streams the body of `res` into the store as piece `index` (bytes `range`).
    async fn stream_piece(
        &self,
        sink: &dyn PieceSink,
        digest: &Digest,
        index: u32,
        range: Range<u64>,
        mut res: reqwest::Response,
    ) -> OriginOutcome {
        let failed = |reason: String| OriginOutcome::Failed { reason };
        let want = range.end - range.start;
        let mut receiver = match sink.receive(digest, index) {
            Ok(r) => r,
            Err(e) => return failed(format!("store refused piece {index}: {e}")),
        };
        let mut got = 0u64;
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    got += chunk.len() as u64;
                    if got > want {
                        return failed(format!("gateway sent more than piece {index}"));
                    }
                    if let Err(e) = receiver.write(&chunk).await {
                        return failed(format!("store: {e}"));
                    }
                }
                Ok(None) => break,
                Err(e) => return failed(format!("reading piece {index}: {e}")),
            }
        }
        if got != want {
            return failed(format!(
                "gateway sent {got} of the {want} bytes of piece {index}"
            ));
        }
        match receiver.finish().await {
            Ok(verdict) => OriginOutcome::Received {
                verdict,
                bytes: got,
            },
            Err(e) => failed(format!("store: {e}")),
        }
    }
}

/// The body of `res`, refused beyond `limit` bytes.
async fn read_limited(mut res: reqwest::Response, limit: usize) -> Result<Vec<u8>, GatewayError> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::Malformed(format!("body over {limit} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::Malformed(format!("body over {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::SwarmAnswer;

    #[test]
    fn the_swarm_answer_reads_old_and_new_gateways() {
        let old: SwarmAnswer = serde_json::from_str(r#"{"fetchers": 3}"#).unwrap();
        assert_eq!(
            old,
            SwarmAnswer {
                fetchers: 3,
                unsent: false
            }
        );
        let new: SwarmAnswer = serde_json::from_str(r#"{"fetchers": 1, "unsent": true}"#).unwrap();
        assert!(new.unsent);
    }
}
