//! What an integrator may see, and where its pairing counts: attacks from issue 10
//! (a Stage pairing used in Production, a demo copy shadowing a practice, and the
//! CRN existence oracle), each named after the attack.

use halo_ids::{Crn, Environment};
use serde_json::Value;

use crate::fixture::{Harness, message, practice, rows};

const NOT_ENABLED: &str = "practice not enabled for this integrator";

/// An integrator call answered as raw bytes, to compare two answers exactly.
async fn raw(h: &Harness, method: reqwest::Method, key: &str, path: &str) -> (u16, String) {
    let resp = h
        .http
        .request(method, h.url(path))
        .header(halo_cloud::KEY_HEADER, key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Find sites and pair site for `crn`, as raw answers.
async fn ask(h: &Harness, key: &str, crn: &str) -> [(u16, String); 2] {
    let query = format!("practiceManagementSiteId={crn}&practiceManagementName=D4w");
    [
        raw(
            h,
            reqwest::Method::GET,
            key,
            &format!("/integrator/sites?{query}"),
        )
        .await,
        raw(
            h,
            reqwest::Method::POST,
            key,
            &format!("/integrator/pair-site?{query}"),
        )
        .await,
    ]
}

/// Asserts that `crn` gets, on both endpoints, byte for byte the answer of a CRN no
/// database has, and that this answer is the caller's own 403.
async fn assert_answered_like_unknown(h: &Harness, key: &str, crn: &str) {
    let unknown = ask(h, key, "NOBODY99").await;
    let hidden = ask(h, key, crn).await;
    for ((status, body), (hidden_status, hidden_body)) in unknown.iter().zip(&hidden) {
        assert_eq!(*status, 403, "{body}");
        let json: Value = serde_json::from_str(body).unwrap();
        assert_eq!(message(&json), NOT_ENABLED, "{body}");
        assert_eq!(
            (hidden_status, hidden_body),
            (status, body),
            "{crn} is told apart from an unknown CRN"
        );
    }
}

fn crn(s: &str) -> Crn {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_pairing_does_not_pair_production() {
    let mut h = Harness::start().await;
    let stage = h
        .link(
            Environment::Stage,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let production = h
        .link(
            Environment::Production,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let (stage_site, production_site) = (stage.sites[0].1, production.sites[0].1);
    let stage_key = h.integrator(Environment::Stage).await;
    let production_key = h.integrator(Environment::Production).await;
    h.enable_practice(crn("HARBOUR01")).await;
    let count = "SELECT count(*) AS n FROM patients";

    // Paired with the Stage key: Stage works, Production is still not paired.
    let (status, body) = h.pair(&stage_key, crn("HARBOUR01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], stage_site.to_string());
    let (status, body) = h.query(&stage_key, stage_site, count).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.query(&production_key, production_site, count).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        message(&body),
        "integrator has not paired with this site in this environment"
    );

    // Pairing with the Production key pairs Production (and the Production site).
    let (status, body) = h.pair(&production_key, crn("HARBOUR01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], production_site.to_string());
    let (status, body) = h.query(&production_key, production_site, count).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body)[0]["n"], 12);
    // Keys still never cross environments.
    let (status, body) = h.query(&production_key, stage_site, count).await;
    assert_eq!(status, 401, "{body}");
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_pairing_does_not_pair_stage() {
    let mut h = Harness::start().await;
    let stage = h
        .link(
            Environment::Stage,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let production = h
        .link(
            Environment::Production,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let stage_key = h.integrator(Environment::Stage).await;
    let production_key = h.integrator(Environment::Production).await;
    h.enable_practice(crn("HARBOUR01")).await;
    let count = "SELECT count(*) AS n FROM patients";
    let (status, body) = h.pair(&production_key, crn("HARBOUR01")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.query(&production_key, production.sites[0].1, count).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.query(&stage_key, stage.sites[0].1, count).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        message(&body),
        "integrator has not paired with this site in this environment"
    );
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_copy_does_not_shadow_a_practice() {
    let mut h = Harness::start().await;
    let real = h
        .link(
            Environment::Stage,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(crn("HARBOUR01")).await;
    // The attacker's Stage Link announces a demo copy whose real CRN is HARBOUR01.
    let mut copy = practice("HARBOUR01", "Harbour Dental (copy)");
    copy.is_demo = true;
    let attacker = h.link(Environment::Stage, &[copy]).await;
    let (fake, copy_site) = attacker.sites[0];
    assert_ne!(fake, crn("HARBOUR01"));
    let real_site = real.sites[0].1;

    // Find sites still finds the practice, and only the practice.
    let (status, body) = h
        .get(
            &key,
            "/integrator/sites?practiceManagementSiteId=HARBOUR01&practiceManagementName=D4w",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sites = body["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "{body}");
    assert_eq!(sites[0]["id"], real_site.to_string());
    assert!(!body.to_string().contains(&copy_site.to_string()));

    // Pairing pairs the practice, and queries reach it.
    let (status, body) = h.pair(&key, crn("HARBOUR01")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], real_site.to_string());
    let (status, body) = h
        .query(&key, real_site, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body)[0]["n"], 12);
    // The copy is not reached through the practice's pairing.
    let (status, body) = h
        .query(&key, copy_site, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(message(&body), "site not found");
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existence_oracle_branch_crn_answers_like_an_unknown_crn() {
    let mut h = Harness::start().await;
    let mut harbour = practice("HARBOUR01", "Harbour Dental");
    harbour.branch_crns = vec![(crn("HARBOUR02"), "Manly".to_owned())];
    h.link(
        Environment::Stage,
        &[practice("BRIGHT77", "Bright Dental"), harbour],
    )
    .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(crn("BRIGHT77")).await;

    // Enabled only for BRIGHT77: another practice's branch CRN is an unknown CRN.
    assert_answered_like_unknown(&h, &key, "HARBOUR02").await;

    // Enabled for the parent: told it is a branch CRN, not which parent.
    h.enable_practice(crn("HARBOUR01")).await;
    for (status, body) in ask(&h, &key, "HARBOUR02").await {
        assert_eq!(status, 400, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            message(&json),
            "this is a branch (local) CRN; Halo Connect uses the parent practice's CRN, which the practice can provide"
        );
        assert!(!body.contains("HARBOUR01"), "the parent leaked: {body}");
    }
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existence_oracle_demo_real_crn_answers_like_an_unknown_crn() {
    let mut h = Harness::start().await;
    let mut copy = practice("DEMO1", "Demo Dental");
    copy.is_demo = true;
    let link = h
        .link(
            Environment::Stage,
            &[practice("BRIGHT77", "Bright Dental"), copy],
        )
        .await;
    let fake = link.sites[1].0;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(crn("BRIGHT77")).await;

    // Enabled only for BRIGHT77: another demo copy's real CRN is an unknown CRN.
    assert_answered_like_unknown(&h, &key, "DEMO1").await;

    // Enabled for the copy (by its fake CRN): told to use the fake CRN.
    h.enable_practice(fake).await;
    for (status, body) in ask(&h, &key, "DEMO1").await {
        assert_eq!(status, 400, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            message(&json),
            "this CRN belongs to a demo or de-identified copy and is not unique; use the fake CRN from the Halo Link log"
        );
        assert!(!body.contains(fake.as_str()), "the fake CRN leaked: {body}");
    }
    h.cloud.stop().await;
}
