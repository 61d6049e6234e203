//! `flotilla fleet`: an admin's view of the fleet at its gateway (SPEC §5.3) — who joined
//! (`members`), and revoking or restoring a member (`revoke`, `restore`). With `[auth]` on the
//! gateway these are for admins: `--user` and a password (`--password-file` or
//! `FLOTILLA_PASSWORD`) are sent as HTTP Basic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::prefetch::oci_error;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List the nodes that joined the fleet: peer id, address, last join, certificate expiry,
    /// whether each is connected to the gateway's swarm and whether it is revoked.
    Members(Common),
    /// Revoke a member: the gateway refuses it at once, every node within about a minute.
    Revoke(Change),
    /// Restore a revoked member.
    Restore(Change),
}

#[derive(Debug, Args)]
pub struct Common {
    /// The gateway.
    #[arg(
        long,
        env = "FLOTILLA_GATEWAY",
        default_value = "http://127.0.0.1:5000"
    )]
    gateway: String,
    /// A user of the gateway's htpasswd file (an admin) when it runs `[auth]`.
    #[arg(long, env = "FLOTILLA_USER")]
    user: Option<String>,
    /// The user's password.
    #[arg(long, env = "FLOTILLA_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A file holding the user's password.
    #[arg(long, env = "FLOTILLA_PASSWORD_FILE")]
    password_file: Option<std::path::PathBuf>,
    /// Print the gateway's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct Change {
    /// The member's peer id (`flotilla fleet members` lists them).
    peer_id: String,
    /// Why (kept with the revocation, shown in listings and the audit log).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    common: Common,
}

pub async fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Members(c) => {
            let answer = call(&c, reqwest::Method::GET, "members", None).await?;
            if c.json {
                println!("{answer}");
            } else {
                print!("{}", members_table(&answer, now_s()));
            }
        }
        FleetCommand::Revoke(ch) | FleetCommand::Restore(ch) if ch.peer_id.trim().is_empty() => {
            anyhow::bail!("no peer id given");
        }
        FleetCommand::Revoke(ch) => change(ch, "revoke").await?,
        FleetCommand::Restore(ch) => change(ch, "restore").await?,
    }
    Ok(())
}

async fn change(ch: Change, route: &str) -> anyhow::Result<()> {
    let body = json!({ "peer_id": ch.peer_id.trim(), "reason": ch.reason });
    let answer = call(&ch.common, reqwest::Method::POST, route, Some(&body)).await?;
    if ch.common.json {
        println!("{answer}");
        return Ok(());
    }
    let changed = answer["changed"].as_bool().unwrap_or(false);
    let revoked = answer["peers"].as_object().map_or(0, |m| m.len());
    let done = match (route, changed) {
        ("revoke", true) => "revoked",
        ("revoke", false) => "was revoked already",
        (_, true) => "restored",
        (_, false) => "was not revoked",
    };
    println!(
        "{} {done}; {revoked} member(s) revoked in all (list {})",
        ch.peer_id.trim(),
        answer["seq"]
    );
    Ok(())
}

/// One request to `/flotilla/v1/{route}`; the JSON answer, or the gateway's error as one line.
async fn call(
    c: &Common,
    method: reqwest::Method,
    route: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}/flotilla/v1/{route}", c.gateway.trim_end_matches('/'));
    let mut req = http.request(method.clone(), &url);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(user) = &c.user {
        let password = match (&c.password, &c.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the password from {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None) => anyhow::bail!("--user needs --password-file or FLOTILLA_PASSWORD"),
        };
        req = req.basic_auth(user, Some(password));
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = res.status();
    let answer: Value = res
        .json()
        .await
        .with_context(|| format!("{method} {url}: the answer ({status}) is not JSON"))?;
    if !status.is_success() {
        return Err(oci_error(&url, status, &answer));
    }
    Ok(answer)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long ago `then` was, or how long until it comes, in the largest whole unit.
fn ago(then: u64, now: u64) -> String {
    let (d, suffix) = if then <= now {
        (now - then, " ago")
    } else {
        (then - now, " from now")
    };
    let text = match d {
        d if d < 120 => format!("{d} s"),
        d if d < 7200 => format!("{} min", d / 60),
        d if d < 172_800 => format!("{} h", d / 3600),
        d => format!("{} d", d / 86_400),
    };
    text + suffix
}

/// The member list as a table.
fn members_table(answer: &Value, now: u64) -> String {
    let rows: Vec<[String; 6]> = answer["members"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let t = |k: &str| m[k].as_u64().unwrap_or(0);
            let flag = |k: &str| if m[k] == true { "yes" } else { "no" }.to_owned();
            [
                m["peer_id"].as_str().unwrap_or_default().to_owned(),
                m["addr"].as_str().unwrap_or_default().to_owned(),
                ago(t("last_joined_unix_s"), now),
                ago(t("certificate_not_after_unix_s"), now),
                flag("connected"),
                flag("revoked"),
            ]
        })
        .collect();
    let head = [
        "PEER ID",
        "ADDRESS",
        "LAST JOIN",
        "CERTIFICATE ENDS",
        "CONNECTED",
        "REVOKED",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&head);
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out.push_str(&format!("{} member(s)\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_table_lines_up_and_says_when() {
        let answer = json!({"count": 1, "members": [{
            "peer_id": "12D3KooWabc", "addr": "10.0.0.7:40000",
            "first_joined_unix_s": 1000, "last_joined_unix_s": 9_700,
            "certificate_not_after_unix_s": 96_400, "joins": 3,
            "connected": true, "revoked": false
        }]});
        let t = members_table(&answer, 10_000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PEER ID      ADDRESS"), "{t}");
        assert!(
            lines[1].contains("12D3KooWabc  10.0.0.7:40000  5 min ago"),
            "{t}"
        );
        assert!(lines[1].contains("24 h from now"), "{t}");
        assert!(lines[1].ends_with("yes        no"), "{t}");
        assert_eq!(lines[2], "1 member(s)");
    }
}
