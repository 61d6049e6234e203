//! The command line: defaults, TOML config file, environment overrides, graceful shutdown and the
//! per-request log line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Gateway, flotilla_bin, free_port, http_status};

fn wait_status(addr: std::net::SocketAddr, want: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_status(addr, "GET", "/v2/") == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn config_file_then_env_then_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let file_port = free_port();
    let env_port = free_port();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\ndata_dir = \"{}\"\nmax_manifest_bytes = 1024\n",
            tmp.path().join("from-file").display()
        ),
    )
    .unwrap();

    // The file alone decides the address and the data directory.
    let mut child = Command::new(flotilla_bin())
        .args(["gateway", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{file_port}").parse().unwrap();
    let up = wait_status(addr, 200);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "gateway did not listen on the config file's address");
    assert!(
        tmp.path().join("from-file").is_dir(),
        "data_dir from the file not used"
    );

    // The environment beats the file.
    let mut child = Command::new(flotilla_bin())
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env("FLOTILLA_LISTEN", format!("127.0.0.1:{env_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{env_port}").parse().unwrap();
    let up = wait_status(addr, 200);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "FLOTILLA_LISTEN did not override the config file");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = tmp.path().join("gateway.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(flotilla_bin())
        .args(["gateway", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FLOTILLA_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLOTILLA_LOG_FORMAT", "json")
        .env_remove("FLOTILLA_CONFIG")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let up = wait_status(format!("127.0.0.1:{port}").parse().unwrap(), 200);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the gateway did not start");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        // Some events (libp2p's) carry fields only, no message.
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"addr\":\"127.0.0.1:")),
        "the listening line with its address as a field: {text}"
    );

    // Anything but text or json is refused before the gateway starts.
    let out = Command::new(flotilla_bin())
        .args(["gateway", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FLOTILLA_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FLOTILLA_LOG_FORMAT", "xml")
        .env_remove("FLOTILLA_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FLOTILLA_LOG_FORMAT"), "{err}");
}

#[test]
fn bad_config_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "listen = 5\nno_such_key = true\n").unwrap();
    let out = Command::new(flotilla_bin())
        .args(["gateway", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml"),
        "error does not name the file: {err}"
    );
}

#[test]
fn an_upload_cap_of_zero_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(flotilla_bin())
        .args(["gateway", "--upload-bytes-per-s", "0", "--data-dir"])
        .arg(tmp.path())
        .env("FLOTILLA_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env_remove("FLOTILLA_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upload_bytes_per_s is 0"),
        "the error does not name the setting: {err}"
    );
}

/// Starts `flotilla node` with `args` (and a token and data directory), which must refuse to
/// start; its error output.
fn node_refuses(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(flotilla_bin())
        .arg("node")
        .args(args)
        .args(["--fleet-token", "t", "--data-dir"])
        .arg(tmp.path())
        .env("FLOTILLA_NODE_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_download_cap_of_zero_is_a_clear_error() {
    let err = node_refuses(&["--download-bytes-per-s", "0"]);
    assert!(
        err.contains("download_bytes_per_s is 0"),
        "the error does not name the setting: {err}"
    );
}

#[test]
fn a_bad_site_label_is_a_clear_error() {
    let err = node_refuses(&["--site", "rack 7"]);
    assert!(
        err.contains("site \"rack 7\"") && err.contains("not ' '"),
        "the error does not say what is wrong with the label: {err}"
    );
}

#[test]
fn sigterm_drains_and_exits_cleanly_and_requests_are_logged() {
    let mut g = Gateway::start();
    assert_eq!(http_status(g.addr, "GET", "/v2/"), Some(200));
    assert_eq!(http_status(g.addr, "GET", "/v2/no/such/thing"), Some(404));
    // Probes and the nodes' revocation polls are routine: not in the info-level log.
    assert_eq!(http_status(g.addr, "GET", "/flotilla/v1/health"), Some(200));
    assert_eq!(
        http_status(g.addr, "GET", "/flotilla/v1/revoked"),
        Some(200)
    );
    assert!(g.stop(), "gateway did not exit successfully on SIGTERM");
    let log = g.log();
    for routine in ["/flotilla/v1/health", "/flotilla/v1/revoked"] {
        assert!(
            !log.lines()
                .any(|l| l.contains(routine) && l.contains("INFO")),
            "{routine} logged at info:\n{log}"
        );
    }
    let line = log
        .lines()
        .find(|l| l.contains("/v2/no/such/thing"))
        .unwrap_or_else(|| panic!("no request line in log:\n{log}"));
    for want in ["GET", "404", "INFO"] {
        assert!(line.contains(want), "request log line lacks {want}: {line}");
    }
    assert!(
        line.contains("ms") || line.contains("µs") || line.contains("duration"),
        "request log line lacks a duration: {line}"
    );
}
