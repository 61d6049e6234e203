//! The access-control test harness: a gateway process started from a TOML config with `[auth]`
//! (and optionally `[tls]`), an htpasswd file made here with the bcrypt crate, a test CA, and
//! one small HTTP/1.1 client (hyper, plain or over rustls) that checks what every answer must
//! carry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

use crate::support::{flotilla_bin, free_port_on};

/// The users every test gateway has: `root` (an admin), `alice`, `bob`.
pub const USERS: [(&str, &str); 3] = [
    ("root", "r00t-pw"),
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
];

/// The rules most tests use.
///
/// - `public/**`: anyone pulls; alice may also push and delete.
/// - `team/*`: any user pulls; alice may also push.
/// - `locked/**`: nobody but admins.
pub const RULES: &str = r#"
[[auth.rules]]
repository = "public/**"
anonymous = ["pull"]
users = { alice = ["pull", "push", "delete"] }

[[auth.rules]]
repository = "team/*"
authenticated = ["pull"]
users = { alice = ["pull", "push"] }

[[auth.rules]]
repository = "locked/**"
"#;

/// A test certificate authority and one server certificate it signed.
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    /// The server key (PEM).
    pub key_pem: String,
}

impl Pki {
    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[String]) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "flotilla test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(names.to_vec()).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "flotilla test gateway");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// How to start a gateway.
pub struct Setup {
    /// The address to listen on (the port is picked free).
    pub ip: IpAddr,
    /// TOML appended to the `[auth]` section's keys (before the rules), e.g. `[auth.token]`.
    pub auth_extra: String,
    /// The `[[auth.rules]]`.
    pub rules: String,
    /// Serve HTTPS with this PKI.
    pub tls: Option<Pki>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auth_extra: String::new(),
            rules: RULES.to_owned(),
            tls: None,
        }
    }
}

/// A running gateway with access control.
pub struct AuthGateway {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log_path: PathBuf,
    tls: Option<Arc<rustls::ClientConfig>>,
    ca_pem: Option<String>,
    _tmp: tempfile::TempDir,
}

