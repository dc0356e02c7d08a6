//! The status console: signing in, and the page itself opened in headless Chromium
//! (Debian's `chromium`), its content checked and a screenshot saved under the
//! target directory (`target/tmp/console.png`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use halo_ids::Environment;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::fixture::{ADMIN, Harness, INTEGRATOR, practice};

/// The flags every run of the browser gets.
const FLAGS: [&str; 4] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
];

/// The browser: `$CHROMIUM`, or Debian's `/usr/bin/chromium`. Missing, the test
/// fails and says how to get it (CI installs it in `.ci/run`); it never skips.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "this test opens the status console in headless Chromium, which is not installed at {}: \
         install Debian's chromium (`sudo apt-get install -y chromium`; .ci/run does so before the tests) \
         or set CHROMIUM to the browser's path",
        path.display()
    );
    path
}

/// Runs the browser on `url` with `extra` arguments; its stdout.
async fn browse(profile: &Path, extra: &[String], url: &str) -> String {
    let run = tokio::process::Command::new(chromium())
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium starts");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-time login link for the console.
async fn ticket(h: &Harness) -> String {
    let t = h
        .admin(reqwest::Method::POST, "/admin/console/tickets", json!({}))
        .await;
    h.url(t["path"].as_str().unwrap())
}

/// A support operator's view: practices and sites, authority, Links, the request
/// chart and recent audit entries, in a real browser, with everything escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_practices_links_activity_and_audit_in_chromium() {
    let browser = chromium();
    let mut h = Harness::start().await;
    let hostile = "<script>alert(1)</script> & Co";
    let link = h
        .link(
            Environment::Stage,
            &[practice("AB123", "Smile Co"), practice("XSS01", hostile)],
        )
        .await;
    let key = h.integrator(Environment::Stage).await;
    let resp = h
        .http
        .post(h.url(&format!("/admin/integrators/{INTEGRATOR}/practices")))
        .bearer_auth(ADMIN)
        .header("X-Halo-Actor", "alice-support")
        .header("X-Halo-Reason", "consent form 42")
        .json(&json!({"pmsId": "D4w:AB123"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let (status, _) = h.pair(&key, link.sites[0].0).await;
    assert_eq!(status, 200);
    let (status, _) = h
        .query(&key, link.sites[0].1, "SELECT count(*) FROM patients")
        .await;
    assert_eq!(status, 200);
    let (status, _) = h
        .query(&key, link.sites[0].1, "SELECT * FROM practice_info")
        .await;
    assert_eq!(status, 403);

    let profile = tempfile::tempdir().unwrap();
    let dom = browse(
        profile.path(),
        &["--dump-dom".to_owned()],
        &ticket(&h).await,
    )
    .await;
    assert!(
        dom.contains("Halo Connect status console"),
        "signed in through the ticket: {dom}"
    );
    assert!(dom.contains("Smile Co"), "the demo practice's name");
    assert!(dom.contains("D4w:AB123"));
    let site = link.sites[0].1.to_string();
    assert!(dom.contains(&site), "a site's Halo GUID");
    assert!(
        dom.contains(&link.handle.link_guid().to_string()),
        "its Link"
    );
    assert!(dom.contains("epoch"), "authority with its epoch");
    assert!(
        dom.contains("practiceEnabled")
            && dom.contains("alice-support")
            && dom.contains("consent form 42"),
        "a recent audit entry with actor and reason"
    );
    assert!(dom.contains("routeDenied"), "a sampled denial");
    assert!(
        dom.contains(INTEGRATOR) && dom.contains("<svg"),
        "the integrator's request chart"
    );
    assert!(dom.contains("componentNotAuthorised"), "denials by code");
    // The practice name from a database is text, never markup.
    assert!(
        !dom.contains("<script>alert(1)</script>"),
        "unescaped practice name in the page"
    );
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"));

    // Finding a practice: by CRN, by Halo GUID, by part of its name.
    for (q, shown, hidden) in [
        ("XSS01", "&lt;script&gt;", "Smile Co"),
        (site.as_str(), "Smile Co", "&lt;script&gt;"),
        ("smile", "Smile Co", "&lt;script&gt;"),
    ] {
        let page = h
            .http
            .get(h.url(&format!("/admin/console?q={q}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains(shown), "?q={q} shows {shown}");
        assert!(!page.contains(hidden), "?q={q} hides {hidden}");
    }

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,2200".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
        &ticket(&h).await,
    )
    .await;
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    eprintln!(
        "console screenshot ({} bytes) from {}: {}",
        png.len(),
        browser.display(),
        shot.display()
    );
    h.cloud.stop().await;
}

/// Signing in: the admin token as Bearer, a login form that sets an HttpOnly
/// session cookie, one-time tickets; anything else is sent to the login form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_the_admin_token_or_a_session() {
    let h = Harness::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let console = h.url("/admin/console");

    let resp = http.get(&console).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()[LOCATION], "/admin/console/login");
    let resp = http
        .get(&console)
        .bearer_auth("not-the-admin-token-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(&console)
        .header("Cookie", "halo_console=hcs_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        303,
        "a forged session is no session"
    );

    let resp = http.get(&console).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Halo Connect status console")
    );

    // The form: a wrong token is sent back, the right one gets a session cookie.
    let login = h.url("/admin/console/login");
    let resp = http
        .post(&login)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let form = serde_urlencoded::to_string([("token", ADMIN)]).unwrap();
    let resp = http
        .post(&login)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(ADMIN),
        "the cookie is a session id, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let resp = http
        .get(&console)
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Signing out ends the session.
    let resp = http
        .post(h.url("/admin/console/logout"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let resp = http
        .get(&console)
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);

    // A ticket works once; tickets need the admin token.
    let url = ticket(&h).await;
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert!(resp.headers().get(SET_COOKIE).is_some());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(
        resp.headers()[LOCATION],
        "/admin/console/login?failed=ticket"
    );
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let resp = http
        .post(h.url("/admin/console/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    h.cloud.stop().await;
}
