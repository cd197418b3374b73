//! The web pages flashgate serves from its own binary: `/admin/` (the
//! console) and `/demo/` (the buyer page) answer HTML under a
//! Content-Security-Policy that forbids inline script, every file they load
//! is served with its type, and nothing else under them exists. (What the
//! pages do in a browser: `web/tests/`, run by `scripts/browser`.)

use reqwest::redirect::Policy;
use reqwest::{Client, Response};

use crate::support::*;

fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The CSP every page file carries: scripts from the site itself only.
fn assert_strict_csp(r: &Response, what: &str) {
    let csp = header(r, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-eval"), "{what}: {csp}");
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
    // The rest of what README's "Web pages" promises, word for word.
    assert_eq!(
        csp,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "{what}"
    );
    assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header(r, "cache-control"), "public, max-age=60", "{what}");
}

/// Every value of `attr="..."` in `text`.
fn attrs<'a>(text: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    text.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &text[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// Every `from '...'` of an ES module.
fn imports(text: &str) -> Vec<&str> {
    text.match_indices("from '")
        .filter_map(|(i, _)| {
            let rest = &text[i + 6..];
            rest.find('\'').map(|end| &rest[..end])
        })
        .collect()
}

/// `/admin/` + `console.js` → `/admin/console.js`; absolute paths stay.
fn resolve(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}{path}")
    }
}

#[tokio::test]
async fn pages_answer_html_under_a_strict_csp_and_their_files_load() {
    let app = spawn_app().await;
    let http = client();
    for page in ["/admin/", "/demo/"] {
        let r = http.get(app.url(page)).send().await.expect("page");
        assert_eq!(r.status(), 200, "{page}");
        assert_eq!(
            header(&r, "content-type"),
            "text/html; charset=utf-8",
            "{page}"
        );
        assert_strict_csp(&r, page);
        let html = r.text().await.expect("html");
        let lower = html.to_ascii_lowercase();
        assert!(!lower.contains(" onclick="), "{page}: inline handler");
        assert_eq!(
            lower.matches("<script").count(),
            attrs(&lower, "src").len(),
            "{page}: every <script> names a file"
        );
        let mut files: Vec<(String, &str)> = attrs(&html, "src")
            .into_iter()
            .map(|s| (resolve(page, s), "text/javascript; charset=utf-8"))
            .chain(
                attrs(&html, "href")
                    .into_iter()
                    .filter(|h| h.ends_with(".css"))
                    .map(|s| (resolve(page, s), "text/css; charset=utf-8")),
            )
            .collect();
        assert!(files.len() >= 3, "{page}: {files:?}");
        let mut seen = Vec::new();
        while let Some((file, kind)) = files.pop() {
            if seen.contains(&file) {
                continue;
            }
            let r = http.get(app.url(&file)).send().await.expect("file");
            assert_eq!(r.status(), 200, "{file}");
            assert_eq!(header(&r, "content-type"), kind, "{file}");
            assert_strict_csp(&r, &file);
            let text = r.text().await.expect("text");
            assert!(!text.is_empty(), "{file}");
            if kind.starts_with("text/javascript") {
                let dir = &file[..=file.rfind('/').expect("a directory")];
                for i in imports(&text) {
                    files.push((resolve(dir, i), "text/javascript; charset=utf-8"));
                }
            }
            seen.push(file);
        }
        assert!(seen.iter().any(|f| f == "/shared/api.js"), "{seen:?}");
        let head = http.head(app.url(page)).send().await.expect("head");
        assert_eq!(head.status(), 200, "HEAD {page}");
        assert_strict_csp(&head, page);
        assert!(
            head.bytes().await.expect("head body").is_empty(),
            "HEAD {page}"
        );
    }
}

#[tokio::test]
async fn bare_page_paths_redirect_and_unknown_files_are_404() {
    let app = spawn_app().await;
    let http = client();
    for (from, to) in [
        ("/admin", "/admin/"),
        ("/demo", "/demo/"),
        ("/demo?sale=x", "/demo/?sale=x"),
    ] {
        let r = http.get(app.url(from)).send().await.expect("redirect");
        assert_eq!(r.status(), 308, "{from}");
        assert_eq!(header(&r, "location"), to, "{from}");
    }
    for path in [
        "/admin/nope.js",
        "/admin/index.htm",
        "/admin/console.js/",
        "/admin/%2e%2e/Cargo.toml",
        "/admin/..%2fCargo.toml",
        "/demo/console.js",
        "/shared/",
        "/shared/api.js.map",
    ] {
        let r = http.get(app.url(path)).send().await.expect("unknown");
        assert_eq!(r.status(), 404, "{path}");
        let (_, v) = body(r).await;
        assert_eq!(error_code(&v), "not_found", "{path}: {v}");
    }
}
