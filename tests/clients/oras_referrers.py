"""oras (Python SDK) and python-dxf against a flotilla gateway.

Usage: oras_referrers.py HOST:PORT WORKDIR
Pushes an artifact, then an SBOM-like artifact whose `subject` is the first one, finds it through
the referrers API, pulls both back and compares bytes; then pushes and pulls a blob with
python-dxf. Prints one JSON object with what it saw; exits non-zero on any mismatch.
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
client = oras.client.OrasClient(hostname=host, insecure=True)
seen = {}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def write(name, data):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


artifact = write("artifact.txt", b"flotilla artifact\n" * 1000)
client.push(target=f"{host}/{repo}:v1", files=[artifact], disable_path_validation=True)

oci_manifest = "application/vnd.oci.image.manifest.v1+json"
r = requests.get(f"http://{host}/v2/{repo}/manifests/v1", headers={"Accept": oci_manifest})
check(r.status_code == 200, f"GET manifest v1: {r.status_code}")
subject_digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
check(r.headers.get("Docker-Content-Digest") == subject_digest, "Docker-Content-Digest of v1")

sbom = write("sbom.json", json.dumps({"sbom": "for v1", "packages": ["a", "b"]}).encode())
config = write("config.json", b"{}")
subject = oras.oci.Subject(mediaType=oci_manifest, digest=subject_digest, size=len(r.content))
resp = client.push(
    target=f"{host}/{repo}:sbom",
    files=[sbom],
    manifest_config=f"{config}:application/vnd.example.sbom",
    subject=subject,
    disable_path_validation=True,
)
check(resp.status_code == 201, f"push with subject: {resp.status_code}")
seen["oci_subject_header"] = resp.headers.get("OCI-Subject")
check(seen["oci_subject_header"] == subject_digest, "OCI-Subject header")

ref = requests.get(f"http://{host}/v2/{repo}/referrers/{subject_digest}")
check(ref.status_code == 200, f"referrers: {ref.status_code}")
index = ref.json()
seen["referrers"] = index["manifests"]
check(len(index["manifests"]) == 1, f"one referrer expected: {index}")
check(index["manifests"][0]["artifactType"] == "application/vnd.example.sbom", "artifactType")
filtered = requests.get(
    f"http://{host}/v2/{repo}/referrers/{subject_digest}",
    params={"artifactType": "application/vnd.other"},
)
check(filtered.json()["manifests"] == [], "filter by another artifactType")
check(filtered.headers.get("OCI-Filters-Applied") == "artifactType", "OCI-Filters-Applied")

for tag, path in (("v1", artifact), ("sbom", sbom)):
    out = os.path.join(work, f"pull-{tag}")
    files = client.pull(target=f"{host}/{repo}:{tag}", outdir=out)
    check(len(files) == 1, f"pulled files of {tag}: {files}")
    with open(files[0], "rb") as a, open(path, "rb") as b:
        check(a.read() == b.read(), f"bytes of {tag}")

# python-dxf: a plain registry v2 client.
d = dxf.DXF(host, "dxf/blobs", insecure=True)
blob = write("dxf.bin", os.urandom(300_000))
digest = d.push_blob(blob)
check(d.blob_size(digest) == 300_000, "dxf blob_size")
got = b"".join(d.pull_blob(digest))
with open(blob, "rb") as f:
    check(got == f.read(), "dxf pull_blob bytes")
seen["dxf_digest"] = digest
print(json.dumps(seen))
