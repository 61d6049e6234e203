//! How the gateway keeps its data on disk: content-addressed blob files plus an embedded sled
//! database for everything else.
//!
//! # On-disk layout
//! ```text
//! <data_dir>/
//! ├── blobs/
//! │   ├── sha256/<first 2 hex>/<64 hex>     one file per blob, named by its digest, written once
//! │   └── sha512/<first 2 hex>/<128 hex>
//! ├── uploads/<uuid>                         data of an upload session so far (its length is the offset)
//! ├── tmp/<uuid>                             monolithic pushes in flight; emptied at every start
//! ├── identity.key                           libp2p ed25519 keypair (protobuf), mode 0600
//! └── meta/                                  the sled database (trees below)
//! ```
//! A blob pushed to many repositories is one file; repositories see it through `blob_links`.
//!
//! # sled trees
//! ```text
//! meta/ (sled)
//! ├── repos           <name>                          → ""                     repository ever existed
//! ├── blob_links      <name> \0 <digest>              → size (u64 BE)          blob visible in repository
//! ├── manifests       <digest>                        → u16 BE len ‖ media type ‖ manifest bytes
//! ├── repo_manifests  <name> \0 <digest>              → JSON {subject?, tags}  manifest present in repository
//! ├── tags            <name> \0 <tag>                 → digest                 tag → manifest
//! ├── referrers       <name> \0 <subject> \0 <digest> → descriptor (JSON)      referrers index
//! ├── uploads         <uuid>                          → JSON {repo, created_ms, touched_ms}
//! └── piece_tables    <digest>                        → SignedPieceTable::encode
//! ```
//! - `manifests` is shared by all repositories (same digest, same bytes); a repository holds a
//!   manifest only through `repo_manifests`.
//! - `repo_manifests` lists the tags pointing at the manifest, kept in step with `tags` by every
//!   transaction that moves or deletes a tag, so a delete by digest removes exactly those tags and
//!   the referrers entry of its `subject` inside one transaction, with no scan a concurrent tag
//!   could slip past. (A value that is a bare digest or empty, as the first version wrote, is read
//!   as a subject with an unknown tag list, and delete falls back to scanning the tags.)
//! - `repos` remembers every repository that ever held something, so `tags/list` tells an emptied
//!   repository (`[]`) from an unknown one (`NAME_UNKNOWN`); the catalog lists only the names that
//!   still have a key under `blob_links` or `repo_manifests`.
//! - `piece_tables` caches the signed piece table of a blob file (see [`crate::seed`]): written by
//!   the background worker after a push and on first request, never flushed on its own (a table
//!   lost in a crash is recomputed from the blob), ignored and recomputed if it no longer decodes
//!   or was signed by another identity (`identity.key` replaced).
//! - Tag lists and the catalog are range scans from `<name>\0<last>` (exclusive), stopping after
//!   `n` keys.
//!
//! `\0` cannot occur in names, tags or digests, so a prefix scan over `<name>\0` sees exactly one
//! repository (`a\0…` never matches `a/b\0…`), and keys sort lexically as the API's pagination
//! requires.
//!
//! # Crash safety
//! - A blob file appears only by `rename` from `tmp/` or `uploads/` after its digest was verified
//!   and the file fsynced; the directory is fsynced after the rename. A crash leaves at worst an
//!   orphan temp file, removed at the next start.
//! - A blob link or manifest is written only after the files it depends on are durable, and the
//!   database is flushed before the client gets its `201`. A manifest PUT writes every tree it
//!   touches in one sled transaction, so a crash shows all of it or none of it.
//! - An upload session's offset is the length of its data file, never a number recorded beside it:
//!   a record could disagree with the file after a crash between the write and the record update,
//!   the file cannot disagree with itself. So a `PATCH` needs no fsync; after a crash the client
//!   asks (`GET` on the upload) and resumes from what really reached the disk. The running hash of a
//!   session lives in memory only; after a restart (or if the file no longer has the length the
//!   hasher saw) it is rebuilt by reading the file once. The data is fsynced before it becomes a
//!   blob, and the digest check at the end catches anything a power loss garbled.
//! - At start: `tmp/` is emptied, sessions without a data file and data files without a session
//!   are removed, and sessions idle longer than the TTL are reaped (then periodically).
//!
//! # Concurrency
//! - Concurrent pushes of one blob each write their own temp file; the first `rename` installs it,
//!   later ones find it in place (or rename identical bytes over it) and only link it. A reader
//!   never sees a partial file.
//! - Requests on one upload session are serialised by a per-session lock, held by a task of its own
//!   so that a request dropped mid-body still leaves file and hash state consistent.
//! - sled transactions are serialisable, and a manifest PUT checks its references inside its
//!   transaction, so a concurrent blob unlink or manifest delete cannot slip between check and write.
//!
//! # Not done here: garbage collection
//! Blob files are never deleted by `DELETE` (which only unlinks a blob from a repository): a file
//! may be shared by many repositories, and removing unreferenced files is garbage collection,
//! which this storage does not do yet. Likewise a manifest deleted from its last repository keeps
//! its bytes in `manifests`.

pub mod blobs;
pub mod meta;
pub mod uploads;
