//! Access control with Basic credentials and without any: `/v2/`, pulls and pushes per rule,
//! 401 with the right challenge vs 403, the catalog, mounts, and the anonymous node endpoints.

use super::harness::{AuthGateway, Setup, USERS, basic, bearer, digest};

fn pw(user: &str) -> String {
    let (u, p) = USERS.iter().find(|(u, _)| *u == user).unwrap();
    basic(u, p)
}

#[tokio::test]
async fn base_challenges_anonymous_callers_and_accepts_credentials() {
    let gw = AuthGateway::start().await;
    let r = gw.get("/v2/", None).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        r.challenge(),
        format!(
            "Bearer realm=\"http://{}/auth/token\",service=\"flotilla\"",
            gw.addr
        )
    );
    gw.get("/v2/", Some(&pw("alice"))).await.expect(200);
    gw.get("/v2/", Some(&pw("root"))).await.expect(200);

    for bad in [
        basic("alice", "wrong"),
        basic("mallory", "alice-pw"),
        basic("alice", ""),
        "Basic !!!".to_owned(),
        "Digest username=alice".to_owned(),
        "Bearer not-a-jwt".to_owned(),
    ] {
        let r = gw.get("/v2/", Some(&bad)).await;
        r.expect_error(401, "UNAUTHORIZED");
        assert!(
            r.challenge().contains("service=\"flotilla\""),
            "{bad}: {}",
            r.challenge()
        );
    }

    // The node endpoints stay anonymous (fleet membership is separate).
    gw.get("/flotilla/v1/stats", None).await.expect(200);
}

#[tokio::test]
async fn pulls_follow_the_first_matching_rule() {
    let gw = AuthGateway::start().await;
    let root = pw("root");
    for repo in ["public/app", "team/app", "locked/app", "elsewhere"] {
        gw.push_image(repo, "v1", &root, repo.as_bytes()).await;
    }

    // Anonymous: only `public/**`.
    gw.get("/v2/public/app/manifests/v1", None)
        .await
        .expect(200);
    gw.get("/v2/public/app/tags/list", None).await.expect(200);
    let layer = digest(b"public/app");
    gw.get(&format!("/v2/public/app/blobs/{layer}"), None)
        .await
        .expect(200);
    for (repo, scope) in [
        ("team/app", "repository:team/app:pull"),
        ("locked/app", "repository:locked/app:pull"),
        ("elsewhere", "repository:elsewhere:pull"),
    ] {
        let r = gw.get(&format!("/v2/{repo}/manifests/v1"), None).await;
        r.expect_error(401, "UNAUTHORIZED");
        assert!(
            r.challenge().ends_with(&format!(",scope=\"{scope}\"")),
            "{}",
            r.challenge()
        );
        let head = gw
            .send("HEAD", &format!("/v2/{repo}/manifests/v1"), &[], Vec::new())
            .await;
        head.expect(401);
    }

    // Any user: `team/*` too; but not `locked/**`, and no rule for `elsewhere`: 403, not 401.
    let bob = pw("bob");
    gw.get("/v2/team/app/manifests/v1", Some(&bob))
        .await
        .expect(200);
    gw.get("/v2/public/app/manifests/v1", Some(&bob))
        .await
        .expect(200);
    for repo in ["locked/app", "elsewhere"] {
        let r = gw
            .get(&format!("/v2/{repo}/manifests/v1"), Some(&bob))
            .await;
        r.expect_error(403, "DENIED");
        assert!(
            r.header("www-authenticate").is_none(),
            "403 with a challenge"
        );
        assert_eq!(r.json()["errors"][0]["detail"][0]["Name"], repo);
    }
    // `team/*` is one segment deep only.
    gw.get("/v2/team/a/b/tags/list", Some(&bob))
        .await
        .expect_error(403, "DENIED");
    // Admins read everything.
    gw.get("/v2/locked/app/manifests/v1", Some(&root))
        .await
        .expect(200);
}

