//! The registry a client test talks to: the flotilla gateway, or, to check the tests themselves,
//! Debian's `docker-registry` (distribution 2.8), the reference implementation.
//!
//! `FLOTILLA_TEST_AGAINST=docker-registry cargo test --test tests -- clients:: crash::` runs
//! the same tests against distribution. Assertions never change with the target; only features that
//! distribution 2.8 predates (the referrers API and `OCI-Subject`, added in OCI v1.1), its
//! unordered tag lists, and the on-disk layout differ, and the tests ask about them here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Gateway, free_port, http_status, require_tool};

/// Environment variable naming the target; unset or `flotilla` means the gateway.
pub const TARGET_VAR: &str = "FLOTILLA_TEST_AGAINST";

/// A running registry under test.
pub enum TestRegistry {
    /// The real `flotilla gateway` binary.
    Flotilla(Gateway),
    /// `docker-registry` (distribution 2.8) with filesystem storage.
    Distribution(Distribution),
}

impl TestRegistry {
    /// Starts the target named by [`TARGET_VAR`] on a free loopback port with empty storage.
    pub fn start() -> TestRegistry {
        match std::env::var(TARGET_VAR).as_deref() {
            Err(_) | Ok("") | Ok("flotilla") => TestRegistry::Flotilla(Gateway::start()),
            Ok("docker-registry") => TestRegistry::Distribution(Distribution::start()),
            Ok(other) => panic!("{TARGET_VAR}={other}: expected `flotilla` or `docker-registry`"),
        }
    }

    /// `127.0.0.1:PORT`, the registry host part of an image reference.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The listening address (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        match self {
            TestRegistry::Flotilla(g) => g.addr,
            TestRegistry::Distribution(d) => d.addr,
        }
    }

    /// Whether this target implements OCI v1.1's referrers API and `OCI-Subject`.
    pub fn has_referrers_api(&self) -> bool {
        matches!(self, TestRegistry::Flotilla(_))
    }

    /// Asserts that a tag list holds exactly `want`, in lexical order as the OCI spec requires;
    /// distribution 2.8 lists tags in storage order, so only the set is checked there.
    pub fn assert_tags(&self, got: &serde_json::Value, want: &[&str], what: &str) {
        let got: Vec<&str> = got
            .as_array()
            .unwrap_or_else(|| panic!("{what}: tags are not a list: {got}"))
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let mut want = want.to_vec();
        want.sort_unstable();
        match self {
            TestRegistry::Flotilla(_) => assert_eq!(got, want, "{what}: tags, in lexical order"),
            TestRegistry::Distribution(_) => {
                let mut got = got;
                got.sort_unstable();
                assert_eq!(got, want, "{what}: tags");
            }
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        match self {
            TestRegistry::Flotilla(g) => g.kill9(),
            TestRegistry::Distribution(d) => d.kill9(),
        }
    }

    /// Starts again on the same storage and port.
    pub fn restart(&mut self) {
        match self {
            TestRegistry::Flotilla(g) => g.restart(),
            TestRegistry::Distribution(d) => {
                d.kill9();
                d.spawn();
            }
        }
    }

    /// Every blob file in storage as `(hex digest from its path, path)`; panics if a file sits
    /// where the layout has no place for it.
    pub fn blob_files(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        match self {
            // <data>/blobs/sha256/<2 hex>/<64 hex> (gateway/src/storage.rs).
            TestRegistry::Flotilla(g) => {
                for (prefix, file) in two_levels(&g.data_dir.join("blobs/sha256")) {
                    let name = file_name(&file);
                    assert!(
                        name.len() == 64 && name.starts_with(&prefix),
                        "blob file {} is not at blobs/sha256/<2 hex>/<64 hex>",
                        file.display()
                    );
                    out.push((name, file));
                }
            }
            // <root>/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data.
            TestRegistry::Distribution(d) => {
                let root = d.data.join("docker/registry/v2/blobs/sha256");
                for (_, dir) in two_levels(&root) {
                    out.push((file_name(&dir), dir.join("data")));
                }
            }
        }
        out
    }

    /// Files under the gateway's `tmp/` (monolithic pushes in flight, emptied at every start);
    /// `None` for distribution, which keeps no such directory.
    pub fn temp_files(&self) -> Option<Vec<PathBuf>> {
        match self {
            TestRegistry::Flotilla(g) => Some(
                std::fs::read_dir(g.data_dir.join("tmp"))
                    .map(|rd| rd.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default(),
            ),
            TestRegistry::Distribution(_) => None,
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("non-UTF-8 name {}", p.display()))
        .to_owned()
}

/// `(first-level name, second-level path)` for every entry two directories below `root`.
fn two_levels(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(first) = std::fs::read_dir(root) else {
        return out;
    };
    for p in first {
        let p = p.unwrap().path();
        let prefix = file_name(&p);
        for f in std::fs::read_dir(&p).unwrap() {
            out.push((prefix.clone(), f.unwrap().path()));
        }
    }
    out
}

/// A `docker-registry serve` process with its own config and storage directory.
pub struct Distribution {
    child: Option<Child>,
    addr: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Distribution {
    fn start() -> Distribution {
        require_tool("docker-registry");
        let tmp = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let data = tmp.path().join("data");
        let config = tmp.path().join("config.yml");
        // A fixed `http.secret`: upload URLs carry state signed with it, and a random one per
        // start would make every upload unknown after a restart.
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n  secret: flotilla-test\n",
                data.display()
            ),
        )
        .unwrap();
        let mut d = Distribution {
            child: None,
            addr,
            config,
            data,
            log: tmp.path().join("registry.log"),
            _tmp: tmp,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(self.addr, "GET", "/v2/") != Some(200) {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "docker-registry exited early ({st}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill9();
    }
}
