//! The web pages: `/admin/` (the console) and `/demo/` (a buyer's page),
//! static files from `web/` compiled into the binary, so flashgate stays
//! one file and needs no Node.js to build or run. The pages talk to the
//! public API only; the strict Content-Security-Policy below forbids
//! inline script, so a value the API echoes can never run as code.

use actix_web::http::header;
use actix_web::{guard, web, HttpRequest, HttpResponse, ResponseError};

use super::error::ApiError;

/// Only the pages' own files: no inline script, no inline style
/// attributes, no other origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Briefly cacheable: a new binary's pages are seen within a minute.
const CACHE_CONTROL: &str = "public, max-age=60";

struct Asset {
    /// Path under the site root, without the leading `/`.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("admin/index.html", HTML),
    asset!("admin/console.js", JS),
    asset!("admin/console.css", CSS),
    asset!("demo/index.html", HTML),
    asset!("demo/demo.js", JS),
    asset!("demo/demo.css", CSS),
    asset!("shared/api.js", JS),
    asset!("shared/base.css", CSS),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    // GET, and HEAD (actix sends a HEAD's headers without the body).
    let read = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    for page in ["admin", "demo"] {
        cfg.route(&format!("/{page}"), read().to(to_slash));
        cfg.route(&format!("/{page}/{{file:.*}}"), read().to(file));
    }
    cfg.route("/shared/{file:.*}", read().to(file));
}

/// `/admin` → `/admin/` (relative links in the page resolve under it).
async fn to_slash(req: HttpRequest) -> HttpResponse {
    let mut to = format!("{}/", req.path());
    if !req.query_string().is_empty() {
        to.push('?');
        to.push_str(req.query_string());
    }
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, to))
        .finish()
}

/// One embedded file; a directory means its `index.html`; anything else 404.
async fn file(req: HttpRequest) -> HttpResponse {
    let path = req.path().trim_start_matches('/');
    let wanted = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    match ASSETS.iter().find(|a| a.path == wanted) {
        Some(a) => HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
            .body(a.body),
        None => ApiError::NotFound.error_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_known_type_and_html_has_no_inline_script() {
        for a in ASSETS {
            let ext = a.path.rsplit('.').next().unwrap_or_default();
            let expected = match ext {
                "html" => HTML,
                "js" => JS,
                "css" => CSS,
                other => panic!("{}: no content type for .{other}", a.path),
            };
            assert_eq!(a.content_type, expected, "{}", a.path);
            if ext == "html" {
                let text = std::str::from_utf8(a.body).expect("utf-8");
                let lower = text.to_ascii_lowercase();
                // Every <script> names a file; no on* handler attributes;
                // no style attributes (the CSP refuses them too).
                for (i, _) in lower.match_indices("<script") {
                    let tag = &lower[i..i + lower[i..].find('>').expect("tag end")];
                    assert!(tag.contains(" src="), "{}: inline <script>", a.path);
                }
                for attr in [
                    " onclick=",
                    " onload=",
                    " onsubmit=",
                    " oninput=",
                    " style=",
                ] {
                    assert!(!lower.contains(attr), "{}: {attr}", a.path);
                }
                assert!(!lower.contains("javascript:"), "{}", a.path);
            }
        }
    }
}
