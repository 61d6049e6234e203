//! `flotilla prefetch`: asks a node (`POST /flotilla/v1/prefetch` on its OCI endpoint, SPEC
//! §6.3) to fetch an image's blobs, or one blob, into its store before they are pulled, and
//! prints what came from where. It returns when the node holds everything. Several targets are
//! fetched one after another (a rollout's images, in the order given); one that fails does not
//! stop the others, and the exit status says whether all were fetched. `flotilla unpin` names
//! the same targets and makes them evictable again (`POST /flotilla/v1/unpin`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

/// What `prefetch` and `unpin` both take.
#[derive(Debug, Args)]
pub struct Targets {
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
    /// Print the node's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    /// The fleet token, which a node on another host asks for (a node takes these requests
    /// from its own host without one).
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN", hide_env_values = true)]
    fleet_token: Option<String>,
    /// A file holding the fleet token.
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN_FILE")]
    fleet_token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct PrefetchArgs {
    #[command(flatten)]
    targets: Targets,
    /// Pin what is fetched: the node never evicts it (until `flotilla unpin`).
    #[arg(long)]
    pin: bool,
}

#[derive(Debug, Args)]
pub struct UnpinArgs {
    #[command(flatten)]
    targets: Targets,
}

pub async fn run(args: PrefetchArgs) -> anyhow::Result<()> {
    let pin = args.pin;
    each(&args.targets, "prefetch", "prefetches", |body| {
        if pin {
            body["pin"] = json!(true);
        }
    })
    .await
}

/// `flotilla unpin`: the same targets made evictable again (`POST /flotilla/v1/unpin`).
pub async fn unpin(args: UnpinArgs) -> anyhow::Result<()> {
    each(&args.targets, "unpin", "unpins", |_| {}).await
}

/// Posts each target to `/flotilla/v1/{route}` in turn and prints each answer; fails if any
/// failed (`what` names them in the summary).
async fn each(
    args: &Targets,
    route: &str,
    what: &str,
    extra: impl Fn(&mut Value),
) -> anyhow::Result<()> {
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
        let mut body = if args.blob {
            json!({ "blob": target })
        } else {
            json!({ "image": target })
        };
        if let Some(p) = &args.platform {
            body["platform"] = json!(p);
        }
        extra(&mut body);
        match one(&http, args, route, token.as_deref(), &body).await {
            Ok(answer) if args.json => println!("{answer}"),
            // A blank line after each report keeps several apart.
            Ok(answer) if route == "unpin" => println!("{}", unpin_table(&answer)),
            Ok(answer) => println!("{}", table(&answer)),
            Err(e) => {
                eprintln!("flotilla {route} {target}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} {what} failed", args.targets.len());
    }
    Ok(())
}

/// Posts one request; the node's JSON answer, or its error as one line.
async fn one(
    http: &reqwest::Client,
    args: &Targets,
    route: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let url = format!("{}/flotilla/v1/{route}", args.node.trim_end_matches('/'));
    let mut req = http.post(&url).json(body);
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
        return Err(oci_error(&url, status, &answer));
    }
    Ok(answer)
}

/// An OCI error answer (`{"errors": [{"code", "message", "detail"}]}`) as one line.
pub fn oci_error(url: &str, status: reqwest::StatusCode, answer: &Value) -> anyhow::Error {
    let e = &answer["errors"][0];
    let text = |k: &str| match &e[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    anyhow::anyhow!(
        "{url}: {status} {}: {}{}",
        text("code"),
        text("message"),
        match text("detail") {
            d if d.is_empty() => String::new(),
            d => format!(" ({d})"),
        }
    )
}

/// An unpin report: each blob, whether it is held and was pinned, and the count.
fn unpin_table(r: &Value) -> String {
    let mut out = String::new();
    if let Some(image) = r["image"].as_str() {
        out.push_str(&format!(
            "{image} ({})\n\n",
            r["platform"].as_str().unwrap_or("?")
        ));
    }
    out.push_str("| blob | held | was pinned |\n|---|---|---|\n");
    let yes = |v: &Value| if *v == true { "yes" } else { "no" };
    for b in r["blobs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            b["digest"].as_str().unwrap_or("?"),
            yes(&b["held"]),
            yes(&b["was_pinned"]),
        ));
    }
    out.push_str(&format!(
        "\n{} blob(s) unpinned\n",
        r["unpinned"].as_u64().unwrap_or(0)
    ));
    out
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
    fn the_unpin_table_says_what_was_pinned() {
        let r = json!({
            "image": "team/app:v1", "platform": "linux/amd64", "manifests": ["sha256:a"],
            "blobs": [
                {"digest": "sha256:c", "held": true, "was_pinned": true},
                {"digest": "sha256:d", "held": false, "was_pinned": false},
            ],
            "unpinned": 1,
        });
        let t = unpin_table(&r);
        assert!(t.starts_with("team/app:v1 (linux/amd64)"), "{t}");
        assert!(t.contains("| sha256:c | yes | yes |"), "{t}");
        assert!(t.contains("| sha256:d | no | no |"), "{t}");
        assert!(t.contains("1 blob(s) unpinned"), "{t}");
    }

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