#[tokio::test]
async fn pushes_need_credentials_and_rights() {
    let gw = AuthGateway::start().await;
    let blob = b"pushed blob".to_vec();

    let r = gw.push_blob("public/app", &blob, "").await;
    // An empty Authorization header is not credentials.
    r.expect_error(401, "UNAUTHORIZED");
    let r = gw
        .send("POST", "/v2/public/app/blobs/uploads/", &[], Vec::new())
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        r.challenge(),
        format!(
            "Bearer realm=\"http://{}/auth/token\",service=\"flotilla\",scope=\"repository:public/app:pull,push\"",
            gw.addr
        )
    );
    let put = gw
        .send(
            "PUT",
            "/v2/public/app/manifests/v1",
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            "{}",
        )
        .await;
    put.expect_error(401, "UNAUTHORIZED");

    // bob may pull team/app but not push there.
    let bob = pw("bob");
    let r = gw.push_blob("team/app", &blob, &bob).await;
    r.expect_error(403, "DENIED");
    assert_eq!(r.json()["errors"][0]["detail"][0]["Action"], "push");

    // alice pushes to team/app and public/app; deletes only where the rules say so.
    let alice = pw("alice");
    let d = gw.push_image("team/app", "v1", &alice, b"team layer").await;
    gw.push_image("public/app", "v1", &alice, b"public layer")
        .await;
    gw.send(
        "DELETE",
        &format!("/v2/team/app/manifests/{d}"),
        &[("authorization", &alice)],
        Vec::new(),
    )
    .await
    .expect_error(403, "DENIED");
    let anon_delete = gw
        .send("DELETE", "/v2/public/app/manifests/v1", &[], Vec::new())
        .await;
    anon_delete.expect_error(401, "UNAUTHORIZED");
    assert!(
        anon_delete
            .challenge()
            .ends_with("scope=\"repository:public/app:delete\"")
    );
    gw.send(
        "DELETE",
        "/v2/public/app/manifests/v1",
        &[("authorization", &alice)],
        Vec::new(),
    )
    .await
    .expect(202);

    // Upload sessions are push, whatever the method.
    let start = gw
        .send(
            "POST",
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &alice)],
            Vec::new(),
        )
        .await;
    start.expect(202);
    let location = start.header("location").unwrap().to_owned();
    for method in ["GET", "PATCH", "DELETE"] {
        gw.send(method, &location, &[("authorization", &bob)], Vec::new())
            .await
            .expect_error(403, "DENIED");
    }
    gw.send("GET", &location, &[("authorization", &alice)], Vec::new())
        .await
        .expect(204);
}

#[tokio::test]
async fn the_catalog_is_for_admins() {
    let gw = AuthGateway::start().await;
    gw.push_image("public/app", "v1", &pw("alice"), b"x").await;
    let r = gw.get("/v2/_catalog", None).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(
        r.challenge().ends_with("scope=\"registry:catalog:*\""),
        "{}",
        r.challenge()
    );
    gw.get("/v2/_catalog", Some(&pw("alice")))
        .await
        .expect_error(403, "DENIED");
    let r = gw.get("/v2/_catalog", Some(&pw("root"))).await;
    r.expect(200);
    assert_eq!(r.json()["repositories"], serde_json::json!(["public/app"]));
}

#[tokio::test]
async fn mounts_need_pull_on_the_source() {
    let gw = AuthGateway::start().await;
    let (root, alice) = (pw("root"), pw("alice"));
    let secret = b"a layer only admins may read".to_vec();
    let d = digest(&secret);
    gw.push_blob("locked/app", &secret, &root).await.expect(201);

    // alice may push to public/x but not read locked/app: no mount, a plain upload instead.
    // Every spelling of the parameters counts, escaped ones too.
    for query in [
        format!("mount={d}&from=locked/app"),
        format!("mount={d}"),
        format!("m%6Funt={d}&from=locked%2Fapp"),
        format!("mount={d}&fr%6Fm=locked/app"),
    ] {
        let r = gw
            .send(
                "POST",
                &format!("/v2/public/x/blobs/uploads/?{query}"),
                &[("authorization", &alice)],
                Vec::new(),
            )
            .await;
        r.expect(202);
        assert!(
            r.header("docker-upload-uuid").is_some(),
            "{query}: not an upload session"
        );
    }
    gw.get(&format!("/v2/public/x/blobs/{d}"), Some(&alice))
        .await
        .expect_error(404, "BLOB_UNKNOWN");

    // From a repository she can read, the mount happens.
    let shared = b"a layer in public/app".to_vec();
    let sd = digest(&shared);
    gw.push_blob("public/app", &shared, &alice)
        .await
        .expect(201);
    gw.send(
        "POST",
        &format!("/v2/public/x/blobs/uploads/?mount={sd}&from=public/app"),
        &[("authorization", &alice)],
        Vec::new(),
    )
    .await
    .expect(201);
    gw.get(&format!("/v2/public/x/blobs/{sd}"), None)
        .await
        .expect(200);

    // An admin reads everything, so mounting from locked/app works for root.
    gw.send(
        "POST",
        &format!("/v2/public/y/blobs/uploads/?mount={d}&from=locked/app"),
        &[("authorization", &root)],
        Vec::new(),
    )
    .await
    .expect(201);
}

