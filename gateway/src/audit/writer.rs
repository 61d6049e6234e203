//! The audit file writer: one thread, fed by a bounded channel, appending lines to one file.
//!
//! The file is opened with `O_APPEND` and only ever written at its end; nothing here seeks,
//! truncates or rewrites it, so rotation is the operator's (`copytruncate`-free: rename the file
//! and restart, or let it grow).
//!
//! # Durability
//! Each line is handed to the kernel with its own `write` as soon as it is received (the "flush
//! per line"): a crash or kill of the gateway loses only lines still waiting in the channel. `fsync` runs in batches
//! (group commit): after the writer has emptied the channel, or after `fsync_batch` lines while
//! lines keep coming. Only a machine crash can then lose lines, and only those written since the
//! last sync, a window of one disk flush when idle. Syncing every line instead would make the
//! audit log's throughput that of the disk's flushes (milliseconds each on most disks) and turn
//! every busy minute into a full channel, i.e. dropped lines (see the parent module): batching
//! keeps the cost of a sync shared by every line written while the previous one ran.
//!
//! A dedicated thread (rather than a task on the blocking pool) because it lives as long as the
//! gateway and blocks on every `write` and `fsync`.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::AuditCounters;

/// What the writer is sent.
#[derive(Debug)]
pub(crate) enum Msg {
    /// One complete line, newline included.
    Line(Vec<u8>),
    /// Sync and stop; lines sent after this are dropped.
    Stop,
}

/// Opens (creating, with its parent directories) `path` for appending.
pub(crate) fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Starts the writer thread.
pub(crate) fn spawn(
    file: File,
    rx: mpsc::Receiver<Msg>,
    counters: Arc<AuditCounters>,
    fsync_batch: usize,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flotilla-audit".to_owned())
        .spawn(move || run(file, rx, &counters, fsync_batch.max(1)))
}

/// The writer's loop (see the module docs).
fn run(mut file: File, mut rx: mpsc::Receiver<Msg>, counters: &AuditCounters, batch: usize) {
    let mut unsynced = 0usize;
    loop {
        let msg = if unsynced == 0 {
            match rx.blocking_recv() {
                Some(m) => m,
                None => break,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::error::TryRecvError::Empty) => {
                    sync(&file, counters);
                    unsynced = 0;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        };
        match msg {
            Msg::Line(line) => {
                if let Err(e) = file.write_all(&line) {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    counters.drop_line("write failed");
                    tracing::error!(error = %e, "writing the audit log failed");
                    continue;
                }
                counters.written.fetch_add(1, Ordering::Relaxed);
                unsynced += 1;
                if unsynced >= batch {
                    sync(&file, counters);
                    unsynced = 0;
                }
            }
            Msg::Stop => break,
        }
    }
    if unsynced > 0 {
        sync(&file, counters);
    }
    rx.close();
    while let Ok(Msg::Line(_)) = rx.try_recv() {
        counters.drop_line("writer stopped");
    }
}

fn sync(file: &File, counters: &AuditCounters) {
    if let Err(e) = file.sync_data() {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "syncing the audit log failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_never_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"earlier\":true}\n").unwrap();
        let counters = Arc::new(AuditCounters::default());
        let (tx, rx) = mpsc::channel(4);
        let t = spawn(open(&path).unwrap(), rx, counters.clone(), 2).unwrap();
        for i in 0..5 {
            tx.blocking_send(Msg::Line(format!("{{\"n\":{i}}}\n").into_bytes()))
                .unwrap();
        }
        tx.blocking_send(Msg::Stop).unwrap();
        t.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], "{\"earlier\":true}");
        assert_eq!(lines[5], "{\"n\":4}");
        assert_eq!(counters.written.load(Ordering::Relaxed), 5);
        assert!(tx.blocking_send(Msg::Line(b"late\n".to_vec())).is_err());
    }
}
