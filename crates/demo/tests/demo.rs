//! The demo, as the README's first command starts it: its printed instructions name
//! what the integrator may read, and the printed query answers rows.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use base64::Engine as _;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_query_answers_rows_and_the_readable_tables_are_named() {
    let demo = halo_demo::start_demo("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let text = halo_demo::instructions(&demo);
    for table in halo_demo::DEMO_TABLES {
        assert!(text.contains(table), "{table} not named in:\n{text}");
    }
    let site = demo.sites.first().unwrap();
    assert!(text.contains(&site.halo_guid.to_string()), "{text}");

    // The printed immediate query, sent as printed.
    let line = text
        .lines()
        .find(|l| l.contains("/queries/immediate"))
        .unwrap();
    let url = line.split('\'').find(|p| p.starts_with("http://")).unwrap();
    let body = line.rsplit("-d '").next().unwrap().trim_end_matches('\'');
    let answer: Value = reqwest::Client::new()
        .post(url)
        .header("Ocp-Apim-Subscription-Key", &demo.key)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = answer["result"]["data"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let rows: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(5), "{rows}");
    assert!(rows[0]["first_name"].is_string(), "{rows}");
}
