//! Identity, ownership, quotas, delegation and audit through the API, against the in-memory
//! store and bus with the built-in issuer.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::testing::{Harness, Reply, IMAGE};

fn body(v: serde_json::Value) -> Body {
    Body::from(v.to_string())
}

impl Harness {
    async fn as_(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        json: Option<serde_json::Value>,
    ) -> Reply {
        let b = json.map_or_else(Body::empty, body);
        self.call_as(Some(token), method, uri, b).await
    }

    /// `POST /v1/vms` as `token`, with extra fields merged into the body.
    async fn create_as(&self, token: &str, name: &str, extra: serde_json::Value) -> Reply {
        let mut b = json!({ "name": name, "image": IMAGE });
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        self.as_(token, Method::POST, "/v1/vms", Some(b)).await
    }

    async fn set_policy(&self, holder: &str, policy: serde_json::Value) {
        let r = self
            .call(Method::PUT, &format!("/v1/policies/{holder}"), body(policy))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "x")
        .replace("{holder}", "user:x")
        .replace("{id}", "0193f1d2-0000-7000-8000-000000000000")
        .replace("{reference}", "a/b:1")
}

#[tokio::test]
async fn every_route_but_the_public_ones_refuses_a_request_without_a_token() {
    let h = Harness::start().await;
    for (path, methods) in crate::openapi::ROUTES {
        if crate::api::guard::PUBLIC.contains(path) {
            continue;
        }
        for m in *methods {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = h
                .call_as(None, method, &concrete(path), Body::empty())
                .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{m} {path}: {}",
                r.text()
            );
            let e = r.error();
            assert_eq!(e.code, "unauthenticated", "{m} {path}");
            assert!(
                e.message.contains("pitwall login"),
                "{m} {path}: {}",
                e.message
            );
        }
    }
}

