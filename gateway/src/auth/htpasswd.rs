//! The users: an htpasswd file of bcrypt entries, and the password check with its short cache.
//!
//! Only bcrypt (`$2y$`, `$2b$`, `$2a$`) is accepted: the other htpasswd formats (MD5 `$apr1$`,
//! `{SHA}`, crypt) are too cheap to brute-force. Make entries with `htpasswd -nB user`.
//!
//! A bcrypt check costs tens of milliseconds of CPU by design, and clients that use Basic auth
//! send the password with every request. So checks run on the blocking pool, at most one per
//! core at a time, and a success is remembered for a short while under an HMAC of user and
//! password (keyed with a random per-process key, so the cache never holds anything a memory
//! dump could brute-force more cheaply than the htpasswd file itself). Failures are never
//! cached. An unknown user costs one bcrypt check too, so timing does not tell which names exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

/// Most remembered successes; when full, expired ones are dropped, then all of them.
const CACHE_CAPACITY: usize = 4096;

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file cannot be read.
    #[error("reading htpasswd file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `user:<bcrypt hash>`.
    #[error("htpasswd line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parsed htpasswd entries: user name → bcrypt hash.
#[derive(Debug, Default, Clone)]
pub(crate) struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Reads and parses the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses htpasswd text: `user:hash` lines; blank lines and `#` comments are skipped.
    pub(crate) fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let fail = |reason: &str| HtpasswdError::Line {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(fail("expected `user:hash`"));
            };
            if user.is_empty() {
                return Err(fail("empty user name"));
            }
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(fail(
                    "only bcrypt entries ($2y$, $2b$, $2a$) are accepted; make them with `htpasswd -nB`",
                ));
            }
            match hash.parse::<bcrypt::HashParts>() {
                Ok(parts) if (4..=31).contains(&parts.get_cost()) => {}
                _ => return Err(fail("malformed bcrypt hash")),
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(fail(&format!("user {user:?} appears twice")));
            }
        }
        Ok(Htpasswd { users })
    }

    /// Whether `user` has an entry.
    pub(crate) fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// How many users there are.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}

/// Checks passwords against an [`Htpasswd`], remembering successes for a while.
pub(crate) struct Verifier {
    users: std::sync::Arc<Htpasswd>,
    /// A hash to check unknown users against (any user's: the answer is ignored).
    decoy: Option<String>,
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    cache_key: hmac::Key,
    ttl: Duration,
    permits: Semaphore,
}

impl Verifier {
    /// A verifier over `users` that remembers a success for `ttl` (zero: never).
    pub(crate) fn new(
        users: Htpasswd,
        ttl: Duration,
    ) -> Result<Verifier, aws_lc_rs::error::Unspecified> {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Verifier {
            decoy: users.users.values().next().cloned(),
            users: std::sync::Arc::new(users),
            cache: Mutex::new(HashMap::new()),
            cache_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            ttl,
            permits: Semaphore::new(cores),
        })
    }

    /// Whether `password` is `user`'s.
    pub(crate) async fn verify(&self, user: &str, password: &str) -> bool {
        let tag = self.cache_tag(user, password);
        if self.cached(&tag) {
            return true;
        }
        let (hash, known) = match self.users.users.get(user) {
            Some(h) => (h.clone(), true),
            None => match &self.decoy {
                Some(d) => (d.clone(), false),
                None => return false,
            },
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let ok = ok && known;
        if ok {
            self.remember(tag);
        }
        ok
    }

    fn cache_tag(&self, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        // Length-prefixed, so `a` + `b:c` and `a:b` + `c` differ.
        ctx.update(&(user.len() as u64).to_le_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn cached(&self, tag: &[u8; 32]) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(tag).is_some_and(|&until| Instant::now() < until)
    }

    fn remember(&self, tag: [u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, &mut until| now < until);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(tag, now + self.ttl);
    }

    /// How many successes are remembered (for tests).
    #[cfg(test)]
    fn cached_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cost 4, the minimum: debug builds hash slowly.
    fn entry(user: &str, password: &str) -> String {
        format!("{user}:{}", bcrypt::hash(password, 4).unwrap())
    }

    #[test]
    fn parses_bcrypt_entries_comments_and_blank_lines() {
        let text = format!(
            "# users\n\n{}\r\n{}\n",
            entry("alice", "a"),
            entry("bob", "b").replace("$2b$", "$2y$")
        );
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.contains("alice") && h.contains("bob") && !h.contains("carol"));
    }

    #[test]
    fn refuses_other_formats_and_malformed_lines() {
        let cases = [
            ("alice:$apr1$abc$def", "only bcrypt"),
            ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "only bcrypt"),
            ("alice:plain", "only bcrypt"),
            ("no-colon", "user:hash"),
            (":$2y$04$abcdefghijklmnopqrstuu", "empty user"),
            ("alice:$2y$04$short", "malformed"),
        ];
        for (text, want) in cases {
            let e = Htpasswd::parse(text).unwrap_err().to_string();
            assert!(e.contains("line 1") && e.contains(want), "{text}: {e}");
        }
        let dup = format!("{}\n{}", entry("a", "x"), entry("a", "y"));
        let e = Htpasswd::parse(&dup).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
    }

    #[tokio::test]
    async fn verifies_and_caches_only_successes() {
        let h = Htpasswd::parse(&format!(
            "{}\n{}",
            entry("alice", "s3cret"),
            entry("bob", "pw")
        ))
        .unwrap();
        let v = Verifier::new(h, Duration::from_secs(60)).unwrap();
        assert!(!v.verify("alice", "wrong").await);
        assert_eq!(v.cached_len(), 0);
        assert!(v.verify("alice", "s3cret").await);
        assert_eq!(v.cached_len(), 1);
        assert!(v.verify("alice", "s3cret").await);
        assert_eq!(v.cached_len(), 1);
        // Another user's password, an unknown user, and a user/password split elsewhere.
        assert!(!v.verify("bob", "s3cret").await);
        assert!(!v.verify("carol", "pw").await);
        assert!(!v.verify("alices", "3cret").await);
        assert_eq!(v.cached_len(), 1);
    }

    #[tokio::test]
    async fn zero_ttl_disables_the_cache_and_no_users_refuses_everyone() {
        let h = Htpasswd::parse(&entry("alice", "pw")).unwrap();
        let v = Verifier::new(h, Duration::ZERO).unwrap();
        assert!(v.verify("alice", "pw").await);
        assert_eq!(v.cached_len(), 0);
        let empty = Verifier::new(Htpasswd::default(), Duration::from_secs(60)).unwrap();
        assert!(!empty.verify("alice", "pw").await);
    }
}
