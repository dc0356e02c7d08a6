//! Tenancy rules seen from the API: branch CRNs, demo copies, authority.

use halo_ids::Environment;
use serde_json::json;

use crate::fixture::{Harness, message, practice, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_crn_is_refused_without_revealing_the_parent() {
    let mut h = Harness::start().await;
    let mut p = practice("PARENT1", "Parent Dental");
    p.branch_crns = vec![("BRANCH1".parse().unwrap(), "Manly".to_owned())];
    let link = h.link(Environment::Stage, &[p]).await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(link.sites[0].0).await;
    let (status, body) = h
        .get(
            &key,
            "/integrator/sites?practiceManagementSiteId=BRANCH1&practiceManagementName=D4w",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("branch"), "{body}");
    assert!(
        !body.to_string().contains("PARENT1"),
        "the parent leaked: {body}"
    );
    let (status, _) = h
        .get(
            &key,
            "/integrator/sites?practiceManagementSiteId=PARENT1&practiceManagementName=D4w",
        )
        .await;
    assert_eq!(status, 200);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_copy_answers_to_its_fake_crn_only() {
    let mut h = Harness::start().await;
    let mut demo = practice("DEMOCRN", "Demo Dental");
    demo.is_demo = true;
    let link = h.link(Environment::Stage, &[demo]).await;
    let key = h.integrator(Environment::Stage).await;
    let (fake, halo) = link.sites[0];
    assert_eq!(fake, halo.fake_crn());
    h.enable_practice(fake).await;
    let (status, body) = h
        .get(
            &key,
            "/integrator/sites?practiceManagementSiteId=DEMOCRN&practiceManagementName=D4w",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("demo"), "{body}");
    let (status, body) = h
        .get(
            &key,
            &format!(
                "/integrator/sites?practiceManagementSiteId={fake}&practiceManagementName=D4w"
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sites"][0]["id"], halo.to_string());
    assert_eq!(
        body["sites"][0]["practiceMetadata"]["practiceManagementSiteId"],
        fake.to_string()
    );
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_link_does_not_register_a_demo_copy() {
    let mut h = Harness::start().await;
    let mut demo = practice("DEMOPRD", "Demo Dental");
    demo.is_demo = true;
    let link = h
        .link(
            Environment::Production,
            &[practice("REAL01", "Real Dental"), demo],
        )
        .await;
    assert_eq!(link.sites.len(), 1, "the demo copy is not served");
    let demo_halo = link.sites.iter().find(|(c, _)| c.as_str() == "DEMOPRD");
    assert!(demo_halo.is_none());
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_authoritative_site_is_403_until_promoted() {
    let mut h = Harness::start().await;
    let primary = h
        .link(Environment::Stage, &[practice("SHARED1", "Shared Dental")])
        .await;
    let backup = h
        .link(Environment::Stage, &[practice("SHARED1", "Shared Dental")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    let crn = primary.sites[0].0;
    let (first, second) = (primary.sites[0].1, backup.sites[0].1);
    h.enable_practice(crn).await;
    assert_eq!(h.pair(&key, crn).await.0, 200);

    let (status, body) = h
        .get(
            &key,
            &format!("/integrator/sites?practiceManagementSiteId={crn}&practiceManagementName=D4w"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["sites"].as_array().unwrap().len(),
        2,
        "both copies are listed: {body}"
    );
    assert_eq!(
        body["sites"][0]["id"],
        first.to_string(),
        "the authoritative one first"
    );
    assert_eq!(body["sites"][1]["authoritative"], false);

    assert_eq!(
        h.query(&key, first, "SELECT count(*) AS n FROM patients")
            .await
            .0,
        200
    );
    let (status, body) = h
        .query(&key, second, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 403, "{body}");

    let before = h
        .admin(
            reqwest::Method::GET,
            &format!("/admin/sites/{second}"),
            json!(null),
        )
        .await;
    let promoted = h
        .admin(
            reqwest::Method::POST,
            &format!("/admin/sites/{second}/promote"),
            json!({"actor": "support@halo", "reason": "server migration"}),
        )
        .await;
    assert_eq!(promoted["site"]["authoritative"], true);
    assert!(
        promoted["epoch"].as_u64() > before["epoch"].as_u64(),
        "epoch grows"
    );

    let (status, body) = h
        .query(&key, second, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body)[0]["n"], 12);
    let (status, _) = h
        .query(&key, first, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 403, "the old holder is no longer routed");
    h.cloud.stop().await;
}
