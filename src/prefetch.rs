//! `flotilla prefetch`: asks a node (`POST /flotilla/v1/prefetch` on its OCI endpoint, SPEC
//! §6.3) to fetch an image's blobs, or one blob, into its store before they are pulled, and
//! prints what came from where. It returns when the node holds everything. Several targets are
//! fetched one after another (a rollout's images, in the order given); one that fails does not
//! stop the others, and the exit status says whether all were fetched.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct PrefetchArgs {
    /// Images, `name[:tag|@digest]` (a leading registry host such as `localhost:5000/` is
    /// ignored; no tag means `latest`), or with --blob blob digests.
    #[arg(required = true)]
    targets: Vec<String>,
    /// The targets are blob digests, not images.
    #[arg(long)]
    blob: bool,
    /// The node's OCI endpoint.
    #[arg(
        long,
        env = "FLOTILLA_NODE_URL",
        default_value = "http://127.0.0.1:5001"
    )]
    node: String,
    /// Which entries of a multi-platform image: `os/arch[/variant]`, or `all` [default: the
    /// node's host's, linux/<arch>].
    #[arg(long)]
    platform: Option<String>,
    /// Pin what is fetched: the node never evicts it.
    #[arg(long)]
    pin: bool,
    /// Print the node's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    /// The fleet token, which a node on another host asks for (a node takes prefetches from
    /// its own host without one).
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN", hide_env_values = true)]
    fleet_token: Option<String>,
    /// A file holding the fleet token.
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN_FILE")]
    fleet_token_file: Option<std::path::PathBuf>,
}

pub async fn run(args: PrefetchArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let token = match (&args.fleet_token, &args.fleet_token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the fleet token from {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let mut failed = 0;
    for target in &args.targets {
        if let Err(e) = one(&http, &args, token.as_deref(), target).await {
            eprintln!("flotilla prefetch {target}: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} prefetches failed", args.targets.len());
    }
    Ok(())
}

/// Prefetches one target and prints the node's report.
async fn one(
    http: &reqwest::Client,
    args: &PrefetchArgs,
    token: Option<&str>,
    target: &str,
) -> anyhow::Result<()> {
    let mut body = if args.blob {
        json!({ "blob": target })
    } else {
        json!({ "image": target })
    };
    if let Some(p) = &args.platform {
        body["platform"] = json!(p);
    }
    if args.pin {
        body["pin"] = json!(true);
    }
    let url = format!("{}/flotilla/v1/prefetch", args.node.trim_end_matches('/'));
    let mut req = http.post(&url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let answer: Value = res
        .json()
        .await
        .with_context(|| format!("POST {url}: the answer ({status}) is not JSON"))?;
    if !status.is_success() {
        let e = &answer["errors"][0];
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        bail!(
            "{url}: {status} {}: {}{}",
            text("code"),
            text("message"),
            match text("detail") {
                d if d.is_empty() => String::new(),
                d => format!(" ({d})"),
            }
        );
    }
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    // A blank line after each report keeps several apart.
    println!("{}", table(&answer));
    Ok(())
}

/// The node's report as a Markdown table and a summary line.
fn table(r: &Value) -> String {
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / f64::from(1u32 << 20);
    let mut out = String::new();
    if let Some(image) = r["image"].as_str() {
        out.push_str(&format!(
            "{image} ({}; {} manifests)\n\n",
            r["platform"].as_str().unwrap_or("?"),
            r["manifests"].as_array().map_or(0, Vec::len)
        ));
    }
    out.push_str("| blob | MiB | held before | from peers, MiB | from the gateway, MiB | s |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for b in r["blobs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {:.1} | {} | {:.1} | {:.1} | {:.2} |\n",
            b["digest"].as_str().unwrap_or("?"),
            mib(&b["size"]),
            if b["held_before"] == true {
                "yes"
            } else {
                "no"
            },
            mib(&b["peer_bytes"]),
            mib(&b["origin_bytes"]),
            b["seconds"].as_f64().unwrap_or(0.0),
        ));
    }
    out.push_str(&format!(
        "\n{:.1} MiB held, {:.1} MiB fetched now, in {:.2} s{}\n",
        mib(&r["bytes"]),
        mib(&r["fetched_bytes"]),
        r["seconds"].as_f64().unwrap_or(0.0),
        if r["pinned"] == true { "; pinned" } else { "" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_blob_and_the_totals() {
        let r = json!({
            "image": "team/app:v1", "platform": "linux/amd64", "manifests": ["sha256:a", "sha256:b"],
            "blobs": [
                {"digest": "sha256:c", "size": 1048576, "held_before": true, "peer_bytes": 0, "origin_bytes": 0, "seconds": 0.001},
                {"digest": "sha256:d", "size": 3145728, "held_before": false, "peer_bytes": 2097152, "origin_bytes": 1048576, "seconds": 0.5},
            ],
            "bytes": 4194304, "fetched_bytes": 3145728, "seconds": 0.51, "pinned": true,
        });
        let t = table(&r);
        assert!(
            t.starts_with("team/app:v1 (linux/amd64; 2 manifests)"),
            "{t}"
        );
        assert!(
            t.contains("| sha256:c | 1.0 | yes | 0.0 | 0.0 | 0.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| sha256:d | 3.0 | no | 2.0 | 1.0 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("4.0 MiB held, 3.0 MiB fetched now, in 0.51 s; pinned"),
            "{t}"
        );
    }
}
