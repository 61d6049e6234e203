//! Content discovery (spec "Listing Tags", end-8a/8b) and the catalog (`/v2/_catalog`, the
//! Docker registry extension): ordering, `n`, `last`, `n=0`, and `Link` pagination.

use super::util::{Api, OCI_MANIFEST, Resp, collect_pages};
use crate::support::Gateway;

/// The tags of one listing answer (`null` counts as none).
fn list(r: &Resp, field: &str) -> Vec<String> {
    r.expect(200);
    let v = r.json();
    if v[field].is_null() {
        return Vec::new();
    }
    serde_json::from_value(v[field].clone())
        .unwrap_or_else(|e| panic!("{}: `{field}` is not a list of strings ({e})", r.what))
}

/// Checks one page asked for with `n`: a prefix of `want`, at most `n` long, and exactly `n`
/// unless fewer remain or a `Link` says there is more (spec, end-8b).
fn check_page(r: &Resp, field: &str, want: &[String], n: usize) {
    let got = list(r, field);
    assert!(
        got.len() <= n,
        "{}: {} entries for n={n}",
        r.what,
        got.len()
    );
    assert_eq!(
        got[..],
        want[..got.len()],
        "{}: not the start of the sorted list",
        r.what
    );
    if got.len() < n && got.len() < want.len() {
        assert!(
            r.header("link").is_some(),
            "{}: short page without a Link",
            r.what
        );
    }
    if got.len() == n && want.len() > n {
        // More are available: to let clients collect them, a Link is expected.
        r.next_link()
            .unwrap_or_else(|| panic!("{}: full page, more tags, no Link header", r.what));
    }
}

/// Pushes one image to `repo` and tags it with every tag in `tags`.
async fn tag_all(api: &Api, repo: &str, tags: &[String]) {
    let img = api.push_image(repo, &tags[0], 1).await;
    for t in &tags[1..] {
        api.put_manifest(repo, t, OCI_MANIFEST, &img.manifest)
            .await
            .expect(201);
    }
}

#[tokio::test]
async fn tags_list_order_n_and_last() {
    let api = Api::start();
    let mut tags: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    tags.extend(["latest", "alpha", "beta", "v1", "v1.2", "v1.10"].map(String::from));
    // Pushed out of order; listed in lexical order.
    tags.reverse();
    tag_all(&api, "repo", &tags).await;
    let mut sorted = tags.clone();
    sorted.sort();

    let r = api.get("/v2/repo/tags/list").await;
    assert_eq!(r.json()["name"], "repo");
    assert_eq!(list(&r, "tags"), sorted, "tags not complete and sorted");

    for n in [1, 5, sorted.len() - 1] {
        let r = api.get(&format!("/v2/repo/tags/list?n={n}")).await;
        check_page(&r, "tags", &sorted, n);
    }
    // n beyond the total: everything.
    let r = api.get("/v2/repo/tags/list?n=1000").await;
    assert_eq!(list(&r, "tags"), sorted);

    // `last` alone, and with `n`: non-inclusive, continuing in order.
    let r = api
        .get(&format!("/v2/repo/tags/list?last={}", sorted[4]))
        .await;
    assert_eq!(list(&r, "tags"), sorted[5..]);
    let r = api
        .get(&format!("/v2/repo/tags/list?n=3&last={}", sorted[4]))
        .await;
    check_page(&r, "tags", &sorted[5..], 3);
    // A `last` that is not itself a tag still means "after this in order".
    let r = api.get("/v2/repo/tags/list?last=t055").await;
    let after: Vec<String> = sorted
        .iter()
        .filter(|t| t.as_str() > "t055")
        .cloned()
        .collect();
    assert_eq!(list(&r, "tags"), after);

    // "When n is zero, this endpoint MUST return an empty list, and MUST NOT include a Link
    // header."
    for q in ["n=0", "n=0&last=alpha"] {
        let r = api.get(&format!("/v2/repo/tags/list?{q}")).await;
        assert!(list(&r, "tags").is_empty(), "{}: n=0 not empty", r.what);
        assert!(r.header("link").is_none(), "{}: Link with n=0", r.what);
    }
    // Past the end: nothing, and nothing more to link to.
    for q in [
        "last=zzz",
        "n=5&last=zzz",
        &format!("last={}", sorted[sorted.len() - 1]),
    ] {
        let r = api.get(&format!("/v2/repo/tags/list?{q}")).await;
        assert!(list(&r, "tags").is_empty(), "{}: tags past the end", r.what);
        assert!(r.header("link").is_none(), "{}: Link past the end", r.what);
    }
}

