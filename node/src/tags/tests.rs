//! The tag store: newest record wins, manifests verified and bounded, everything survives a
//! reopen.

use flotilla_protocol::tagrecord::{SignedTagRecord, TagRecord, TagTarget};
use libp2p::identity::Keypair;

use super::*;

fn signed(key: &Keypair, tag: &str, seq: u64, target: TagTarget) -> SignedTagRecord {
    SignedTagRecord::sign(
        TagRecord {
            repo: "team/app".parse().unwrap(),
            tag: tag.parse().unwrap(),
            target,
            seq,
            issued_ms: 1_700_000_000_000 + seq,
        },
        key,
    )
    .unwrap()
}

fn manifest(n: u32) -> (Digest, Vec<u8>) {
    let bytes = format!(r#"{{"schemaVersion":2,"n":{n}}}"#).into_bytes();
    (Digest::sha256_of(&bytes), bytes)
}

#[test]
fn an_old_record_never_replaces_a_newer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let repo: RepoName = "team/app".parse().unwrap();
    let tag: Tag = "v1".parse().unwrap();
    let (d1, _) = manifest(1);
    let (d2, _) = manifest(2);
    {
        let store = TagStore::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(store.record(&repo, &tag).unwrap(), None);
        let r5 = signed(&key, "v1", 5, TagTarget::Manifest(d1.clone()));
        assert_eq!(
            store.offer_record(&r5).unwrap(),
            Offer::Stored { first: true }
        );
        let r9 = signed(&key, "v1", 9, TagTarget::Manifest(d2.clone()));
        assert_eq!(
            store.offer_record(&r9).unwrap(),
            Offer::Stored { first: false }
        );
        // The older one comes back (a stale peer, a late answer): ignored.
        assert_eq!(store.offer_record(&r5).unwrap(), Offer::Stale);
        // Same sequence number: nothing to learn.
        assert_eq!(store.offer_record(&r9).unwrap(), Offer::Stale);
        assert_eq!(store.record(&repo, &tag).unwrap().unwrap(), r9);
        // A deletion is a newer state like any other.
        let r10 = signed(&key, "v1", 10, TagTarget::Deleted);
        assert!(matches!(
            store.offer_record(&r10).unwrap(),
            Offer::Stored { .. }
        ));
        store.set_gateway_peer(&key.public().to_peer_id()).unwrap();
        store.flush().unwrap();
    }
    let store = TagStore::open(tmp.path(), 1 << 20).unwrap();
    let held = store.record(&repo, &tag).unwrap().unwrap();
    assert_eq!(held.record.seq, 10);
    assert_eq!(held.record.target, TagTarget::Deleted);
    assert_eq!(
        store
            .offer_record(&signed(&key, "v1", 9, TagTarget::Manifest(d2)))
            .unwrap(),
        Offer::Stale
    );
    assert_eq!(store.gateway_peer(), Some(key.public().to_peer_id()));
    assert_eq!(store.record_names().unwrap(), vec![(repo, tag)]);
}

#[test]
fn manifests_are_verified_bounded_and_evicted_least_recently_used_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (d1, m1) = manifest(1);
    let (d2, m2) = manifest(2);
    let (d3, m3) = manifest(3);
    let entry = (2 + "t".len() + m1.len()) as u64;
    {
        // Room for two entries.
        let store = TagStore::open(tmp.path(), 2 * entry).unwrap();
        assert!(matches!(
            store.put_manifest(&d1, "t", &m2),
            Err(TagStoreError::Refused(_))
        ));
        let too_big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            store.put_manifest(&Digest::sha256_of(&too_big), "t", &too_big),
            Err(TagStoreError::Refused(_))
        ));
        assert!(store.put_manifest(&d1, "t", &m1).unwrap().new);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(store.put_manifest(&d2, "t", &m2).unwrap().new);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Using d1 makes d2 the least recently used.
        assert_eq!(store.manifest(&d1).unwrap().unwrap().bytes, m1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let put = store.put_manifest(&d3, "t", &m3).unwrap();
        assert_eq!(put.evicted, vec![d2.clone()]);
        assert_eq!(store.manifest(&d2).unwrap(), None);
        assert_eq!(store.manifest_bytes(), 2 * entry);
        store.flush().unwrap();
    }
    let store = TagStore::open(tmp.path(), 2 * entry).unwrap();
    let m = store.manifest(&d3).unwrap().unwrap();
    assert_eq!(m.media_type, "t");
    assert_eq!(m.bytes, m3);
    let mut held = store.manifest_digests();
    held.sort();
    let mut want = vec![d1, d3];
    want.sort();
    assert_eq!(held, want);
}
