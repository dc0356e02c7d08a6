//! The Link trust boundary, attacked with the hostile Link client: session hijack,
//! claiming a practice, forged results, revocation, rotation, scope extension and
//! an unbounded hello. Each refusal is asserted by its reason.

use std::time::{Duration, Instant};

use halo_ids::{Environment, HaloGuid, LinkGuid};
use reqwest::Method;
use serde_json::{Value, json};

use crate::fixture::{Harness, practice, rows};
use crate::hostile::{Answer, HostileLink, database, hello};

fn guid(n: u128) -> HaloGuid {
    HaloGuid::from_u128(n).unwrap()
}

fn link_guid(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

/// Issues a Link credential with this scope; returns (token, id).
async fn credential(h: &Harness, scope: Value) -> (String, String) {
    let answer = h
        .admin(Method::POST, "/admin/link-credentials", scope)
        .await;
    (
        answer["key"].as_str().unwrap().to_owned(),
        answer["id"].as_str().unwrap().to_owned(),
    )
}

async fn credentials(h: &Harness) -> Vec<Value> {
    h.admin(Method::GET, "/admin/link-credentials", Value::Null)
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// A paired Stage integrator key for `crn`.
async fn paired_key(h: &Harness, crn: halo_ids::Crn) -> String {
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(crn).await;
    let (status, body) = h.pair(&key, crn).await;
    assert_eq!(status, 200, "{body}");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hijack_with_a_fresh_credential_is_refused() {
    let mut h = Harness::start().await;
    let victim = h
        .link(Environment::Stage, &[practice("BRIGHT77", "Bright Dental")])
        .await;
    let (crn, halo) = victim.sites[0];
    let key = paired_key(&h, crn).await;

    // The attacker holds a freshly issued credential, even one whose scope names the
    // victim's practice, and says hello with the victim's Link GUID (visible in the
    // admin API and in logs) and its database.
    let (token, id) = credential(
        &h,
        json!({"label": "attacker", "environment": "stage", "practices": ["D4w:BRIGHT77"]}),
    )
    .await;
    let (_attacker, answer) = HostileLink::join(
        h.cloud.addr,
        &token,
        hello(
            victim.handle.link_guid(),
            Environment::Stage,
            vec![database(halo, "BRIGHT77", false)],
        ),
    )
    .await;
    match answer {
        Answer::Refused(reason) => assert!(
            reason.contains("this link is bound to another credential"),
            "{reason}"
        ),
        Answer::Ack(_) => panic!("a fresh credential took over another Link's session"),
    }

    // The victim's session is untouched: still the first one, and queries reach the
    // real database.
    assert_eq!(victim.handle.status().borrow().sessions, 1);
    for _ in 0..20 {
        let (status, body) = h
            .query(
                &key,
                halo,
                "SELECT first_name FROM patients ORDER BY patient_id LIMIT 2",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(rows(&body).len(), 2);
    }
    // The attacker's credential did not become bound to the victim.
    let listed = credentials(&h).await;
    let attacker = listed.iter().find(|c| c["id"] == id.as_str()).unwrap();
    assert_eq!(attacker["linkId"], Value::Null, "{attacker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_for_another_links_queries_never_reach_integrators() {
    let mut h = Harness::start().await;
    let victim = h
        .link(Environment::Stage, &[practice("BRIGHT77", "Bright Dental")])
        .await;
    let (crn, halo) = victim.sites[0];
    let key = paired_key(&h, crn).await;
    // A Link with a session of its own answers query ids it was never sent.
    let (token, _) = credential(
        &h,
        json!({"environment": "stage", "practices": ["D4w:EVIL1"]}),
    )
    .await;
    let (mut forger, answer) = HostileLink::join(
        h.cloud.addr,
        &token,
        hello(
            link_guid(666),
            Environment::Stage,
            vec![database(guid(666), "EVIL1", false)],
        ),
    )
    .await;
    assert!(
        matches!(answer, Answer::Ack(ref r) if r.is_empty()),
        "{answer:?}"
    );
    // A Link is trusted for its own databases only: its job, its answer.
    h.enable_practice("EVIL1".parse().unwrap()).await;
    let (status, body) = h.pair(&key, "EVIL1".parse().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let own_query = {
        let http = h.http.clone();
        let url = h.url(&format!(
            "/integrator/sites/{}/queries/immediate",
            guid(666)
        ));
        let key = key.clone();
        tokio::spawn(async move {
            let body = json!({"command": {"text": "SELECT first_name FROM patients", "executionMode": "reader"}});
            let resp = http
                .post(url)
                .header(halo_cloud::KEY_HEADER, key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    let job = forger.next_job(Duration::from_secs(5)).await.unwrap();
    assert_eq!(job.halo_guid, guid(666));
    forger
        .forge(job.query_id, &json!([{"first_name": "OWN"}]))
        .await;
    let (status, body) = own_query.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body)[0]["first_name"], "OWN");
    let forging = tokio::spawn(async move {
        for round in 0..50u64 {
            for id in 1..200u64 {
                forger
                    .forge(id + round, &json!([{"first_name": "FORGED"}]))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for _ in 0..30 {
        let (status, body) = h
            .query(
                &key,
                halo,
                "SELECT first_name FROM patients ORDER BY patient_id LIMIT 1",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(rows(&body)[0]["first_name"], "FORGED");
    }
    forging.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_a_practice_outside_the_scope_is_refused_by_name() {
    let h = Harness::start().await;
    let (token, _) = credential(
        &h,
        json!({"environment": "stage", "practices": ["D4w:EVIL1"]}),
    )
    .await;
    let claimed = guid(0xc1a1);
    let own = guid(0x0e1);
    let (_link, answer) = HostileLink::join(
        h.cloud.addr,
        &token,
        hello(
            link_guid(7),
            Environment::Stage,
            vec![
                database(claimed, "HARBOUR01", false),
                database(own, "EVIL1", false),
            ],
        ),
    )
    .await;
    let Answer::Ack(rejected) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, claimed);
    assert!(
        rejected[0]
            .1
            .contains("practice D4w:HARBOUR01 is outside this link credential's scope"),
        "{rejected:?}"
    );
    // Nothing was registered for the claimed practice; the own one was.
    let resp = h
        .http
        .get(h.url(&format!("/admin/sites/{claimed}")))
        .bearer_auth(crate::fixture::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let own_site = h
        .admin(Method::GET, &format!("/admin/sites/{own}"), Value::Null)
        .await;
    assert_eq!(own_site["site"]["authoritative"], true);
    // An integrator enabled for HARBOUR01 finds nothing there (no site: an empty
    // list, as Halo answers).
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice("HARBOUR01".parse().unwrap()).await;
    let (status, body) = h
        .get(
            &key,
            "/integrator/sites?practiceManagementSiteId=HARBOUR01&practiceManagementName=D4w",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sites"], json!([]), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_of_another_environment_or_demo_copies_out_of_scope_are_refused() {
    let h = Harness::start().await;
    let (stage, _) = credential(&h, json!({"environment": "stage", "practices": ["D4w:A1"]})).await;
    let (_l, answer) = HostileLink::join(
        h.cloud.addr,
        &stage,
        hello(
            link_guid(1),
            Environment::Production,
            vec![database(guid(1), "A1", false)],
        ),
    )
    .await;
    match answer {
        Answer::Refused(reason) => assert!(
            reason
                .contains("this link credential is for stage, but the link says it is production"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // A demo copy needs demoCopies in the scope.
    let (_l, answer) = HostileLink::join(
        h.cloud.addr,
        &stage,
        hello(
            link_guid(1),
            Environment::Stage,
            vec![database(guid(2), "HARBOUR01", true)],
        ),
    )
    .await;
    let Answer::Ack(rejected) = answer else {
        panic!("{answer:?}")
    };
    assert!(
        rejected[0]
            .1
            .contains("demo and de-identified copies are outside"),
        "{rejected:?}"
    );
    // And a Production scope can never admit demo copies.
    let resp = h
        .http
        .post(h.url("/admin/link-credentials"))
        .bearer_auth(crate::fixture::ADMIN)
        .json(&json!({"environment": "production", "demoCopies": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("demo copies are never admitted in production"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_credential_closes_its_live_session_within_a_second() {
    let h = Harness::start().await;
    let (token, id) =
        credential(&h, json!({"environment": "stage", "practices": ["D4w:A1"]})).await;
    let hi = hello(
        link_guid(9),
        Environment::Stage,
        vec![database(guid(9), "A1", false)],
    );
    let (mut link, answer) = HostileLink::join(h.cloud.addr, &token, hi.clone()).await;
    assert!(matches!(answer, Answer::Ack(_)), "{answer:?}");
    link.heartbeat(vec![guid(9)]).await;

    // Actor and reason are required.
    let resp = h
        .http
        .post(h.url(&format!("/admin/link-credentials/{id}/revoke")))
        .bearer_auth(crate::fixture::ADMIN)
        .json(&json!({"actor": "support:ann", "reason": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(link.ended_within(Duration::from_millis(300)).await, None);

    h.admin(
        Method::POST,
        &format!("/admin/link-credentials/{id}/revoke"),
        json!({"actor": "support:ann", "reason": "server stolen"}),
    )
    .await;
    let revoked_at = Instant::now();
    let reason = link
        .ended_within(Duration::from_secs(1))
        .await
        .expect("the live session is closed within a second of the revocation");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert!(reason.contains("revoked"), "{reason}");
    // From then on the credential is refused at the door.
    assert_eq!(
        HostileLink::connect(h.cloud.addr, &token).await.err(),
        Some(401)
    );
    let listed = credentials(&h).await;
    let c = listed.iter().find(|c| c["id"] == id.as_str()).unwrap();
    assert_eq!(c["revoked"], true, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_the_link_to_a_new_credential() {
    let h = Harness::start().await;
    let (old, id) = credential(&h, json!({"environment": "stage", "practices": ["D4w:A1"]})).await;
    let hi = hello(
        link_guid(5),
        Environment::Stage,
        vec![database(guid(5), "A1", false)],
    );
    let (mut link, answer) = HostileLink::join(h.cloud.addr, &old, hi.clone()).await;
    assert!(matches!(answer, Answer::Ack(_)), "{answer:?}");

    let rotated = h
        .admin(
            Method::POST,
            &format!("/admin/link-credentials/{id}/rotate"),
            json!({"actor": "support:bo", "reason": "yearly rotation"}),
        )
        .await;
    let new = rotated["key"].as_str().unwrap();
    assert_ne!(rotated["id"], id.as_str());
    let reason = link.ended_within(Duration::from_secs(1)).await.unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(
        HostileLink::connect(h.cloud.addr, &old).await.err(),
        Some(401)
    );
    // The new token works for the same Link, and for no other.
    let (_link, answer) = HostileLink::join(h.cloud.addr, new, hi).await;
    assert!(matches!(answer, Answer::Ack(_)), "{answer:?}");
    let (_other, answer) = HostileLink::join(
        h.cloud.addr,
        new,
        hello(
            link_guid(6),
            Environment::Stage,
            vec![database(guid(6), "A1", false)],
        ),
    )
    .await;
    match answer {
        Answer::Refused(reason) => {
            assert!(reason.contains("belongs to another link"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_extends_a_hosting_scope_for_a_new_practice() {
    let h = Harness::start().await;
    let (token, id) = credential(
        &h,
        json!({"label": "D4W Cloud cluster 3", "environment": "production", "kind": "hosting",
               "practices": ["D4w:A1"]}),
    )
    .await;
    let hi = hello(
        link_guid(3),
        Environment::Production,
        vec![
            database(guid(31), "A1", false),
            database(guid(32), "B2", false),
        ],
    );
    let (link, answer) = HostileLink::join(h.cloud.addr, &token, hi.clone()).await;
    let Answer::Ack(rejected) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [guid(32)]);
    drop(link);

    let extended = h
        .admin(
            Method::POST,
            &format!("/admin/link-credentials/{id}/scope"),
            json!({"practices": ["D4w:B2"], "actor": "support:ann", "reason": "B2 moved to cluster 3"}),
        )
        .await;
    assert_eq!(extended["practices"], json!(["D4w:A1", "D4w:B2"]));
    assert_eq!(extended["kind"], "hosting");
    let (_link, answer) = HostileLink::join(h.cloud.addr, &token, hi).await;
    assert!(
        matches!(answer, Answer::Ack(ref r) if r.is_empty()),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_hello_is_refused_with_a_reason() {
    let h = Harness::start().await;
    let max = halo_cloud::app::MAX_DATABASES_PER_LINK;
    let practices: Vec<String> = (0..=max).map(|i| format!("D4w:P{i}")).collect();
    let (token, _) = credential(&h, json!({"environment": "stage", "practices": practices})).await;
    let databases = (0..=max)
        .map(|i| database(guid(1000 + i as u128), &format!("P{i}"), false))
        .collect();
    let (_link, answer) = HostileLink::join(
        h.cloud.addr,
        &token,
        hello(link_guid(2), Environment::Stage, databases),
    )
    .await;
    match answer {
        Answer::Refused(reason) => assert!(
            reason.contains(&format!("announces {} databases", max + 1))
                && reason.contains(&format!("at most {max} per link")),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let resp = h
        .http
        .get(h.url(&format!("/admin/sites/{}", guid(1000))))
        .bearer_auth(crate::fixture::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        404,
        "nothing of the hello was registered"
    );
}

/// A revocation that does not come through this node's revoke handler (decided on
/// another node of a cluster and followed here, or applied while the handler's
/// lookup still saw the credential unbound) closes the live session too: the kick
/// is sent when the revocation is published, to the Link bound at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_published_by_any_path_closes_the_live_session() {
    let h = Harness::start().await;
    let (token, _id) =
        credential(&h, json!({"environment": "stage", "practices": ["D4w:A1"]})).await;
    let hi = hello(
        link_guid(11),
        Environment::Stage,
        vec![database(guid(11), "A1", false)],
    );
    // The Link binds the credential on its first hello.
    let (mut link, answer) = HostileLink::join(h.cloud.addr, &token, hi).await;
    assert!(matches!(answer, Answer::Ack(_)), "{answer:?}");
    link.heartbeat(vec![guid(11)]).await;
    assert_eq!(link.ended_within(Duration::from_millis(200)).await, None);

    let event = halo_cloud::record::CredentialEvent::Revoked {
        token_hash: halo_policy::KeyHash::of(&token),
        actor: Some("node-b:support".to_owned()),
        reason: Some("revoked elsewhere".to_owned()),
    };
    h.cloud
        .app
        .state
        .apply_credential(event, halo_cloud::clock::now())
        .await
        .unwrap();
    let reason = link
        .ended_within(Duration::from_secs(1))
        .await
        .expect("the live session is closed once the revocation is published");
    assert!(reason.contains("revoked"), "{reason}");
}
