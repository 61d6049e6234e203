//! Property of the `reference` fuzz target (and of the regression tests): repository names, tags,
//! references, digests and `/v2/` routing never panic on any text, and whatever parses displays
//! (and serialises) back to exactly the text it came from.

use flotilla_protocol::digest::Digest;
use flotilla_protocol::reference::{
    MAX_NAME_LEN, MAX_TAG_LEN, Reference, RepoName, Tag, V2Route, split_v2_path,
};

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    // The parsers take `&str` (the HTTP layer has decoded the path); invalid UTF-8 still reaches
    // them as replacement characters.
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;

    if let Ok(name) = s.parse::<RepoName>() {
        assert_eq!(name.to_string(), s);
        assert_eq!(name.as_str(), s);
        assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
        assert!(s.is_ascii(), "names are ASCII");
        assert!(!s.contains("//") && !s.starts_with('/') && !s.ends_with('/'));
        assert!(
            !s.split('/').any(|c| c == "." || c == ".."),
            "path traversal"
        );
        let json = serde_json::to_string(&name).expect("a name serialises");
        assert_eq!(serde_json::from_str::<RepoName>(&json).ok(), Some(name));
    }

    if let Ok(tag) = s.parse::<Tag>() {
        assert_eq!(tag.to_string(), s);
        assert!(!s.is_empty() && s.len() <= MAX_TAG_LEN);
        assert!(!s.contains(':') && !s.contains('/'));
        let json = serde_json::to_string(&tag).expect("a tag serialises");
        assert_eq!(serde_json::from_str::<Tag>(&json).ok(), Some(tag));
    }

    if let Ok(d) = s.parse::<Digest>() {
        check_digest(&d, s);
    }

    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
        if let Reference::Digest(d) = &r {
            check_digest(d, s);
        }
    }

    if let Ok(route) = split_v2_path(s) {
        // The route is cut out of the path exactly, so it renders back to it; the one
        // exception is the upload start, where the trailing `/` is optional.
        let path = render(&route);
        let trailing_slash_dropped =
            matches!(route, V2Route::UploadStart(_)) && path.strip_suffix('/') == Some(s);
        assert!(
            path == s || trailing_slash_dropped,
            "{s:?} routed to {route:?}"
        );
        assert_eq!(split_v2_path(&path), Ok(route));
    }
}

fn check_digest(d: &Digest, s: &str) {
    assert_eq!(d.to_string(), s);
    assert_eq!(d.as_str(), s);
    assert_eq!(
        Digest::from_bytes(d.algorithm(), &d.bytes()).ok().as_ref(),
        Some(d)
    );
    assert_eq!(Digest::from_cid(&d.to_cid()).ok().as_ref(), Some(d));
    assert!(s.starts_with(d.short()));
}

fn render(route: &V2Route) -> String {
    match route {
        V2Route::Base => String::new(),
        V2Route::Catalog => "_catalog".to_owned(),
        V2Route::Manifest(n, r) => format!("{n}/manifests/{r}"),
        V2Route::Blob(n, d) => format!("{n}/blobs/{d}"),
        V2Route::UploadStart(n) => format!("{n}/blobs/uploads/"),
        V2Route::Upload(n, id) => format!("{n}/blobs/uploads/{id}"),
        V2Route::Tags(n) => format!("{n}/tags/list"),
        V2Route::Referrers(n, d) => format!("{n}/referrers/{d}"),
    }
}
