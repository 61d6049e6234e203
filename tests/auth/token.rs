//! Docker's token flow against the gateway's own token endpoint: the challenge, the token and
//! its claims, using it, scopes it lacks (401 to get another, 403 when no token could carry
//! it), and tokens that are expired, tampered with, foreign or for another service.

use serde_json::json;

use super::harness::{AuthGateway, Setup, USERS, basic, bearer, claims, now, sign_with};

fn user(name: &str) -> Option<(&'static str, &'static str)> {
    USERS.iter().copied().find(|(u, _)| *u == name)
}

/// `key=value` pairs of a `Bearer …` challenge.
fn challenge_params(challenge: &str) -> Vec<(String, String)> {
    let rest = challenge
        .strip_prefix("Bearer ")
        .expect("a Bearer challenge");
    rest.split("\",")
        .map(|p| {
            let (k, v) = p.split_once("=\"").expect("key=\"value\"");
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect()
}

#[tokio::test]
async fn docker_token_flow() {
    let gw = AuthGateway::start().await;
    let alice = user("alice");

    // The client follows the challenge to the realm…
    let r = gw.get("/v2/", None).await;
    let params = challenge_params(r.challenge());
    let realm = &params.iter().find(|(k, _)| k == "realm").unwrap().1;
    assert_eq!(realm, &format!("{}/auth/token", gw.url()));

    // …logs in (docker login asks for no scope)…
    let login = gw.token(&[], alice).await;
    gw.get("/v2/", Some(&bearer(&login))).await.expect(200);
    assert_eq!(claims(&login)["access"], json!([]));

    // …and asks for what a push needs.
    let r = gw
        .token_answer(&["repository:team/app:pull,push"], alice)
        .await;
    r.expect(200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let answer = r.json();
    let token = answer["token"].as_str().unwrap().to_owned();
    assert_eq!(answer["access_token"], answer["token"]);
    assert_eq!(answer["expires_in"], 300);
    let issued = answer["issued_at"].as_str().unwrap();
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );
    let c = claims(&token);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "flotilla");
    assert_eq!(c["iss"], "flotilla-gateway");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );

    let auth = bearer(&token);
    gw.push_image("team/app", "v1", &auth, b"layer").await;
    gw.get("/v2/team/app/manifests/v1", Some(&auth))
        .await
        .expect(200);

    // The token covers team/app only: elsewhere alice could get access, so 401 (ask again).
    let r = gw.get("/v2/public/app/tags/list", Some(&auth)).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(
        r.challenge()
            .ends_with(",scope=\"repository:public/app:pull\",error=\"insufficient_scope\""),
        "{}",
        r.challenge()
    );
    // Delete is not in it either, and alice may not delete there: 403.
    gw.send(
        "DELETE",
        "/v2/team/app/manifests/v1",
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await
    .expect_error(403, "DENIED");
}

#[tokio::test]
async fn tokens_carry_the_intersection_of_asked_and_allowed() {
    let gw = AuthGateway::start().await;
    let root = basic("root", "r00t-pw");
    gw.push_image("team/app", "v1", &root, b"t").await;
    gw.push_image("public/app", "v1", &root, b"p").await;

    // bob asks for push where he may only pull: the token says pull, the push is refused.
    let t = gw
        .token(&["repository:team/app:pull,push,delete"], user("bob"))
        .await;
    assert_eq!(claims(&t)["access"][0]["actions"], json!(["pull"]));
    let auth = bearer(&t);
    gw.get("/v2/team/app/manifests/v1", Some(&auth))
        .await
        .expect(200);
    gw.send(
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await
    .expect_error(403, "DENIED");

    // Anonymous tokens: pull on public, nothing on team (401: logging in might help).
    let t = gw
        .token(
            &[
                "repository:public/app:pull,push",
                "repository:team/app:pull",
            ],
            None,
        )
        .await;
    let c = claims(&t);
    assert_eq!(c["sub"], "");
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": "public/app", "actions": ["pull"]}])
    );
    let auth = bearer(&t);
    gw.get("/v2/public/app/manifests/v1", Some(&auth))
        .await
        .expect(200);
    let r = gw.get("/v2/team/app/manifests/v1", Some(&auth)).await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(r.challenge().contains("error=\"insufficient_scope\""));

    // The catalog scope is granted to admins only; scopes in one space-separated parameter.
    let t = gw
        .token(
            &["registry:catalog:* repository:locked/x:pull"],
            user("root"),
        )
        .await;
    assert_eq!(claims(&t)["access"].as_array().unwrap().len(), 2);
    gw.get("/v2/_catalog", Some(&bearer(&t))).await.expect(200);
    let t = gw.token(&["registry:catalog:*"], user("alice")).await;
    assert_eq!(claims(&t)["access"], json!([]));
    gw.get("/v2/_catalog", Some(&bearer(&t)))
        .await
        .expect_error(403, "DENIED");
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_requests() {
    let gw = AuthGateway::start().await;
    let r = gw
        .token_answer(&["repository:team/app:pull"], Some(("alice", "wrong")))
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert!(
        r.challenge().starts_with("Basic realm="),
        "{}",
        r.challenge()
    );
    gw.token_answer(&[], Some(("nobody", "x")))
        .await
        .expect(401);
    gw.get("/auth/token", Some("Bearer x.y.z"))
        .await
        .expect(401);
    gw.get("/auth/token?service=someone-else", None)
        .await
        .expect_error(400, "UNSUPPORTED");
    gw.get("/auth/token?scope=garbage", None)
        .await
        .expect_error(400, "UNSUPPORTED");
    gw.get("/auth/token?scope=repository%3ABad%3Apull", None)
        .await
        .expect_error(400, "NAME_INVALID");
    gw.send("POST", "/auth/token", &[], Vec::new())
        .await
        .expect_error(405, "UNSUPPORTED");
    // Unknown resource types grant nothing but are not an error.
    let t = gw.token(&["plugin:x:pull"], None).await;
    assert_eq!(claims(&t)["access"], json!([]));
}

#[tokio::test]
async fn expired_tampered_and_foreign_tokens_are_refused() {
    let gw = AuthGateway::start().await;
    let key = gw.signing_key_path();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the signing key must be private");

    let real = gw.token(&["repository:team/app:pull"], user("bob")).await;
    let header: serde_json::Value = {
        use base64::Engine as _;
        let h = real.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(header["alg"], "EdDSA");
    gw.get("/v2/team/app/tags/list", Some(&bearer(&real)))
        .await
        .expect_error(404, "NAME_UNKNOWN");

    let n = now();
    let good = json!({
        "iss": "flotilla-gateway", "sub": "bob", "aud": "flotilla", "iat": n, "nbf": n, "exp": n + 60,
        "jti": "x", "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    });
    // Signed with the gateway's own key, the claims are honoured…
    let forged_ok = sign_with(&key, &header, &good);
    gw.get("/v2/team/app/tags/list", Some(&bearer(&forged_ok)))
        .await
        .expect(404);

    let refused = |claims_patch: serde_json::Value| {
        let mut c = good.clone();
        for (k, v) in claims_patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign_with(&key, &header, &c)
    };
    // …unless expired, not yet valid, or for another service or issuer.
    for (what, token) in [
        (
            "expired",
            refused(json!({"iat": n - 120, "nbf": n - 120, "exp": n - 60})),
        ),
        (
            "not yet valid",
            refused(json!({"nbf": n + 3600, "iat": n + 3600, "exp": n + 7200})),
        ),
        ("other audience", refused(json!({"aud": "other"}))),
        ("other issuer", refused(json!({"iss": "other"}))),
    ] {
        let r = gw
            .get("/v2/team/app/tags/list", Some(&bearer(&token)))
            .await;
        r.expect_error(401, "UNAUTHORIZED");
        assert!(
            r.challenge().contains("error=\"invalid_token\""),
            "{what}: {}",
            r.challenge()
        );
    }
    let r = gw
        .get(
            "/v2/team/app/tags/list",
            Some(&bearer(&refused(json!({"exp": n - 1})))),
        )
        .await;
    assert_eq!(r.json()["errors"][0]["message"], "token expired");

    // Claims changed after signing: more actions, another user.
    let parts: Vec<&str> = real.split('.').collect();
    for patch in [
        json!({"access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]}),
        json!({"sub": "root"}),
    ] {
        let mut c = claims(&real);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        use base64::Engine as _;
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{body}.{}", parts[0], parts[2]);
        let r = gw
            .get("/v2/team/app/tags/list", Some(&bearer(&tampered)))
            .await;
        r.expect_error(401, "UNAUTHORIZED");
        assert_eq!(r.json()["errors"][0]["message"], "invalid token signature");
    }

    // Another gateway's token (another key) and an unsigned one.
    let other = AuthGateway::start().await;
    let foreign = other
        .token(&["repository:team/app:pull"], user("bob"))
        .await;
    gw.get("/v2/team/app/tags/list", Some(&bearer(&foreign)))
        .await
        .expect(401);
    let unsigned = format!(
        "{}.{}.",
        {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","typ":"JWT"}"#)
        },
        parts[1]
    );
    gw.get("/v2/team/app/tags/list", Some(&bearer(&unsigned)))
        .await
        .expect(401);
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() {
    let gw = AuthGateway::start_with(Setup {
        auth_extra: "[auth.token]\nlifetime_secs = 2\nservice = \"flotilla\"\n".to_owned(),
        ..Setup::default()
    })
    .await;
    let answer = gw
        .token_answer(&["repository:public/app:pull"], user("alice"))
        .await;
    assert_eq!(answer.json()["expires_in"], 2);
    let token = answer.json()["token"].as_str().unwrap().to_owned();
    gw.get("/v2/public/app/tags/list", Some(&bearer(&token)))
        .await
        .expect(404);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let r = gw
        .get("/v2/public/app/tags/list", Some(&bearer(&token)))
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    assert_eq!(r.json()["errors"][0]["message"], "token expired");
}
