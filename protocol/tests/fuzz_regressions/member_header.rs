//! Property of the `member_header` fuzz target (and of the regression tests): the
//! `Flotilla-Member` header parser never panics on any bytes; a header that parses re-encodes to
//! a value that parses to the same header; and verifying it against any gateway, method and path
//! returns an answer (a stranger's garbage is an error, never a panic).

use flotilla_protocol::membership::http::MemberHeader;
use libp2p_identity::PeerId;

/// A fixed gateway peer id (any valid one will do: garbage must fail against it).
fn gateway() -> PeerId {
    "12D3KooWLSZpAbqvBXJBpeYq46o7eayeyPdK9ZZ5PPo2oGYo6TN5"
        .parse()
        .expect("a valid peer id")
}

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(h) = MemberHeader::decode(text) else {
        return;
    };
    let again = MemberHeader::decode(&h.encode()).expect("an encoded header parses");
    assert_eq!(again, h, "re-encoding changed the header");
    let _ = h.verify(&gateway(), "GET", "/flotilla/v1/blobs/x", h.timestamp);
}
