"""oras (the OCI artifacts Python SDK) and python-dxf against a registry over plain HTTP.

Usage: oras_dxf.py HOST:PORT WORKDIR

oras: pushes an artifact (two files, chunked uploads) as oras/artifact:v1; pushes an SBOM whose
`subject` is v1 (artifact type from its config media type) as :sbom; pushes a signature-like
manifest by digest only, with an explicit `artifactType`, the empty config and a subject; pulls
all three back and compares bytes; lists tags. python-dxf: pushes and pulls a blob, tags it five
times and lists the tags two per page.

Everything the registry must have done is checked here byte for byte; what the referrers API must
answer is checked by the Rust test (tests/clients/oras.rs) from the JSON object printed last.
Exits non-zero on any mismatch.
"""

import hashlib
import json
import os
import sys

import dxf
import oras.client
import oras.oci
import requests

host, work = sys.argv[1], sys.argv[2]
repo = "oras/artifact"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
client = oras.client.OrasClient(hostname=host, insecure=True)
report = {}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def write(name, data):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_bytes(reference):
    r = requests.get(
        f"http://{host}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    )
    check(r.status_code == 200, f"GET manifest {reference}: {r.status_code} {r.text}")
    check(
        r.headers.get("Docker-Content-Digest") == sha256(r.content),
        f"Docker-Content-Digest of {reference}",
    )
    return r.content


# 1. The subject: two files, uploaded in 256 KiB chunks (POST, PATCH…, PUT).
readme = write("readme.txt", b"flotilla artifact\n" * 1000)
data = write("data.bin", os.urandom(1_500_000))
resp = client.push(
    target=f"{host}/{repo}:v1",
    files=[readme, data],
    disable_path_validation=True,
    do_chunked=True,
    chunk_size=256 * 1024,
)
check(resp.status_code == 201, f"push v1: {resp.status_code} {resp.text}")
v1 = manifest_bytes("v1")
report["subject"] = {"digest": sha256(v1), "size": len(v1)}
check(resp.headers.get("Docker-Content-Digest") == sha256(v1), "push v1 digest")
subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=sha256(v1), size=len(v1))

# 2. An SBOM referring to v1; its artifact type is its config's media type.
sbom = write("sbom.json", json.dumps({"sbom": "for v1", "packages": ["a", "b"]}).encode())
config = write("config.json", b'{"sbom": true}')
resp = client.push(
    target=f"{host}/{repo}:sbom",
    files=[sbom],
    manifest_config=f"{config}:application/vnd.example.sbom",
    manifest_annotations={"org.example.kind": "sbom"},
    subject=subject,
    disable_path_validation=True,
)
check(resp.status_code == 201, f"push sbom: {resp.status_code} {resp.text}")
sbom_manifest = manifest_bytes("sbom")
report["sbom"] = {
    "digest": sha256(sbom_manifest),
    "size": len(sbom_manifest),
    "oci_subject": resp.headers.get("OCI-Subject"),
}

# 3. A signature: explicit artifactType, the empty config, pushed by digest with no tag.
container = client.get_container(f"{host}/{repo}:unused")
empty = write("empty.json", b"{}")
empty_desc = {"mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": 2}
check(client.upload_blob(empty, container, empty_desc).status_code in (200, 201), "empty blob")
sig = write("signature.sig", b"not really a signature " + os.urandom(64))
sig_layer = oras.oci.NewLayer(sig, media_type="application/vnd.example.signature.v1")
sig_layer["annotations"] = {"org.opencontainers.image.title": "signature.sig"}
check(client.upload_blob(sig, container, sig_layer).status_code in (200, 201), "sig blob")
sig_manifest = {
    "schemaVersion": 2,
    "mediaType": OCI_MANIFEST,
    "artifactType": "application/vnd.example.signature",
    "config": empty_desc,
    "layers": [sig_layer],
    "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(v1), "size": len(v1)},
    "annotations": {"org.example.signer": "test"},
}
# upload_manifest sends `json=`: requests serialises it with json.dumps' defaults.
sig_digest = sha256(json.dumps(sig_manifest).encode())
resp = client.upload_manifest(sig_manifest, client.get_container(f"{host}/{repo}@{sig_digest}"))
check(resp.status_code == 201, f"push signature by digest: {resp.status_code} {resp.text}")
check(resp.headers.get("Docker-Content-Digest") == sig_digest, "signature digest")
sig_bytes = manifest_bytes(sig_digest)
report["signature"] = {
    "digest": sig_digest,
    "size": len(sig_bytes),
    "oci_subject": resp.headers.get("OCI-Subject"),
}

# 4. Pull everything back and compare bytes.
for target, sources in (
    (f"{repo}:v1", [readme, data]),
    (f"{repo}:sbom", [sbom]),
    (f"{repo}@{sig_digest}", [sig]),
):
    out = os.path.join(work, "pull-" + target.replace("/", "_").replace(":", "_"))
    files = client.pull(target=f"{host}/{target}", outdir=out)
    got = {os.path.basename(f): read(f) for f in files}
    want = {os.path.basename(s): read(s) for s in sources}
    check(got == want, f"pulled files of {target}: {sorted(got)} vs {sorted(want)}")
report["oras_tags"] = client.get_tags(f"{host}/{repo}")

# 5. python-dxf: a plain registry v2 client.
d = dxf.DXF(host, "dxf/blobs", insecure=True)
payload = os.urandom(300_000)
blob = write("dxf.bin", payload)
digest = d.push_blob(blob)
check(digest == sha256(payload), "dxf push_blob digest")
check(d.blob_size(digest) == len(payload), "dxf blob_size")
check(b"".join(d.pull_blob(digest)) == payload, "dxf pull_blob bytes")
tags = [f"t{i}" for i in range(5, 0, -1)]
for t in tags:
    d.set_alias(t, digest)
check(d.get_alias("t3") == [digest], "dxf get_alias")
report["dxf"] = {"digest": digest, "tags": d.list_aliases(batch_size=2)}
print(json.dumps(report))
