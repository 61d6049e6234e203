//! HTTPS: the gateway behind rustls with a test CA, checked with a TLS client, then the Docker
//! engine logging in, pushing and pulling over TLS with the CA installed in
//! `/etc/docker/certs.d/<host:port>/ca.crt` (read per registry, no daemon restart).
//!
//! The daemon treats loopback as an insecure registry and then skips certificate checks, so the
//! docker test listens on a non-loopback address of this host when there is one: there the
//! daemon verifies the certificate, which the test proves by failing to log in before the CA is
//! installed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Output};

use super::harness::{AuthGateway, Pki, Setup, USERS, basic, bearer, claims, client_tls};
use crate::support::{noise, require_tool};

fn names(ip: IpAddr) -> Vec<String> {
    let mut v = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !ip.is_loopback() {
        v.push(ip.to_string());
    }
    v
}

#[tokio::test]
async fn https_with_access_control_and_graceful_shutdown() {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pki = Pki::new(&names(ip));
    let ca = pki.ca_pem.clone();
    let mut gw = AuthGateway::start_with(Setup {
        tls: Some(pki),
        ..Setup::default()
    })
    .await;
    assert!(gw.url().starts_with("https://"));

    let r = gw.get("/v2/", None).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        r.challenge(),
        format!(
            "Bearer realm=\"https://{}/auth/token\",service=\"flotilla\"",
            gw.addr
        )
    );
    let t = gw
        .token(&["repository:team/tls:pull,push"], Some(USERS[1]))
        .await;
    assert_eq!(claims(&t)["sub"], "alice");
    gw.push_image("team/tls", "v1", &bearer(&t), &noise(100_000, 1))
        .await;
    gw.get("/v2/team/tls/manifests/v1", Some(&basic("bob", "bob-pw")))
        .await
        .expect(200);

    // Plain HTTP on the TLS port gets no HTTP answer.
    assert_eq!(crate::support::http_status(gw.addr, "GET", "/v2/"), None);
    // A client that does not trust the test CA refuses the certificate.
    let stranger = client_tls(&Pki::new(&names(ip)).ca_pem);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::from(gw.addr.ip());
    let e = match tokio_rustls::TlsConnector::from(stranger)
        .connect(name.clone(), tcp)
        .await
    {
        Ok(_) => panic!("a certificate from an unknown CA was accepted"),
        Err(e) => e,
    };
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The right CA is accepted (the harness client did that all along; once more explicitly).
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_tls(&ca))
        .connect(name, tcp)
        .await
        .unwrap();

    // A connection that never finishes its handshake does not hold up shutdown.
    let _silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        gw.stop(),
        "gateway did not exit cleanly on SIGTERM; log:\n{}",
        gw.log()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(gw.log().contains("gateway stopped"), "{}", gw.log());
}

/// An address of this host, not loopback, that the Docker daemon (which runs on this host)
/// reaches and does not treat as an insecure registry: the source address of the default route,
/// else the first address of docker's bridge subnet. `None` when neither can be bound here.
fn host_ip() -> Option<IpAddr> {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("198.51.100.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok();
    let bridge = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        ])
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let net = text
                .split_whitespace()
                .find_map(|s| s.split_once('/')?.0.parse::<Ipv4Addr>().ok())?;
            let o = net.octets();
            Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3] | 1)))
        });
    [routed, bridge].into_iter().flatten().find(|ip| {
        ip.is_ipv4()
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && std::net::TcpListener::bind((*ip, 0)).is_ok()
    })
}

/// Removes what the test put on the host: the CA directory, images, the docker config.
struct Cleanup {
    certs_dir: PathBuf,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
        let _ = std::fs::remove_dir_all(&self.certs_dir);
    }
}

fn docker(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(what: &str, out: Output, gw: &AuthGateway) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(what: &str, out: Output) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded but should not have"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase()
}

