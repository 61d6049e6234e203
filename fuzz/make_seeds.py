#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/: one valid example of each shape each target
parses, so libFuzzer starts from inputs that get past the first checks. Re-run after a format
change (needs the `cryptography` package for the signed piece table's ed25519 signature)."""

import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


D = sha(b"blob")
D512 = "sha512:" + hashlib.sha512(b"blob").hexdigest()

# reference: names, tags, digests, /v2/ paths
for i, s in enumerate([
    "library/alpine", "team/app/service-1.2", "my__app.v2", "v1.2.3-rc_1", D, D512,
    "", "_catalog", "library/alpine/manifests/latest", f"a/b/manifests/{D}",
    f"a/blobs/{D}", "a/b/blobs/uploads/", "a/b/blobs/uploads", "a/b/blobs/uploads/0f3c-uuid",
    "x/tags/list", f"x/referrers/{D}", "x/manifests/manifests/v1",
]):
    write("reference", f"seed{i:02}", s)

# manifest: each accepted kind, with the optional fields
cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(b"c"), "size": 7}
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(b"l"), "size": 9}
foreign = dict(layer, urls=["https://example.invalid/l"], digest=sha(b"f"))
subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(b"s"), "size": 3}
manifests = {
    "oci": {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": [layer, foreign]},
    "oci_artifact": {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "artifactType": "application/vnd.example.sbom", "config": cfg, "layers": [],
                     "subject": subject, "annotations": {"org.example": "x"}},
    "oci_index": {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                  "manifests": [dict(subject, platform={"architecture": "amd64", "os": "linux"})]},
    "docker": {"schemaVersion": 2,
               "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
               "config": cfg, "layers": [layer]},
    "docker_list": {"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                    "manifests": [subject]},
    "no_media_type": {"schemaVersion": 2, "config": cfg, "layers": [layer]},
    "no_media_type_index": {"schemaVersion": 2, "manifests": []},
    "schema1": {"schemaVersion": 1, "fsLayers": []},
}
for name, m in manifests.items():
    write("manifest", name, json.dumps(m, indent=2))

# piece_table: plain tables, a signed table, bit fields


def table(alg, digest, size, piece_size, block_size, hashes):
    count = -(-size // piece_size)
    return (bytes([2, alg]) + digest + struct.pack(">QIII", size, piece_size, block_size, count)
            + b"".join(hashes))


blob = bytes(range(256)) * 5
# Decoding does not check block hashes (BLAKE3 in real tables): any 32 bytes each will do.
h = [hashlib.blake2s(blob[i:i + 128]).digest() for i in range(0, len(blob), 128)]
t256 = table(1, hashlib.sha256(blob).digest(), len(blob), 512, 128, h)
t512 = table(2, hashlib.sha512(b"").digest(), 0, 4 << 20, 256 << 10, [])
write("piece_table", "table_sha256", t256)
write("piece_table", "table_sha512_empty", t512)
key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
pub = key.public_key().public_bytes_raw()
signer = bytes([0x08, 0x01, 0x12, 0x20]) + pub
sig = key.sign(b"flotilla-piece-table-v1" + t256)
signed = (bytes([1]) + struct.pack(">H", len(signer)) + signer + struct.pack(">H", len(sig)) + sig
          + struct.pack(">I", len(t256)) + t256)
write("piece_table", "signed", signed)
write("piece_table", "bitfield_13", bytes([0, 0, 0, 13, 0x40, 0x08]))
write("piece_table", "bitfield_0", bytes([0, 0, 0, 0]))
write("piece_table", "bitfield_full_16", bytes([0, 0, 0, 16, 0xff, 0xff]))
write("piece_table", "built", bytes([7]) + blob[:300])

# wire: one stream holding every frame type (a Piece header is followed by its payload in
# parts: u32 length, bytes; a 0 length abandons the rest)


def frame(body):
    return struct.pack(">I", len(body)) + body


bitfield = bytes([0, 0, 0, 3, 0xa0])
stream = b"".join([
    frame(bytes([0x01, 2, 1, 1]) + hashlib.sha256(b"blob").digest()),
    frame(bytes([0x01, 2, 0, 2]) + hashlib.sha512(b"blob").digest()),
    frame(bytes([0x02]) + struct.pack(">I", 2)),
    frame(bytes([0x03]) + struct.pack(">I", 2)),
    frame(bytes([0x81, 2, 0]) + struct.pack(">QI", 10, 4) + bitfield),
    frame(bytes([0x81, 2, 1]) + struct.pack(">QI", 10, 4) + struct.pack(">I", len(signed))
          + signed + bitfield),
    frame(bytes([0x82])),
    frame(bytes([0x83]) + struct.pack(">I", 1)),
    frame(bytes([0x84]) + struct.pack(">II", 0, 4)) + struct.pack(">I", 3) + b"abc"
    + struct.pack(">I", 1) + b"d",
    frame(bytes([0x89]) + struct.pack(">I", 2)),
    frame(bytes([0x8A]) + struct.pack(">I", 2)),
    frame(bytes([0x84]) + struct.pack(">II", 2, 2)) + struct.pack(">I", 1) + b"a"
    + struct.pack(">I", 0),
    frame(bytes([0x88]) + struct.pack(">I", 1)),
    frame(bytes([0x85]) + struct.pack(">I", 1)),
    frame(bytes([0x86]) + struct.pack(">I", 1)),
    frame(bytes([0x87]) + struct.pack(">H", 3) + "overloaded ✓".encode()),
])
write("wire", "all_frames", stream)
write("wire", "hello", frame(bytes([0x01, 2, 1, 1]) + hashlib.sha256(b"blob").digest()))

# range: 8 bytes of size (little-endian), then the header
for i, (size, header) in enumerate([
    (100, "bytes=0-9"), (100, "bytes=90-"), (100, "bytes=-10"), (100, "bytes=0-1,5-6"),
    (10, "BYTES = 1-2"), (0, "bytes=0-"), (2**64 - 1, f"bytes=0-{2**64 - 1}"),
    (100, "items=0-1"), (0, "0-99"), (0, "bytes 0-99/100"), (0, "bytes 0-99/*"),
    (0, "bytes=5-9"), (0, "10-9"),
]):
    write("range", f"seed{i:02}", struct.pack("<Q", size) + header.encode())

# member_header: `v1 <ts> <cert hex> <key hex> <sig hex>` (protocol::membership::http)
def ed25519_key(seed_byte):
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    raw = key.public_key().public_bytes_raw()
    proto = bytes([0x08, 0x01, 0x12, 0x20]) + raw  # libp2p PublicKey protobuf: Ed25519
    peer = bytes([0x00, len(proto)]) + proto  # identity multihash
    return key, proto, peer


fleet, fleet_proto, fleet_peer = ed25519_key(1)
node, node_proto, node_peer = ed25519_key(2)
TS = 1_800_000_000
body = bytes([1]) + struct.pack(">H", len(node_peer)) + node_peer + struct.pack(">QQ", TS, TS + 3600)
cert_sig = fleet.sign(b"flotilla-member-v1" + body)
cert = (body + struct.pack(">H", len(fleet_proto)) + fleet_proto
        + struct.pack(">H", len(cert_sig)) + cert_sig)
path = "/flotilla/v1/blobs/sha256:" + "ab" * 32
req_sig = node.sign(b"flotilla-http-v1" + fleet_peer + node_peer + struct.pack(">Q", TS)
                    + b"GET\x00" + path.encode())
header = f"v1 {TS} {cert.hex()} {node_proto.hex()} {req_sig.hex()}"
write("member_header", "valid", header)
write("member_header", "zeros", "v1 0 00 00 00")
write("member_header", "uppercase_hex", header.upper().replace("V1", "v1", 1))
