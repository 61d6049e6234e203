//! The store's blocking disk work: recovery at open (re-hashing what was not persisted),
//! creating and deleting blob files with their records, and persisting a blob's state in the
//! order the durability rule needs (file synced before its bits are written). Every function
//! here blocks; callers run them on `spawn_blocking`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{
    Bitfield, MAX_BLOCKS_PER_PIECE, MAX_PIECE_SIZE, PieceChecker, PieceTable, SignedPieceTable,
};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::state::{Recovered, Snapshot};

/// Most pieces a table may have (a bitmap of 128 KiB, per-piece state bounded accordingly):
/// 64 TiB at the largest piece size.
pub(super) const MAX_PIECES: u64 = 1 << 20;
/// Read size when re-hashing pieces at open.
const VERIFY_CHUNK: usize = 1 << 20;

/// A blob's record in the `blobs` tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub size: u64,
    pub complete: bool,
    pub pinned: bool,
    pub last_used_ms: u64,
}

/// Bytes an unprivileged writer may still put on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `e` means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// Rejects a table whose fields disagree (only `decode` guarantees consistency; a table built
/// in memory may not), or that is too large to track.
pub(super) fn validate_table(t: &SignedPieceTable) -> Result<(), StoreError> {
    let t = &t.table;
    if t.piece_size == 0 || t.piece_size > MAX_PIECE_SIZE {
        return Err(StoreError::BadTable(format!(
            "piece size {} out of range",
            t.piece_size
        )));
    }
    let count = t.size.div_ceil(u64::from(t.piece_size));
    if count > MAX_PIECES {
        return Err(StoreError::BadTable(format!(
            "{count} pieces (at most {MAX_PIECES})"
        )));
    }
    if t.block_size == 0
        || !t.piece_size.is_multiple_of(t.block_size)
        || t.piece_size / t.block_size > MAX_BLOCKS_PER_PIECE
    {
        return Err(StoreError::BadTable(format!(
            "block size {} does not tile pieces of {}",
            t.block_size, t.piece_size
        )));
    }
    let blocks = t.size.div_ceil(u64::from(t.block_size));
    if t.block_hashes.len() as u64 != blocks {
        return Err(StoreError::BadTable(format!(
            "{} hashes for {blocks} blocks",
            t.block_hashes.len()
        )));
    }
    Ok(())
}

fn key(digest: &Digest) -> &[u8] {
    digest.as_str().as_bytes()
}

pub(super) fn blob_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    blobs_dir.join(digest.hex())
}

fn encode_record(r: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(r).map_err(|e| StoreError::Io(io::Error::other(e)))
}