#[tokio::test]
async fn docker_login_push_pull_over_tls() {
    require_tool("docker");
    let found = host_ip();
    if found.is_none() {
        eprintln!(
            "no non-loopback address on this host: testing on 127.0.0.1, where the daemon skips \
             certificate verification (TLS is still exercised, the CA check is not)"
        );
    }
    let ip = found.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let gw = AuthGateway::start_with(Setup {
        ip,
        tls: Some(Pki::new(&names(ip))),
        ..Setup::default()
    })
    .await;
    let host = gw.host();
    eprintln!(
        "docker over TLS to {host} (certificate verified: {})",
        !ip.is_loopback()
    );

    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("docker-config");
    let anon_cfg = tmp.path().join("anonymous-config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::create_dir_all(&anon_cfg).unwrap();
    let certs_dir = PathBuf::from("/etc/docker/certs.d").join(&host);
    let unique = format!("{}-{}", std::process::id(), gw.addr.port());
    let image = format!("{host}/team/docker-{unique}:v1");
    let _cleanup = Cleanup {
        certs_dir: certs_dir.clone(),
        images: vec![image.clone()],
    };
    let (user, password) = USERS[1];
    let login = |config: &std::path::Path| {
        docker(
            config,
            &["login", "--username", user, "--password-stdin", &host],
            Some(password),
        )
    };

    if !ip.is_loopback() {
        let err = failed("docker login before the CA is installed", login(&cfg));
        assert!(
            err.contains("x509") || err.contains("certificate"),
            "unexpected failure: {err}"
        );
    }
    std::fs::create_dir_all(&certs_dir)
        .and_then(|()| std::fs::write(certs_dir.join("ca.crt"), gw.ca_pem().unwrap()))
        .unwrap_or_else(|e| {
            panic!(
                "cannot install the test CA in {} ({e}): this test must run as root on the \
                 Docker host (CI does)",
                certs_dir.display()
            )
        });

    // A wrong password is refused by the token endpoint, through the daemon.
    let err = failed(
        "docker login with a wrong password",
        docker(
            &cfg,
            &["login", "--username", user, "--password-stdin", &host],
            Some("wrong"),
        ),
    );
    assert!(err.contains("unauthorized") || err.contains("401"), "{err}");
    ok("docker login", login(&cfg), &gw);
    let stored = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(
        stored.contains(&host),
        "credentials not in the test's docker config: {stored}"
    );

    // Build a two-file image from scratch, push it, remove it, pull it back.
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let payload = noise(1 << 20, 11);
    std::fs::write(ctx.join("payload.bin"), &payload).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY payload.bin /payload.bin\n",
    )
    .unwrap();
    ok(
        "docker build",
        docker(
            &cfg,
            &["build", "-q", "-t", &image, &ctx.display().to_string()],
            None,
        ),
        &gw,
    );
    let id = ok(
        "docker inspect",
        docker(
            &cfg,
            &["image", "inspect", "--format", "{{.Id}}", &image],
            None,
        ),
        &gw,
    );
    let pushed = ok("docker push", docker(&cfg, &["push", &image], None), &gw);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    ok("docker rmi", docker(&cfg, &["rmi", &image], None), &gw);

    // Without credentials the pull is refused (team/* needs a user)…
    let err = failed(
        "anonymous docker pull",
        docker(&anon_cfg, &["pull", &image], None),
    );
    assert!(
        err.contains("unauthorized") || err.contains("denied") || err.contains("login"),
        "{err}"
    );
    // …and bob, who may pull but not push, cannot push.
    ok(
        "docker login as bob",
        docker(
            &anon_cfg,
            &["login", "--username", "bob", "--password-stdin", &host],
            Some("bob-pw"),
        ),
        &gw,
    );
    ok(
        "docker pull as bob",
        docker(&anon_cfg, &["pull", &image], None),
        &gw,
    );
    let err = failed(
        "docker push as bob",
        docker(&anon_cfg, &["push", &image], None),
    );
    assert!(err.contains("denied"), "{err}");
    ok("docker rmi", docker(&cfg, &["rmi", &image], None), &gw);

    ok("docker pull", docker(&cfg, &["pull", &image], None), &gw);
    let pulled = ok(
        "docker inspect",
        docker(
            &cfg,
            &["image", "inspect", "--format", "{{.Id}}", &image],
            None,
        ),
        &gw,
    );
    assert_eq!(pulled.trim(), id.trim(), "pulled image differs");
    ok("docker logout", docker(&cfg, &["logout", &host], None), &gw);
}
