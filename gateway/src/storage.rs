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
//! ├── tmp/                                   monolithic pushes in flight; emptied at every start
//! └── meta/                                  the sled database (trees below)
//! ```
//!
//! # sled trees
//! ```text
//! repos           <name>                          → ""                      repository exists (catalog)
//! blob_links      <name> \0 <digest>              → size (u64, big-endian)  blob visible in repository
//! manifests       <digest>                        → u16 BE len, media type, manifest bytes
//! repo_manifests  <name> \0 <digest>              → subject digest or ""    manifest present in repository
//! tags            <name> \0 <tag>                 → digest                  tag → manifest
//! referrers       <name> \0 <subject> \0 <digest> → descriptor (JSON)       referrers index
//! uploads         <uuid>                          → session (JSON: repo, created/touched ms)
//! ```
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
//! - An upload session's offset is the length of its data file: after a crash, the client asks
//!   (`GET` on the upload) and resumes from what really reached the disk.
//!
//! Blob files are never deleted by `DELETE` (which only unlinks a blob from a repository): a file
//! may be shared by many repositories, and removing unreferenced files is garbage collection,
//! which this storage does not do yet.

pub mod blobs;
pub mod meta;
pub mod uploads;
