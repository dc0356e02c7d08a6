//! The whole integrator flow: find a site by CRN, check its status, pair, query.

use halo_ids::Environment;

use crate::fixture::{Harness, message, practice, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrator_finds_pairs_and_queries_a_site() {
    let mut h = Harness::start().await;
    let link = h
        .link(
            Environment::Stage,
            &[
                practice("SMILE01", "Smile Dental"),
                practice("GRIN02", "Grin Dental"),
            ],
        )
        .await;
    let key = h.integrator(Environment::Stage).await;
    let (crn, halo) = link.sites[0];
    h.enable_practice(crn).await;

    // Find sites by PMS ID: the site, authoritative, with its practice name.
    let (status, body) = h
        .get(
            &key,
            &format!(
                "/integrator/sites?practiceManagementSiteId={}&practiceManagementName=D4w",
                crn.as_str().to_lowercase()
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sites = body["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["id"], halo.to_string());
    assert_eq!(sites[0]["authoritative"], true);
    assert_eq!(sites[0]["status"], "active");
    assert_eq!(sites[0]["availability"], "online");
    assert_eq!(sites[0]["practiceMetadata"]["practiceName"], "Smile Dental");
    assert_eq!(
        sites[0]["practiceMetadata"]["practiceManagementSiteId"],
        "SMILE01"
    );

    // Status of the site.
    let (status, body) = h.get(&key, &format!("/integrator/sites/{halo}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pmsType"], "D4w");

    // Not paired yet: refused.
    let (status, body) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = h.pair(&key, crn).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], halo.to_string());

    let (status, body) = h
        .query(
            &key,
            halo,
            "SELECT patient_id, first_name FROM patients ORDER BY patient_id LIMIT 3",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "successful");
    assert_eq!(body["mode"], "immediate");
    assert_eq!(body["siteId"], halo.to_string());
    assert_eq!(
        body["integratorId"],
        halo_cloud::integrator::integrator_uuid(&"acme-dental".parse().unwrap()).to_string()
    );
    let rows = rows(&body);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["patient_id"], 1);
    assert_eq!(body["result"]["rows"], 3);

    // The other practice on the same Link is not enabled: same answer as unknown.
    let (_, other) = link.sites[1];
    let (status, body) = h
        .query(&key, other, "SELECT first_name FROM patients")
        .await;
    assert_eq!(status, 404, "{body}");
    let unknown = halo_ids::HaloGuid::from_u128(0xdead_beef).unwrap();
    let (status2, body2) = h
        .query(&key, unknown, "SELECT first_name FROM patients")
        .await;
    assert_eq!(
        (status2, message(&body2)),
        (status, message(&body)),
        "no existence leak"
    );

    // A wrong key is 401.
    let (status, _) = h.query("nope", halo, "SELECT 1").await;
    assert_eq!(status, 401);

    // The OpenAPI document is served and names the integrator paths.
    let doc: serde_json::Value = h
        .http
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["paths"]["/integrator/sites/{siteId}/queries/immediate"].is_object(),
        "{doc}"
    );
    link.handle.shutdown().await.unwrap();
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_only_on_its_own_database() {
    let mut h = Harness::start().await;
    let practices: Vec<_> = (0..3)
        .map(|i| practice(&format!("TEN{i}"), &format!("Tenant {i}")))
        .collect();
    let link = h.link(Environment::Stage, &practices).await;
    let key = h.integrator(Environment::Stage).await;
    for (crn, _) in &link.sites {
        h.enable_practice(*crn).await;
        assert_eq!(h.pair(&key, *crn).await.0, 200);
    }
    // Each tenant's first patient differs (seeded by CRN); learn them once.
    let mut expected = Vec::new();
    for (_, halo) in &link.sites {
        let (status, body) = h
            .query(
                &key,
                *halo,
                "SELECT first_name, last_name FROM patients WHERE patient_id = 1",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        expected.push(rows(&body));
    }
    assert!(
        expected[0] != expected[1] || expected[1] != expected[2],
        "tenants must differ"
    );
    let mut tasks = Vec::new();
    for round in 0..30 {
        let i = round % 3;
        let halo = link.sites[i].1;
        let (h2, key2) = (h.http.clone(), key.clone());
        let url = h.url(&format!("/integrator/sites/{halo}/queries/immediate"));
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"command": {"text": "SELECT first_name, last_name FROM patients WHERE patient_id = 1", "executionMode": "reader"}});
            let resp = h2.post(url).header(halo_cloud::KEY_HEADER, key2).json(&body).send().await.unwrap();
            (i, resp.json::<serde_json::Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (i, body) = t.await.unwrap();
        assert!(body["result"].is_object(), "tenant {i}: {body}");
        assert_eq!(
            rows(&body),
            expected[i],
            "a job for tenant {i} was answered by another database"
        );
    }
    h.cloud.stop().await;
}
