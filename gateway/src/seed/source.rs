//! [`GatewaySource`]: the gateway's blob files as a [`PieceSource`], so the node's transfer server
//! can serve them to peers straight from disk.
//!
//! Every blob file is complete, so [`Held::have`] is a full bit field that never changes. Its
//! channel stays open while any receiver lives (a small task holds the sender until then), so a
//! transfer server waiting for "more pieces" waits, rather than reading a closed channel as the
//! blob going away.

use std::sync::Arc;

use flotilla_node::ports::{Held, PieceFile, PieceSource, SourceError};
use flotilla_protocol::Digest;
use flotilla_protocol::piece::Bitfield;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

use super::Core;
use crate::registry::RegistryError;

/// The gateway's blob files as a piece source (from [`super::Seed::source`]).
pub struct GatewaySource {
    core: Arc<Core>,
}

impl GatewaySource {
    pub(super) fn new(core: Arc<Core>) -> Self {
        GatewaySource { core }
    }
}

fn source_error(e: RegistryError) -> SourceError {
    match e {
        RegistryError::Io(e) => SourceError::Io(e),
        RegistryError::BlobUnknown => SourceError::NotHeld("blob unknown".into()),
        other => SourceError::Other(other.to_string()),
    }
}

impl PieceSource for GatewaySource {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        let (core, d) = (self.core.clone(), digest.clone());
        async move {
            let Some(entry) = core.table(&d).await.map_err(source_error)? else {
                return Ok(None);
            };
            let full = Bitfield::full(entry.signed.table.piece_count());
            let (tx, have) = watch::channel(full);
            tokio::spawn(async move { tx.closed().await });
            Ok(Some(Held {
                table: entry.signed.clone(),
                offer: have.clone(),
                have,
                rank: None,
            }))
        }
        .boxed()
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        let (core, d) = (self.core.clone(), digest.clone());
        async move {
            let entry = core
                .table(&d)
                .await
                .map_err(source_error)?
                .ok_or_else(|| SourceError::NotHeld(d.to_string()))?;
            let range = entry
                .signed
                .table
                .piece_range(index)
                .ok_or_else(|| SourceError::NotHeld(format!("{d} has no piece {index}")))?;
            let file = core
                .file(&d)
                .await
                .map_err(source_error)?
                .ok_or_else(|| SourceError::NotHeld(d.to_string()))?;
            // A piece is at most the table's piece size, a u32.
            let len = u32::try_from(range.end - range.start)
                .map_err(|_| SourceError::Other(format!("piece {index} of {d} is too long")))?;
            // A peer is about to be sent it.
            core.note_sent(&d);
            Ok(PieceFile {
                file,
                offset: range.start,
                len,
                direct: None,
            })
        }
        .boxed()
    }

    fn served(&self, _digest: &Digest, bytes: u64) {
        self.core.served(bytes);
    }
}