/// `POST /flotilla/v1/gc` with `[auth]`: admins only — a challenge for anonymous callers,
/// `403 DENIED` for other users — and for root the collection's report (a dry run here).
#[tokio::test]
async fn only_admins_may_ask_for_a_garbage_collection() {
    let gw = AuthGateway::start().await;
    let gw = &gw;
    let ask = |auth: Option<String>| async move {
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        gw.send("POST", "/flotilla/v1/gc?dry_run=true", &h, "")
            .await
    };
    let r = ask(None).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(
        r.challenge().starts_with("Bearer realm=\""),
        "{}",
        r.challenge()
    );
    ask(Some(pw("alice"))).await.expect_error(403, "DENIED");
    let r = ask(Some(pw("root"))).await;
    r.expect(200);
    let report = r.json();
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["blobs_removed"], 0, "{report}");
}

/// `GET /metrics` with `[auth]`: open to anyone by default (as `/flotilla/v1/stats`); with
/// `metrics_users` only those users and the admins read it — a challenge for anonymous callers,
/// `403 DENIED` for other users, the page for a listed user's Basic credentials or bearer token.
#[tokio::test]
async fn metrics_are_open_unless_metrics_users_are_named() {
    let open = AuthGateway::start().await;
    let r = open.get("/metrics", None).await;
    r.expect(200);
    assert!(r.text().contains("flotilla_gateway_http_requests_total"));

    let gw = AuthGateway::start_with(Setup {
        auth_extra: "metrics_users = [\"bob\"]".to_owned(),
        ..Setup::default()
    })
    .await;
    let r = gw.get("/metrics", None).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(
        r.challenge().starts_with("Bearer realm=\""),
        "{}",
        r.challenge()
    );
    gw.get("/metrics", Some(&pw("alice")))
        .await
        .expect_error(403, "DENIED");
    let r = gw.get("/metrics", Some(&pw("bob"))).await;
    r.expect(200);
    assert!(r.text().contains("flotilla_gateway_http_requests_total"));
    gw.get("/metrics", Some(&pw("root"))).await.expect(200);
    let token = gw.token(&[], Some(("bob", "bob-pw"))).await;
    gw.get("/metrics", Some(&bearer(&token))).await.expect(200);
    // The stats stay open: nodes and the benchmarks read them.
    gw.get("/flotilla/v1/stats", None).await.expect(200);
}

/// The fleet's admin routes with `[auth]`, through `flotilla fleet`: the member list and a
/// revocation are refused without credentials (401) and to a non-admin (403 DENIED), and
/// work for root, whose password comes from a file.
#[tokio::test]
async fn only_admins_list_and_revoke_fleet_members() {
    let gw = AuthGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = |user: &str| {
        let (_, p) = USERS.iter().find(|(u, _)| *u == user).unwrap();
        let path = dir.path().join(user);
        std::fs::write(&path, format!("{p}\n")).unwrap();
        path
    };
    let fleet = |args: &[&str], user: Option<&str>| {
        let mut cmd = std::process::Command::new(crate::support::flotilla_bin());
        cmd.arg("fleet")
            .args(args)
            .args(["--gateway", &gw.url()])
            .env_remove("FLOTILLA_PASSWORD");
        if let Some(u) = user {
            cmd.args(["--user", u, "--password-file"]).arg(password(u));
        }
        cmd.output().unwrap()
    };
    let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    for (user, status) in [(None, "401"), (Some("alice"), "403")] {
        for args in [&["members"][..], &["revoke", peer][..]] {
            let out = fleet(args, user);
            assert!(!out.status.success(), "{args:?} as {user:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(status), "{args:?} as {user:?}: {err}");
        }
    }
    let out = fleet(&["revoke", peer, "--reason", "test"], Some("root"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{peer} revoked")));
    let out = fleet(&["members", "--json"], Some("root"));
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["count"], 0, "nobody joined: {listed}");
}