/// Creates the blob file (sparse, at full size, also opened for direct I/O where possible) and
/// its records. The record goes in last, so a
/// record always has its table; a crash before it leaves an orphan file removed at next open.
pub(super) fn create_blob(
    blobs_dir: &Path,
    records: &sled::Tree,
    tables: &sled::Tree,
    bitmaps: &sled::Tree,
    table: &SignedPieceTable,
    direct_io: bool,
) -> Result<(File, Option<File>, Record), StoreError> {
    let digest = &table.table.digest;
    let encoded = table
        .encode()
        .map_err(|e| StoreError::BadTable(e.to_string()))?;
    let path = blob_path(blobs_dir, digest);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let count = table.table.piece_count();
    let record = Record {
        size: table.table.size,
        // A 0-byte blob has nothing to wait for.
        complete: count == 0,
        pinned: false,
        last_used_ms: 0,
    };
    let written = (|| -> Result<(), StoreError> {
        file.set_len(table.table.size)?;
        tables.insert(key(digest), encoded)?;
        bitmaps.insert(key(digest), Bitfield::new(count).encode())?;
        records.insert(key(digest), encode_record(&record)?)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = delete_blob(blobs_dir, records, tables, bitmaps, digest);
        return Err(e);
    }
    Ok((file, open_direct(&path, direct_io), record))
}

/// Removes a blob's records (record first, so a crash halfway leaves only what open cleans) and
/// its file.
pub(super) fn delete_blob(
    blobs_dir: &Path,
    records: &sled::Tree,
    tables: &sled::Tree,
    bitmaps: &sled::Tree,
    digest: &Digest,
) -> Result<(), StoreError> {
    records.remove(key(digest))?;
    tables.remove(key(digest))?;
    bitmaps.remove(key(digest))?;
    match std::fs::remove_file(blob_path(blobs_dir, digest)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes a snapshot per the durability rule: the file is synced before the bits that describe
/// it are written, and `blobs/` too when the blob completes (its directory entry must survive).
pub(super) fn persist(
    blobs_dir: &Path,
    records: &sled::Tree,
    bitmaps: &sled::Tree,
    digest: &Digest,
    snap: Snapshot,
) -> Result<(), StoreError> {
    if let Some(bits) = &snap.bits {
        snap.file.sync_data()?;
        if snap.completing {
            File::open(blobs_dir)?.sync_all()?;
        }
        bitmaps.insert(key(digest), bits.encode())?;
    }
    records.insert(key(digest), encode_record(&snap.record)?)?;
    Ok(())
}

/// What [`recover`] found.
pub(super) struct Recovery {
    pub blobs_dir: PathBuf,
    pub db: sled::Db,
    pub records: sled::Tree,
    pub tables: sled::Tree,
    pub bitmaps: sled::Tree,
    pub entries: Vec<Recovered>,
}

/// Opens the store directory and brings disk and records back into agreement (see the module
/// docs of [`super`]).
/// A second handle on `path` for direct transfers, if wanted and the file system allows.
fn open_direct(path: &Path, direct_io: bool) -> Option<File> {
    direct_io.then(|| crate::direct_io::open(path)).flatten()
}

pub(super) fn recover(dir: &Path, direct_io: bool) -> Result<Recovery, StoreError> {
    let blobs_dir = dir.join("blobs");
    std::fs::create_dir_all(&blobs_dir)?;
    let db = sled::open(dir.join("meta"))?;
    let records = db.open_tree("blobs")?;
    let tables = db.open_tree("tables")?;
    let bitmaps = db.open_tree("bitmaps")?;

    let mut entries = Vec::new();
    let mut kept: HashSet<Vec<u8>> = HashSet::new();
    for item in records.iter() {
        let (k, v) = item?;
        let loaded = load_one(&blobs_dir, &records, &tables, &bitmaps, &k, &v, direct_io);
        match loaded {
            Ok(r) => {
                kept.insert(k.to_vec());
                entries.push(r);
            }
            Err(why) => {
                tracing::warn!(key = %String::from_utf8_lossy(&k), %why, "dropping stored blob");
                records.remove(&k)?;
                tables.remove(&k)?;
                bitmaps.remove(&k)?;
                if let Some(d) = parse_key(&k) {
                    let _ = std::fs::remove_file(blob_path(&blobs_dir, &d));
                }
            }
        }
    }
    // Tables and bitmaps whose record is gone (a crash inside create or delete).
    for tree in [&tables, &bitmaps] {
        for k in tree.iter().keys() {
            let k = k?;
            if !kept.contains(k.as_ref()) {
                tree.remove(k)?;
            }
        }
    }
    // Files without a record.
    let names: HashSet<String> = entries.iter().map(|r| r.digest.hex().to_owned()).collect();
    for f in std::fs::read_dir(&blobs_dir)? {
        let f = f?;
        let name = f.file_name();
        if !names.contains(name.to_string_lossy().as_ref()) {
            tracing::info!(file = ?f.path(), "removing orphan blob file");
            let _ = std::fs::remove_file(f.path());
        }
    }
    db.flush()?;
    Ok(Recovery {
        blobs_dir,
        db,
        records,
        tables,
        bitmaps,
        entries,
    })
}

fn parse_key(k: &[u8]) -> Option<Digest> {
    std::str::from_utf8(k).ok()?.parse().ok()
}

/// Loads one record, re-verifying an incomplete blob; `Err` says why it cannot be kept.
fn load_one(
    blobs_dir: &Path,
    records: &sled::Tree,
    tables: &sled::Tree,
    bitmaps: &sled::Tree,
    k: &[u8],
    v: &[u8],
    direct_io: bool,
) -> Result<Recovered, String> {
    let digest = parse_key(k).ok_or("key is not a digest")?;
    let mut record: Record = serde_json::from_slice(v).map_err(|e| format!("record: {e}"))?;
    let table_bytes = tables
        .get(k)
        .map_err(|e| e.to_string())?
        .ok_or("no piece table")?;
    let table = SignedPieceTable::decode(&table_bytes).map_err(|e| format!("piece table: {e}"))?;
    if table.table.digest != digest || table.table.size != record.size {
        return Err("piece table does not match the record".into());
    }
    validate_table(&table).map_err(|e| e.to_string())?;
    let count = table.table.piece_count();
    let path = blob_path(blobs_dir, &digest);
    let mut open = OpenOptions::new();
    open.read(true).write(true);

    if record.complete {
        let file = open.open(&path).map_err(|e| format!("blob file: {e}"))?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != record.size {
            return Err(format!(
                "complete blob file is {len} bytes, not {}",
                record.size
            ));
        }
        return Ok(Recovered {
            digest,
            table: Arc::new(table),
            file: Arc::new(file),
            direct: open_direct(&path, direct_io).map(Arc::new),
            bits: Bitfield::full(count),
            record,
            dirty: false,
        });
    }

    let (file, mut bits) = match open.open(&path) {
        Ok(file) => {
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            let persisted = bitmaps
                .get(k)
                .map_err(|e| e.to_string())?
                .and_then(|b| Bitfield::decode(&b).ok())
                .filter(|b| b.len() == count);
            match persisted {
                // The persisted bits were written after the file was synced: trusted.
                Some(bits) if len == record.size => (file, bits),
                _ => {
                    file.set_len(record.size).map_err(|e| e.to_string())?;
                    (file, Bitfield::new(count))
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = open
                .create(true)
                .open(&path)
                .map_err(|e| format!("recreating blob file: {e}"))?;
            file.set_len(record.size).map_err(|e| e.to_string())?;
            (file, Bitfield::new(count))
        }
        Err(e) => return Err(format!("blob file: {e}")),
    };
    let found = reverify(&file, &table.table, &mut bits);
    let mut dirty = false;
    if found > 0 {
        tracing::info!(digest = %digest, found, held = bits.count(), count, "recovered pieces from disk");
        // What was read back may still be only in the page cache (a restart without a crash):
        // sync before the bits are written, as everywhere.
        let persisted = (|| -> Result<(), StoreError> {
            file.sync_data()?;
            if bits.is_complete() {
                File::open(blobs_dir)?.sync_all()?;
                record.complete = true;
            }
            bitmaps.insert(k, bits.encode())?;
            records.insert(k, encode_record(&record)?)?;
            Ok(())
        })();
        if let Err(e) = persisted {
            // The bits stay in memory, marked for the flusher to persist again.
            tracing::warn!(digest = %digest, error = %e, "persisting recovered pieces failed");
            record.complete = false;
            dirty = true;
        }
    }
    Ok(Recovered {
        digest,
        table: Arc::new(table),
        file: Arc::new(file),
        direct: open_direct(&path, direct_io).map(Arc::new),
        bits,
        record,
        dirty,
    })
}

/// Hashes every unset piece of `table` from `file` and sets those that match; returns how many.
/// A piece that cannot be read counts as missing.
pub(super) fn reverify(file: &File, table: &PieceTable, bits: &mut Bitfield) -> u32 {
    let missing: Vec<u32> = bits.iter_zeros().collect();
    let mut buf = vec![0u8; VERIFY_CHUNK.min(table.piece_size as usize)];
    let mut found = 0;
    for index in missing {
        let Some(range) = table.piece_range(index) else {
            continue;
        };
        let Ok(mut checker) = PieceChecker::new(table, index) else {
            continue;
        };
        let mut at = range.start;
        let mut ok = true;
        while at < range.end {
            // Bounded by VERIFY_CHUNK.
            let n = ((range.end - at) as usize).min(buf.len());
            if file.read_exact_at(&mut buf[..n], at).is_err() {
                ok = false;
                break;
            }
            checker.update(&buf[..n]);
            if checker.is_bad() {
                ok = false;
                break;
            }
            at += n as u64;
        }
        if ok && checker.is_complete() && bits.set(index) {
            found += 1;
        }
    }
    found
}