#[tokio::test]
async fn tags_list_link_pagination_collects_every_tag() {
    let api = Api::start();
    let tags: Vec<String> = (0..23).map(|i| format!("tag{i:03}")).collect();
    tag_all(&api, "lib/paged", &tags).await;
    for n in [1, 4, 7, 23] {
        let (got, pages) =
            collect_pages(&api, &format!("/v2/lib/paged/tags/list?n={n}"), "tags").await;
        assert_eq!(
            got, tags,
            "n={n}: following Link did not give every tag exactly once"
        );
        let full = tags.len().div_ceil(n);
        assert!(
            pages == full || pages == full + 1,
            "n={n}: {pages} pages for {} tags",
            tags.len()
        );
    }
    // Starting in the middle.
    let (got, _) = collect_pages(&api, "/v2/lib/paged/tags/list?n=5&last=tag010", "tags").await;
    assert_eq!(got, tags[11..]);
}

#[tokio::test]
async fn tags_list_of_unknown_repository_is_name_unknown() {
    let api = Api::start();
    api.push_image("known", "v1", 2).await;
    for path in [
        "/v2/unknown/tags/list",
        "/v2/unknown/tags/list?n=10",
        "/v2/known/sub/tags/list",
        "/v2/kno/tags/list",
    ] {
        api.get(path).await.expect_error(404, "NAME_UNKNOWN");
    }
}

#[tokio::test]
async fn catalog_with_n_last_and_link() {
    let api = Api::start();
    let r = api.get("/v2/_catalog").await;
    assert!(
        list(&r, "repositories").is_empty(),
        "fresh registry lists repositories"
    );

    let mut repos: Vec<String> = ["zeta/x/y", "alpha", "beta/two", "beta/one", "gamma", "beta"]
        .map(String::from)
        .to_vec();
    for (i, repo) in repos.iter().enumerate() {
        api.push_image(repo, "v1", 100 + i as u64).await;
    }
    repos.sort();
    let r = api.get("/v2/_catalog").await;
    assert_eq!(list(&r, "repositories"), repos);
    for n in [1, 2, 4] {
        let r = api.get(&format!("/v2/_catalog?n={n}")).await;
        check_page(&r, "repositories", &repos, n);
        let (got, _) = collect_pages(&api, &format!("/v2/_catalog?n={n}"), "repositories").await;
        assert_eq!(got, repos, "n={n}: Link pagination of the catalog");
    }
    let r = api.get("/v2/_catalog?last=beta/one").await;
    let after: Vec<String> = repos
        .iter()
        .filter(|r| r.as_str() > "beta/one")
        .cloned()
        .collect();
    assert_eq!(list(&r, "repositories"), after);
    let r = api.get("/v2/_catalog?n=0").await;
    assert!(list(&r, "repositories").is_empty());
    assert!(r.header("link").is_none(), "Link with n=0");
    let r = api.get("/v2/_catalog?last=zzz").await;
    assert!(list(&r, "repositories").is_empty());
}

#[tokio::test]
async fn server_page_limit_is_announced_with_link() {
    // A registry that returns fewer entries than asked for (here its `max_list_entries` of 3)
    // may do so only with a Link header (end-8b), and following it yields everything.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(&cfg, "max_list_entries = 3\n").expect("write config");
    let api = Api::with_gateway(Gateway::start_with_args(&[
        "--config",
        cfg.to_str().expect("UTF-8 path"),
    ]));
    let tags: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
    tag_all(&api, "repo", &tags).await;
    for first in ["/v2/repo/tags/list", "/v2/repo/tags/list?n=100"] {
        let r = api.get(first).await;
        let page = list(&r, "tags");
        assert_eq!(page, tags[..3], "{}: first page", r.what);
        r.next_link()
            .unwrap_or_else(|| panic!("{}: truncated list without a Link", r.what));
        let (all, pages) = collect_pages(&api, first, "tags").await;
        assert_eq!(all, tags, "{first}: following Link");
        assert!(pages >= 3, "{first}: {pages} pages of at most 3 for 8 tags");
    }
    // "repo" exists already; four more make five.
    let mut repos: Vec<String> = ["repo", "repo1", "repo2", "repo3", "repo4"]
        .map(String::from)
        .to_vec();
    for (i, repo) in repos.iter().enumerate().skip(1) {
        api.push_image(repo, "v1", 50 + i as u64).await;
    }
    repos.sort();
    let r = api.get("/v2/_catalog").await;
    assert_eq!(list(&r, "repositories"), repos[..3]);
    let (all, _) = collect_pages(&api, "/v2/_catalog", "repositories").await;
    assert_eq!(all, repos, "catalog following Link");
}