#[tokio::test]
async fn public_routes_answer_without_a_token() {
    let h = Harness::start().await;
    for path in ["/healthz", "/v1/openapi.json", "/v1/auth/config"] {
        let r = h.call_as(None, Method::GET, path, Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    let cfg: pitwall_api::AuthConfig = h
        .call_as(None, Method::GET, "/v1/auth/config", Body::empty())
        .await
        .json();
    assert!(cfg.builtin);
    assert_eq!(cfg.audience, "pitwall");
}

#[tokio::test]
async fn a_bad_token_is_refused_with_401_saying_why() {
    let h = Harness::start().await;
    let r = h
        .call_as(Some("not-a-jwt"), Method::GET, "/v1/vms", Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().message.contains("malformed"), "{}", r.text());
    // A refresh token is not an access token.
    let pw = "bob-password-long-enough";
    h.issuer
        .create_user("bob", pw, vec![], vec![])
        .await
        .unwrap();
    let t = h.issuer.login("bob", pw).await.unwrap();
    let r = h
        .call_as(
            Some(&t.refresh_token),
            Method::GET,
            "/v1/vms",
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().message.contains("audience"), "{}", r.text());
}

#[tokio::test]
async fn login_refresh_and_whoami_through_the_api() {
    let h = Harness::start().await;
    h.user("alice", &["/ops"]).await;
    let wrong = h
        .call_as(
            None,
            Method::POST,
            "/v1/auth/login",
            body(json!({"username": "alice", "password": "wrong password here"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.error().message, "invalid username or password");
    let ok = h
        .call_as(
            None,
            Method::POST,
            "/v1/auth/login",
            body(json!({"username": "alice", "password": "alice-password-long-enough"})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let t: pitwall_api::TokenResponse = ok.json();
    assert_eq!(t.token_type, "Bearer");
    let me: pitwall_api::WhoAmI = h
        .as_(&t.access_token, Method::GET, "/v1/whoami", None)
        .await
        .json();
    assert_eq!(me.username, "alice");
    assert_eq!(me.groups, vec!["/ops"]);
    assert!(!me.admin);
    assert_eq!(me.via, "token");
    let refreshed = h
        .call_as(
            None,
            Method::POST,
            "/v1/auth/refresh",
            body(json!({"refresh_token": t.refresh_token})),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let t2: pitwall_api::TokenResponse = refreshed.json();
    let me: pitwall_api::WhoAmI = h
        .as_(&t2.access_token, Method::GET, "/v1/whoami", None)
        .await
        .json();
    assert_eq!(me.username, "alice");
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn a_deleted_users_token_stops_working_at_once() {
    let h = Harness::start().await;
    let bob = h.user("bob", &[]).await;
    assert_eq!(
        h.as_(&bob, Method::GET, "/v1/vms", None).await.status,
        StatusCode::OK
    );
    let r = h.delete("/v1/users/bob").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = h.as_(&bob, Method::GET, "/v1/vms", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().message.contains("bob"), "{}", r.text());
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn neither_user_can_touch_the_others_vm_and_the_admin_can() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    let bob = h.user("bob", &[]).await;
    let r = h.create_as(&alice, "web", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.owner, "alice");
    h.host.next_vm_command().await;

    // Bob: the VM does not exist for him, by every route.
    let list: pitwall_api::VmList = h.as_(&bob, Method::GET, "/v1/vms", None).await.json();
    assert!(list.vms.is_empty(), "{list:?}");
    for (method, uri) in [
        (Method::GET, "/v1/vms/web"),
        (Method::GET, "/v1/vms/alice:web"),
        (Method::POST, "/v1/vms/web/stop"),
        (Method::POST, "/v1/vms/web/start"),
        (Method::DELETE, "/v1/vms/web"),
        (Method::GET, "/v1/vms/web/console"),
        (Method::GET, "/v1/vms/web/wait?state=RUNNING&timeout=10ms"),
    ] {
        let r = h.as_(&bob, method.clone(), uri, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {}",
            r.text()
        );
        let e = r.error();
        assert_eq!(e.code, "not_found");
        if !uri.contains("alice") {
            assert!(
                !e.message.contains("alice"),
                "leaks the owner: {}",
                e.message
            );
        }
    }
    // Names are per owner: bob may have his own "web", and creating it leaks nothing.
    let r = h.create_as(&bob, "web", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    h.host.next_vm_command().await;
    let mine: pitwall_api::Vm = h.as_(&bob, Method::GET, "/v1/vms/web", None).await.json();
    assert_eq!(mine.owner, "bob");
    // Alice still sees only hers.
    let theirs: pitwall_api::Vm = h.as_(&alice, Method::GET, "/v1/vms/web", None).await.json();
    assert_eq!(theirs.id, vm.id);
    // The admin sees both, must qualify the name, and may act on either.
    assert_eq!(h.vms().await.len(), 2);
    let r = h.get("/v1/vms/web").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.error().message.contains("alice:web"), "{}", r.text());
    let r = h.post("/v1/vms/alice:web/stop").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stopped: pitwall_api::Vm = r.json();
    assert_eq!(stopped.id, vm.id);
    assert_eq!(stopped.desired_state, "STOPPED");
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn group_members_share_a_vm_and_others_do_not_see_it() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &["/ops"]).await;
    let carol = h.user("carol", &["ops"]).await;
    let bob = h.user("bob", &["dev"]).await;
    let r = h.create_as(&alice, "db", json!({"group": "ops"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.group.as_deref(), Some("ops"));
    h.host.next_vm_command().await;
    let seen: pitwall_api::Vm = h.as_(&carol, Method::GET, "/v1/vms/db", None).await.json();
    assert_eq!(seen.id, vm.id);
    let r = h.as_(&carol, Method::POST, "/v1/vms/db/stop", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = h.as_(&bob, Method::GET, "/v1/vms/db", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Sharing with a group one is not in is refused.
    let r = h.create_as(&bob, "x", json!({"group": "ops"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.error().message.contains("not a member"), "{}", r.text());
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn quota_refuses_the_create_that_would_exceed_it_and_frees_on_delete() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    h.set_policy("user:alice", json!({"max_vms": 2, "max_memory_mib": 1024}))
        .await;
    for name in ["a", "b"] {
        let r = h.create_as(&alice, name, json!({})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        h.host.next_vm_command().await;
    }
    let r = h.create_as(&alice, "c", json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let e = r.error();
    assert_eq!(e.code, "quota_exceeded");
    assert!(
        e.message.contains("user alice") && e.message.contains("max_vms 2"),
        "{}",
        e.message
    );
    assert_eq!(h.host.waiting_commands().await, 0);
    // Memory is a limit of its own.
    let r = h
        .create_as(&alice, "big", json!({"memory_mib": 2048}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.error().message.contains("max_memory_mib 1024"),
        "{}",
        r.text()
    );

    let q: pitwall_api::Quota = h.as_(&alice, Method::GET, "/v1/quota", None).await.json();
    assert_eq!(q.holder, "user:alice");
    assert_eq!(q.source, "user:alice");
    assert_eq!(q.usage.vms, 2);
    assert_eq!(q.policy.max_vms, Some(2));
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn fifty_concurrent_creates_against_a_quota_of_five_admit_exactly_five() {
    let h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    h.set_policy("user:alice", json!({"max_vms": 5})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let control = h.control.clone();
        let token = alice.clone();
        tasks.push(tokio::spawn(async move {
            crate::testing::call(
                &control,
                Some(&token),
                Method::POST,
                "/v1/vms",
                body(json!({"name": format!("vm-{i}"), "image": IMAGE})),
            )
            .await
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => {
                assert_eq!(r.error().code, "quota_exceeded", "{}", r.text());
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((created, refused), (5, 45));
    let rows = h
        .control
        .inner
        .store
        .audit_since(0, 1000, Some("alice"))
        .await
        .unwrap();
    let creates = rows.iter().filter(|r| r.action == "POST /v1/vms").count();
    assert_eq!(creates, 50, "every create, admitted or not, is audited");
}

#[tokio::test]
async fn delegation_chain_is_checked_link_by_link_and_revocation_is_immediate() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    let bob = h.user("bob", &[]).await;
    let carol = h.user("carol", &[]).await;
    h.set_policy("user:alice", json!({"max_vms": 10})).await;

    let delegate =
        |token: String, to: &'static str, policy: serde_json::Value, from: Option<String>| {
            let h = &h;
            async move {
                let mut b = json!({"to": to, "policy": policy});
                if let Some(from) = from {
                    b["from"] = json!(from);
                }
                h.as_(&token, Method::POST, "/v1/delegations", Some(b))
                    .await
            }
        };
    // alice → bob (5) → carol (3): each within its parent.
    let r = delegate(alice.clone(), "user:bob", json!({"max_vms": 5}), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let d1: pitwall_api::Delegation = r.json();
    let r = delegate(
        bob.clone(),
        "user:carol",
        json!({"max_vms": 3}),
        Some(d1.id.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let d2: pitwall_api::Delegation = r.json();
    // A third link exceeding its parent is refused.
    let r = delegate(
        carol.clone(),
        "user:dave",
        json!({"max_vms": 4}),
        Some(d2.id.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(
        r.error().message.contains("max_vms 4 > parent's 3"),
        "{}",
        r.text()
    );
    // Nor can anyone use a delegation not granted to them.
    let r = delegate(
        alice.clone(),
        "user:dave",
        json!({"max_vms": 1}),
        Some(d2.id.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    // Carol creates under d2; it counts against d2, d1 and alice.
    let r = h
        .create_as(&carol, "c1", json!({"delegation": d2.id}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    h.host.next_vm_command().await;
    let q: pitwall_api::Quota = h.as_(&alice, Method::GET, "/v1/quota", None).await.json();
    assert_eq!(q.usage.vms, 1);

    // Narrowing the root below a delegation makes the whole chain refuse at once.
    h.set_policy("user:alice", json!({"max_vms": 2})).await;
    let r = h
        .create_as(&carol, "c2", json!({"delegation": d2.id}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(
        r.error().message.contains("no longer within"),
        "{}",
        r.text()
    );
    h.set_policy("user:alice", json!({"max_vms": 10})).await;

    // Revoking the middle link refuses carol's next create at once.
    let r = h
        .as_(
            &alice,
            Method::DELETE,
            &format!("/v1/delegations/{}", d1.id),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = h
        .create_as(&carol, "c3", json!({"delegation": d2.id}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.error().message.contains("revoked"), "{}", r.text());
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn mutating_requests_are_audited_with_who_what_and_outcome() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    let bob = h.user("bob", &[]).await;
    let r = h.create_as(&alice, "web", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    h.host.next_vm_command().await;
    let r = h.as_(&bob, Method::POST, "/v1/vms/web/stop", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .call_as(None, Method::DELETE, "/v1/vms/web", Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Reads are not audited.
    h.as_(&alice, Method::GET, "/v1/vms", None).await;

    let all: pitwall_api::AuditList = h.get("/v1/audit").await.json();
    let rows: Vec<(String, String, u16, String)> = all
        .entries
        .iter()
        .map(|e| {
            (
                e.actor.clone(),
                e.action.clone(),
                e.status,
                e.outcome.clone(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("alice".into(), "POST /v1/vms".into(), 201, "ok".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "bob".into(),
            "POST /v1/vms/{name}/stop".into(),
            404,
            "not_found".into()
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "-".into(),
            "DELETE /v1/vms/{name}".into(),
            401,
            "unauthenticated".into()
        )),
        "{rows:?}"
    );
    assert!(all.entries.iter().all(|e| e.method != "GET"), "{rows:?}");
    // Users see their own entries only, and may not ask for others'.
    let mine: pitwall_api::AuditList = h.as_(&bob, Method::GET, "/v1/audit", None).await.json();
    assert!(!mine.entries.is_empty());
    assert!(
        mine.entries.iter().all(|e| e.actor == "bob"),
        "{:?}",
        mine.entries
    );
    let r = h
        .as_(&bob, Method::GET, "/v1/audit?actor=alice", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn only_admins_manage_users_and_policies() {
    let h = Harness::start().await;
    let bob = h.user("bob", &[]).await;
    for (method, uri, b) in [
        (
            Method::POST,
            "/v1/users",
            Some(json!({"username": "eve", "password": "long enough password"})),
        ),
        (Method::GET, "/v1/users", None),
        (
            Method::PUT,
            "/v1/policies/user:bob",
            Some(json!({"max_vms": 100})),
        ),
        (Method::GET, "/v1/policies", None),
    ] {
        let r = h.as_(&bob, method.clone(), uri, b).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.text()
        );
        assert_eq!(r.error().code, "forbidden");
    }
    let r = h.as_(&bob, Method::GET, "/v1/quota?user=admin", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn another_users_image_cannot_be_replaced() {
    let h = Harness::start().await;
    let bob = h.user("bob", &[]).await;
    // IMAGE was registered by the admin.
    let r = h
        .as_(
            &bob,
            Method::POST,
            &format!("/v1/images?reference={IMAGE}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.error().message.contains("another user"), "{}", r.text());
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn a_group_vm_is_charged_to_the_groups_policy() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &["ops"]).await;
    let carol = h.user("carol", &["/ops"]).await;
    h.set_policy("group:ops", json!({"max_vms": 1})).await;
    let r = h.create_as(&alice, "db", json!({"group": "ops"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    h.host.next_vm_command().await;
    let r = h.create_as(&carol, "db2", json!({"group": "ops"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.error().message.contains("group ops"), "{}", r.text());
    // Not charged to carol herself: her own quota is untouched.
    let r = h.create_as(&carol, "mine", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let q: pitwall_api::Quota = h
        .as_(&carol, Method::GET, "/v1/quota?group=ops", None)
        .await
        .json();
    assert_eq!((q.holder.as_str(), q.usage.vms), ("group:ops", 1));
    h.assert_every_mutation_audited().await;
}

fn principal(name: &str, groups: &[&str]) -> crate::auth::Principal {
    crate::auth::Principal {
        subject: name.into(),
        username: name.into(),
        roles: vec![],
        groups: groups.iter().map(|g| g.to_string()).collect(),
        is_admin: false,
        via: Default::default(),
    }
}

#[tokio::test]
async fn the_owner_grants_access_to_connect_and_takes_it_back_and_nobody_else_may() {
    let mut h = Harness::start().await;
    let alice = h.user("alice", &["ops"]).await;
    let bob = h.user("bob", &["ops"]).await;
    let r = h.create_as(&alice, "web", json!({ "group": "ops" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    h.host.next_vm_command().await;
    let connect = |who: &'static str| {
        let c = h.control.clone();
        async move {
            crate::api::access::resolve_for_connect(&c, &principal(who, &[]), "alice:web").await
        }
    };
    assert!(connect("carol").await.is_err(), "no grant, no access");

    // Alice grants carol (idempotent: 201, then 200) and lists it.
    let r = h
        .as_(&alice, Method::PUT, "/v1/vms/web/grants/carol", None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let g: pitwall_api::VmGrant = r.json();
    assert_eq!((g.user.as_str(), g.granted_by.as_str()), ("carol", "alice"));
    let r = h
        .as_(&alice, Method::PUT, "/v1/vms/web/grants/carol", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list: pitwall_api::VmGrantList = h
        .as_(&alice, Method::GET, "/v1/vms/web/grants", None)
        .await
        .json();
    assert_eq!(list.grants, vec![g]);
    assert_eq!(
        connect("carol").await.expect("granted").spec.name.as_str(),
        "web"
    );
    // A grant is only to connect: carol still cannot see or change the VM.
    let carol = h.user("carol", &[]).await;
    for (method, uri) in [
        (Method::GET, "/v1/vms/alice:web"),
        (Method::POST, "/v1/vms/alice:web/stop"),
        (Method::GET, "/v1/vms/alice:web/grants"),
        (Method::PUT, "/v1/vms/alice:web/grants/dave"),
    ] {
        let r = h.as_(&carol, method.clone(), uri, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {}",
            r.text()
        );
    }
    // Bob shares the VM through his group but may not hand out access to it.
    let r = h
        .as_(&bob, Method::PUT, "/v1/vms/alice:web/grants/dave", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.error().message.contains("owner"), "{}", r.text());
    // Bad user names and self-grants are refused with a reason.
    let r = h
        .as_(&alice, Method::PUT, "/v1/vms/web/grants/alice", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = h
        .as_(&alice, Method::PUT, "/v1/vms/web/grants/a%20b", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // Revoked: gone at once; revoking again says there is none.
    let r = h
        .as_(&alice, Method::DELETE, "/v1/vms/web/grants/carol", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(connect("carol").await.is_err(), "revoked");
    let r = h
        .as_(&alice, Method::DELETE, "/v1/vms/web/grants/carol", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.error().code, "no_grant");
    h.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn ssh_certificates_name_one_vm_and_go_only_to_who_may_connect() {
    use ssh_key::rand_core::OsRng;
    let mut h = Harness::start().await;
    let alice = h.user("alice", &[]).await;
    let carol = h.user("carol", &[]).await;
    let r = h.create_as(&alice, "web", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    h.host.next_vm_command().await;
    let key = ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    let public = key.public_key().to_openssh().unwrap();
    let ask = json!({ "public_key": public });

    let r = h
        .as_(
            &alice,
            Method::POST,
            "/v1/vms/web/ssh/certificate",
            Some(ask.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let cert: pitwall_api::SshCertificate = r.json();
    assert_eq!(cert.principals, [format!("vm:{}", vm.id)]);
    assert!(cert.key_id.starts_with("alice@pitwall"), "{}", cert.key_id);
    assert!(cert.valid_before - cert.valid_after <= 360);
    let parsed = ssh_key::Certificate::from_openssh(&cert.certificate).unwrap();
    let ca: pitwall_api::SshCa = h.as_(&alice, Method::GET, "/v1/ssh/ca", None).await.json();
    assert_eq!(ca.public_key, cert.ca_public_key);
    let ca_key = ssh_key::PublicKey::from_openssh(&ca.public_key).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    parsed
        .validate_at(now, [&ca_key.fingerprint(Default::default())])
        .expect("signed by the deployment's SSH CA");

    // Carol may not connect, so the VM does not exist for her; with a grant she gets one.
    let uri = "/v1/vms/alice:web/ssh/certificate";
    let r = h.as_(&carol, Method::POST, uri, Some(ask.clone())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = h
        .as_(&alice, Method::PUT, "/v1/vms/web/grants/carol", None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = h.as_(&carol, Method::POST, uri, Some(ask.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let theirs: pitwall_api::SshCertificate = r.json();
    assert!(
        theirs.key_id.starts_with("carol@pitwall"),
        "{}",
        theirs.key_id
    );

    // Bad keys and long lives are the caller's mistake, said plainly.
    let r = h
        .as_(
            &alice,
            Method::POST,
            "/v1/vms/web/ssh/certificate",
            Some(json!({"public_key": "nope"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = h
        .as_(
            &alice,
            Method::POST,
            "/v1/vms/web/ssh/certificate",
            Some(json!({"public_key": public, "ttl_seconds": 7200})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.error().message.contains("at most 3600"), "{}", r.text());
}
