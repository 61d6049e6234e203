//! Getting a blob's piece table: from the gateway (`GET /flotilla/v1/pieces/<digest>`), else
//! from a few providers over the transfer protocol. Either way it must carry the gateway's
//! signature and name the digest asked for: a table from an untrusted peer is as good as the
//! gateway's once that holds, and a valid table of another blob is refused.
//!
//! A gateway 404 with no provider holding the blob is final ([`FetchError::NotFound`]), as is a
//! table that does not verify; no answer at all is retried with a growing pause up to the stall
//! limit.

use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::SignedPieceTable;
use libp2p::PeerId;
use tokio::time::Instant;
use tracing::debug;

use super::{FetchError, Inner};
use crate::transfer;

/// Providers asked for a piece table when the gateway does not give it.
const TABLE_PROVIDERS: usize = 4;
/// Holders a table lookup waits for before it answers.
const TABLE_LOOKUP: usize = 2;
/// Longest pause between rounds of asking for a piece table.
const MAX_TABLE_PAUSE: Duration = Duration::from_secs(5);

/// Checks that `signed` is signed by `signer` and describes `digest`.
fn check_table(
    signed: SignedPieceTable,
    signer: &PeerId,
    digest: &Digest,
) -> Result<Arc<SignedPieceTable>, FetchError> {
    let bad = |reason: String| FetchError::BadTable {
        digest: digest.clone(),
        reason,
    };
    let table = signed
        .verify(Some(signer))
        .map_err(|e| bad(e.to_string()))?;
    if table.digest != *digest {
        return Err(bad(format!("it describes {}", table.digest)));
    }
    Ok(Arc::new(signed))
}

/// The verified piece table of `digest`: from the gateway, else from a few providers; retried
/// while neither answers, up to the stall limit.
pub(super) async fn obtain(
    inner: &Inner,
    digest: &Digest,
) -> Result<Arc<SignedPieceTable>, FetchError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let signer = inner.gateway_peer().await;
        let mut last_error = String::new();
        let mut bad_table = None;
        let mut unknown = false;
        if let Ok(signer) = &signer {
            match inner.gateway.table(digest).await {
                Ok(Some(bytes)) => {
                    match SignedPieceTable::decode(&bytes)
                        .map_err(|e| FetchError::BadTable {
                            digest: digest.clone(),
                            reason: e.to_string(),
                        })
                        .and_then(|t| check_table(t, signer, digest))
                    {
                        Ok(t) => return Ok(t),
                        Err(e) => bad_table = Some(e),
                    }
                }
                Ok(None) => unknown = true,
                Err(e) => last_error = e.to_string(),
            }
            match table_from_providers(inner, digest, signer).await {
                Ok(t) => return Ok(t),
                Err(reason) => {
                    if last_error.is_empty() {
                        last_error = reason;
                    }
                }
            }
        }
        if let Some(e) = bad_table {
            return Err(e);
        }
        if unknown {
            return Err(FetchError::NotFound(digest.clone()));
        }
        if started.elapsed() + pause >= inner.cfg.stall_timeout {
            return Err(match signer {
                Err(e) => e,
                Ok(_) => FetchError::Unreachable {
                    digest: digest.clone(),
                    reason: last_error,
                },
            });
        }
        debug!(%digest, error = %last_error, "no piece table yet; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_TABLE_PAUSE);
    }
}

/// Asks a few providers for the table; the error says why none gave a good one.
async fn table_from_providers(
    inner: &Inner,
    digest: &Digest,
    signer: &PeerId,
) -> Result<Arc<SignedPieceTable>, String> {
    let limit = inner.cfg.connect_timeout;
    // A lookup answers once it has found `limit` holders, else when the DHT query ends, which
    // waits for dials to unreachable peers (the gateway itself, in a partition). One good table
    // is enough: two holders (the gateway is often one of them) end the lookup at once.
    let peers = tokio::time::timeout(limit, inner.network.find_providers(digest, TABLE_LOOKUP))
        .await
        .map_err(|_| "provider lookup timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut last = "no provider".to_owned();
    // The gateway's own peer was just asked over HTTP; while it is unreachable, dialing it
    // would only burn the connect limit before the providers that can answer.
    for peer in peers
        .into_iter()
        .filter(|p| p != signer)
        .take(TABLE_PROVIDERS)
    {
        let asked = tokio::time::timeout(limit, async {
            let stream = inner
                .network
                .open_stream(peer)
                .await
                .map_err(|e| e.to_string())?;
            transfer::fetch_table(stream, digest)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        match asked.and_then(|t| check_table(t, signer, digest).map_err(|e| e.to_string())) {
            Ok(t) => return Ok(t),
            Err(e) => {
                debug!(%digest, %peer, error = %e, "no table from provider");
                last = format!("provider {peer}: {e}");
            }
        }
    }
    Err(last)
}
