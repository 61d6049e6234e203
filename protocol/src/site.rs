//! Site labels: the name an operator gives a group of hosts on one fast network (a data centre,
//! a rack row, an edge location), and the DHT key under which a site's nodes find each other.
//!
//! A node configured with a site announces each blob it downloads twice: under the blob's key,
//! as every node does, and under [`site_key`] of its site, and it tells its site in every
//! Welcome (SPEC §5.2). Its downloads then know which peers share their site before opening a
//! session (a lookup of the site key) and for certain once one is open (the Welcome), which is
//! what the scheduler's locality rules need: a site then takes each piece from afar about once.
//! Labels are compared byte for byte; a peer without a label is in no site.

use std::time::Duration;

use crate::digest::Digest;

/// Longest site label, in bytes.
pub const MAX_SITE_LEN: usize = 63;

/// Most members of its site a download asks one lookup of the site key for (SPEC §6.2).
pub const SITE_LOOKUP_LIMIT: usize = 64;

/// The round trip a driver hands the scheduler (`peer_rtt`) and the rotation policy for a peer
/// whose site is known from labels rather than measured: 1 ms for the same site, 100 ms for
/// another, either side of their `near_rtt` (10 ms by default), which is all they read.
pub fn label_rtt(same_site: bool) -> Duration {
    if same_site {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(100)
    }
}

/// Prefix of every site key (versioned, so the layout can change).
const SITE_KEY_PREFIX: &[u8] = b"/flotilla/site/1/";

/// A site label that [`check_site`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Empty, or longer than [`MAX_SITE_LEN`] bytes.
    #[error("a site label is 1 to {MAX_SITE_LEN} bytes long, not {0}")]
    Length(usize),
    /// A character outside `A-Z a-z 0-9 . _ -`.
    #[error("a site label holds only A-Z, a-z, 0-9, '.', '_' and '-', not {0:?}")]
    Character(char),
}

/// Checks a site label: 1 to [`MAX_SITE_LEN`] bytes of `A-Z a-z 0-9 . _ -`.
///
/// # Errors
/// [`SiteError`] naming what is wrong.
pub fn check_site(label: &str) -> Result<(), SiteError> {
    if label.is_empty() || label.len() > MAX_SITE_LEN {
        return Err(SiteError::Length(label.len()));
    }
    match label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(SiteError::Character(c)),
        None => Ok(()),
    }
}

/// The DHT key under which the nodes of `site` that download or hold `digest` announce
/// themselves: `/flotilla/site/1/<site>/` followed by the blob's CID bytes (the blob's own key).
pub fn site_key(digest: &Digest, site: &str) -> Vec<u8> {
    let cid = digest.to_cid().to_bytes();
    let mut key = Vec::with_capacity(SITE_KEY_PREFIX.len() + site.len() + 1 + cid.len());
    key.extend_from_slice(SITE_KEY_PREFIX);
    key.extend_from_slice(site.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&cid);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        assert_eq!(check_site("fra-1.dc_2"), Ok(()));
        assert_eq!(check_site(""), Err(SiteError::Length(0)));
        assert_eq!(check_site(&"a".repeat(64)), Err(SiteError::Length(64)));
        assert_eq!(check_site(&"a".repeat(63)), Ok(()));
        assert_eq!(check_site("a b"), Err(SiteError::Character(' ')));
        assert_eq!(check_site("a/b"), Err(SiteError::Character('/')));
        assert_eq!(check_site("é"), Err(SiteError::Character('é')));
    }

    #[test]
    fn site_keys_differ_by_site_and_blob_and_never_equal_the_blob_key() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let ka = site_key(&a, "x");
        assert!(ka.starts_with(b"/flotilla/site/1/x/"));
        assert!(ka.ends_with(&a.to_cid().to_bytes()));
        assert_ne!(ka, site_key(&a, "y"));
        assert_ne!(ka, site_key(&b, "x"));
        assert_ne!(ka, a.to_cid().to_bytes());
        // A label cannot contain '/', so no two (site, blob) pairs share a key.
        assert_ne!(site_key(&a, "x-y"), site_key(&a, "x"));
    }
}