/// A rustls client configuration trusting only `ca_pem` (aws-lc-rs, never the process default).
pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl AuthGateway {
    /// Starts a gateway with the default setup (plain HTTP on loopback, [`RULES`]).
    pub async fn start() -> AuthGateway {
        Self::start_with(Setup::default()).await
    }

    /// Starts a gateway as `setup` says and waits until it answers.
    pub async fn start_with(setup: Setup) -> AuthGateway {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let htpasswd: String = USERS
            .iter()
            .map(|(u, p)| {
                format!(
                    "{u}:{}\n",
                    bcrypt::hash(p, 4).unwrap().replace("$2b$", "$2y$")
                )
            })
            .collect();
        std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
        let addr = SocketAddr::new(setup.ip, free_port_on(setup.ip));
        let data_dir = dir.join("data");
        let mut toml = format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\np2p_listen = []\nshutdown_grace_secs = 5\n\n\
             [auth]\nhtpasswd = \"{}\"\nadmins = [\"root\"]\n{}\n{}\n",
            data_dir.display(),
            dir.join("htpasswd").display(),
            setup.auth_extra,
            setup.rules
        );
        let mut tls = None;
        if let Some(pki) = &setup.tls {
            std::fs::write(dir.join("cert.pem"), &pki.cert_pem).unwrap();
            std::fs::write(dir.join("key.pem"), &pki.key_pem).unwrap();
            toml.push_str(&format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ));
            tls = Some(client_tls(&pki.ca_pem));
        }
        let ca_pem = setup.tls.map(|p| p.ca_pem);
        std::fs::write(dir.join("gateway.toml"), toml).unwrap();
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(flotilla_bin())
            .arg("gateway")
            .arg("--config")
            .arg(dir.join("gateway.toml"))
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla gateway");
        let mut gw = AuthGateway {
            child: Some(child),
            addr,
            data_dir,
            log_path,
            tls,
            ca_pem,
            _tmp: tmp,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited early ({st}); log:\n{}", self.log());
            }
            if let Ok(r) = self.try_send("GET", "/v2/", &[], Bytes::new()).await {
                assert_eq!(r.status, 401, "/v2/ of a gateway with [auth]: {}", r.text());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready after 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `ip:port`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The test CA (PEM) when the gateway serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Everything the gateway logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM; whether the process then exited successfully within 20 s.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request; panics on transport errors and on answers that break the registry's rules.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let what = format!("{method} {path}");
        let r = self
            .try_send(method, path, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\nlog:\n{}", self.log()));
        assert!(
            r.status < 500,
            "{what}: {} {}\nlog:\n{}",
            r.status,
            r.text(),
            self.log()
        );
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "{what}: API version header"
        );
        if r.status == 401 && path.starts_with("/v2") {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\""),
                "{what}: 401 without a Bearer challenge: {challenge:?}"
            );
        }
        if r.status >= 400 && method != "HEAD" {
            assert!(
                !r.codes().is_empty(),
                "{what}: {} without an OCI error body: {}",
                r.status,
                r.text()
            );
        }
        Resp { what, ..r }
    }

    /// `GET path` with optional credentials (an `Authorization` value).
    pub async fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        self.send("GET", path, &h, Bytes::new()).await
    }

    /// One request over a fresh connection (TLS when the gateway serves it).
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::from(self.addr.ip());
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                request(tls, self.addr, method, path, headers, body).await
            }
            None => request(tcp, self.addr, method, path, headers, body).await,
        }
    }

    /// A token from the token endpoint for `scopes`, as `user` (`None`: anonymous); the raw answer.
    pub async fn token_answer(&self, scopes: &[&str], user: Option<(&str, &str)>) -> Resp {
        let mut path = "/auth/token?service=flotilla".to_owned();
        for s in scopes {
            path.push_str("&scope=");
            path.push_str(
                &s.replace(' ', "%20")
                    .replace(':', "%3A")
                    .replace('/', "%2F")
                    .replace(',', "%2C")
                    .replace('*', "%2A"),
            );
        }
        let auth = user.map(|(u, p)| basic(u, p));
        self.get(&path, auth.as_deref()).await
    }

    /// A token for `scopes` as `user`; panics unless the endpoint gives one.
    pub async fn token(&self, scopes: &[&str], user: Option<(&str, &str)>) -> String {
        let r = self.token_answer(scopes, user).await;
        r.expect(200);
        r.json()["token"].as_str().expect("a token").to_owned()
    }

    /// Pushes a one-layer image to `repo:tag` with `auth`; returns the manifest digest. Panics
    /// unless every step succeeds.
    pub async fn push_image(&self, repo: &str, tag: &str, auth: &str, layer: &[u8]) -> String {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        for blob in [&config[..], layer] {
            self.push_blob(repo, blob, auth).await.expect(201);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len()}],
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let r = self
            .send(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[
                    ("authorization", auth),
                    ("content-type", "application/vnd.oci.image.manifest.v1+json"),
                ],
                body.clone(),
            )
            .await;
        r.expect(201);
        digest(&body)
    }

    /// A monolithic blob upload (`POST ?digest=`) with `auth`; the answer.
    pub async fn push_blob(&self, repo: &str, blob: &[u8], auth: &str) -> Resp {
        let path = format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob));
        let len = blob.len().to_string();
        self.send(
            "POST",
            &path,
            &[
                ("authorization", auth),
                ("content-type", "application/octet-stream"),
                ("content-length", &len),
            ],
            blob.to_vec(),
        )
        .await
    }

    /// The gateway's token signing key (the file it created in its data directory).
    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join("auth").join("token-key.pem")
    }
}

impl Drop for AuthGateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn request<S>(
    io: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
        what: format!("{method} {path}"),
    })
}

/// One answer, read whole.
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// `METHOD path`, for messages.
    pub what: String,
}

impl Resp {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.what, self.text()))
    }

    /// The OCI error codes of the body.
    pub fn codes(&self) -> Vec<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["code"].as_str().map(str::to_owned))
            .collect()
    }

    /// Panics unless the status is `want`.
    pub fn expect(&self, want: u16) -> &Resp {
        assert_eq!(self.status, want, "{}: body {}", self.what, self.text());
        self
    }

    /// Panics unless the status is `status` with the OCI error `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> &Resp {
        self.expect(status);
        assert_eq!(
            self.codes(),
            vec![code.to_owned()],
            "{}: {}",
            self.what,
            self.text()
        );
        self
    }

    /// The `WWW-Authenticate` header; panics if absent.
    pub fn challenge(&self) -> &str {
        self.header("www-authenticate")
            .unwrap_or_else(|| panic!("{}: no WWW-Authenticate; {}", self.what, self.text()))
    }
}

/// `Basic …` for `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// `Bearer …`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `sha256:<hex>` of `b`.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The claims of a JWT (not verified: what the gateway put there).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Signs `claims` as a JWT with the Ed25519 PKCS#8 PEM key at `key_path` (to forge tokens the
/// gateway's own key signed, with claims of the test's choosing).
pub fn sign_with(key_path: &Path, header: &Value, claims: &Value) -> String {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let pem = std::fs::read_to_string(key_path).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key = Ed25519KeyPair::from_pkcs8(&STANDARD.decode(b64).unwrap()).unwrap();
    let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()));
    let sig = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    out
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
