//! Following the gateway's revocation list (SPEC §5.3): members the gateway revoked stop
//! counting here — their streams are refused, their records dropped, their connections closed —
//! within one poll of the revocation, not when their certificates run out a day later.
//!
//! The node polls `GET /flotilla/v1/revoked` (a conditional request: an unchanged list costs a
//! `304`), verifies the list against the fleet key, and takes it only if it is newer than the
//! one it holds (`seq`), so a replayed old list cannot restore a revoked peer. It also fetches
//! the list at once when an answer of the gateway names a newer `seq` (`Flotilla-Revocations`,
//! heard by [`RevocationsHeard`](crate::gateway_http::RevocationsHeard)): a node that is pulling
//! asks the gateway for tables and swarm counts, so it learns of a revocation within moments. The last list
//! taken is kept in `<data_dir>/revoked.bin` and applied at start, before the gateway answers:
//! a restart does not forget a revocation.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use flotilla_protocol::revocation::{RevocationList, SignedRevocationList};
use libp2p::PeerId;
use reqwest::{StatusCode, header};

use crate::swarm::SwarmHandle;

/// How often the list is polled (give or take a tenth, so a fleet started together does not
/// ask in step): a revoked member keeps its connections at most about this long. At 10,000
/// nodes the gateway answers ~170 requests a second, nearly all `304`.
pub const REVOCATION_POLL: Duration = Duration::from_secs(60);
/// Largest list accepted (4096 peer ids, a key and a signature).
const MAX_LIST_BYTES: usize = 256 << 10;
/// The file the last list taken is kept in.
const FILE: &str = "revoked.bin";
/// Least time between two fetches a heard `seq` prompts.
const HINT_GAP: Duration = Duration::from_secs(1);

/// Polls and applies the gateway's revocation list for as long as the node runs.
pub(super) async fn follow(
    http: reqwest::Client,
    gateway_url: String,
    swarm: SwarmHandle,
    data_dir: PathBuf,
    every: Duration,
    mut heard: watch::Receiver<u64>,
) {
    let path = data_dir.join(FILE);
    let mut held: Option<RevocationList> = None;
    let mut saved = tokio::fs::read(&path).await.ok();
    let mut etag: Option<String> = None;
    // The highest heard `seq` a fetch was made for: one the gateway's list does not reach (a
    // failed fetch, a forged answer) prompts no second fetch, only a higher one does.
    let mut acted_on = 0;
    loop {
        acted_on = acted_on.max(*heard.borrow_and_update());
        let fetched = Instant::now();
        // Until the gateway's identity is known no list can be verified.
        if let Some(fleet) = swarm.fleet() {
            if let Some(bytes) = saved.take() {
                match verified(&bytes, &fleet) {
                    Ok(list) => {
                        take(&swarm, &mut held, list, "kept from the last run");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, file = %path.display(), "ignoring a kept revocation list")
                    }
                }
            }
            match fetch(&http, &gateway_url, etag.as_deref()).await {
                Ok(Some((bytes, tag))) => match verified(&bytes, &fleet) {
                    Ok(list) => {
                        if take(&swarm, &mut held, list, "from the gateway")
                            && let Err(e) = keep(&path, &bytes).await
                        {
                            tracing::warn!(error = %e, "cannot keep the revocation list");
                        }
                        etag = tag;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the gateway's revocation list does not verify")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "revocation list not fetched"),
            }
        }
        // The thread-local generator must not live across the sleep (it is not `Send`).
        let jitter: f64 = rand::Rng::gen_range(&mut rand::thread_rng(), 0.9..1.1);
        let beyond = acted_on.max(held.as_ref().map_or(0, |h| h.seq));
        tokio::select! {
            () = tokio::time::sleep(every.mul_f64(jitter)) => {}
            () = newer(&mut heard, beyond) => {
                tokio::time::sleep_until(fetched + HINT_GAP).await;
            }
        }
    }
}

/// Returns once `heard` holds a `seq` above `beyond` (never, once nothing can be heard).
async fn newer(heard: &mut watch::Receiver<u64>, beyond: u64) {
    while *heard.borrow_and_update() <= beyond {
        if heard.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Decodes `bytes` and checks them against the fleet key.
fn verified(bytes: &[u8], fleet: &PeerId) -> Result<RevocationList, String> {
    let signed = SignedRevocationList::decode(bytes).map_err(|e| e.to_string())?;
    signed.verify(fleet).cloned().map_err(|e| e.to_string())
}

/// Applies `list` if it is newer than the one held; returns whether it was.
fn take(
    swarm: &SwarmHandle,
    held: &mut Option<RevocationList>,
    list: RevocationList,
    from: &str,
) -> bool {
    if held.as_ref().is_some_and(|h| h.seq >= list.seq) {
        return false;
    }
    let fresh = swarm.set_revoked(list.peers());
    let me = swarm.local_peer_id();
    for peer in fresh {
        if peer == me {
            tracing::error!(
                "the gateway revoked this node's fleet membership: peers refuse it until it is restored"
            );
        } else {
            tracing::warn!(%peer, "the gateway revoked a member; disconnecting it");
        }
    }
    tracing::debug!(
        seq = list.seq,
        revoked = list.peers().len(),
        from,
        "revocation list taken"
    );
    *held = Some(list);
    true
}

/// `GET /flotilla/v1/revoked`: the list's bytes and its ETag, or `None` when unchanged (`304`)
/// or when the gateway runs no fleet (`404`).
async fn fetch(
    http: &reqwest::Client,
    gateway_url: &str,
    etag: Option<&str>,
) -> Result<Option<(Vec<u8>, Option<String>)>, String> {
    let mut req = http.get(format!("{gateway_url}/flotilla/v1/revoked"));
    if let Some(tag) = etag {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    let res = req.send().await.map_err(|e| e.to_string())?;
    match res.status() {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED | StatusCode::NOT_FOUND => return Ok(None),
        s => return Err(format!("the gateway answered {s}")),
    }
    let tag = res
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if res
        .content_length()
        .is_some_and(|n| n > MAX_LIST_BYTES as u64)
    {
        return Err("the revocation list is too large".to_owned());
    }
    let bytes = res.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_LIST_BYTES {
        return Err("the revocation list is too large".to_owned());
    }
    Ok(Some((bytes.to_vec(), tag)))
}

/// Writes the list to `path` through a temporary file, so a crash leaves the old one or the
/// new one.
async fn keep(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
