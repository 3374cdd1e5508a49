//! The browser portal: one page, its script, style sheet and icon, compiled
//! into the binary and served by the proxy next to its JSON API.
//!
//! The page talks only to the JSON API of its own origin. It follows card
//! ceremonies through the polled operations under `/op/`. The session cookie
//! that a finished login sets is HttpOnly, so the script never reads a
//! session token.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// Content-Security-Policy of the portal's files: the page may load only its
/// own script, style sheet and images, may send requests only to its own
/// origin, and may not be framed. Inline script and style are blocked.
///
/// The API's default security headers only fill headers that a response does
/// not already have, so this policy replaces their stricter API policy on
/// these responses.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Registers `GET /`, `/app.js`, `/style.css` and `/favicon.svg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/app.js", web::get().to(app_js))
        .route("/style.css", web::get().to(style_css))
        .route("/favicon.svg", web::get().to(favicon_svg));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn favicon_svg() -> HttpResponse {
    asset("image/svg+xml", FAVICON_SVG)
}

#[cfg(test)]
mod tests {
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::App;

    use super::*;

    async fn get(path: &str) -> (u16, String, String, String) {
        let app = init_service(App::new().configure(configure)).await;
        let response = call_service(&app, TestRequest::get().uri(path).to_request()).await;
        let status = response.status().as_u16();
        let header_text = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let content_type = header_text(header::CONTENT_TYPE);
        let policy = header_text(header::CONTENT_SECURITY_POLICY);
        let body = read_body(response).await;
        (
            status,
            content_type,
            policy,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[actix_rt::test]
    async fn files_have_their_content_type_and_policy() {
        let cases = [
            ("/", "text/html; charset=utf-8", INDEX_HTML),
            ("/app.js", "text/javascript; charset=utf-8", APP_JS),
            ("/style.css", "text/css; charset=utf-8", STYLE_CSS),
            ("/favicon.svg", "image/svg+xml", FAVICON_SVG),
        ];
        for (path, expected_type, expected_body) in cases {
            let (status, content_type, policy, body) = get(path).await;
            assert_eq!(status, 200, "status of {path}");
            assert_eq!(content_type, expected_type, "Content-Type of {path}");
            assert_eq!(
                policy, CONTENT_SECURITY_POLICY,
                "Content-Security-Policy of {path}"
            );
            assert_eq!(body, expected_body, "body of {path}");
        }
    }

    #[actix_rt::test]
    async fn post_to_page_is_not_routed() {
        let app = init_service(App::new().configure(configure)).await;
        let response = call_service(&app, TestRequest::post().uri("/").to_request()).await;
        assert_eq!(
            response.status().as_u16(),
            404,
            "POST / is not a route of the portal"
        );
    }

    #[test]
    fn page_has_no_inline_script_or_style() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        assert!(
            !lower.contains("<style"),
            "a <style> element is blocked by style-src 'self'"
        );
        assert!(
            !lower.contains(" style="),
            "a style attribute is blocked by style-src 'self'"
        );
        assert!(
            !lower.contains("javascript:"),
            "a javascript: URL is blocked by script-src 'self'"
        );
        for (index, _) in lower.match_indices("<script") {
            let tag_end = lower[index..]
                .find('>')
                .map_or(lower.len(), |end| index + end);
            assert!(
                lower[index..tag_end].contains(" src="),
                "an inline <script> at byte {index} is blocked by script-src 'self'"
            );
        }
        for attribute in [
            " onclick=",
            " onsubmit=",
            " onload=",
            " oninput=",
            " onchange=",
        ] {
            assert!(
                !lower.contains(attribute),
                "inline handler{attribute} is blocked by script-src 'self'"
            );
        }
    }

    #[test]
    fn page_loads_nothing_from_other_hosts() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            assert!(!text.contains("http://"), "{name} names an http:// URL");
            assert!(!text.contains("https://"), "{name} names an https:// URL");
            assert!(!text.contains("@import"), "{name} imports a style sheet");
        }
    }

    /// Every `element('ID')` lookup in the script must name an element of
    /// the page, because the script stops at start when one is missing.
    #[test]
    fn script_finds_every_element_it_uses() {
        let mut checked = 0;
        for (index, _) in APP_JS.match_indices("element('") {
            let start = index + "element('".len();
            let Some(length) = APP_JS[start..].find('\'') else {
                panic!("unterminated element() call at byte {index} of app.js");
            };
            let id = &APP_JS[start..start + length];
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "app.js uses #{id}, which index.html does not have"
            );
            checked += 1;
        }
        assert!(
            checked > 30,
            "only {checked} element() calls found in app.js"
        );
    }

    #[test]
    fn every_input_has_a_label() {
        let mut checked = 0;
        for (index, _) in INDEX_HTML.match_indices("<input") {
            let tag_end = INDEX_HTML[index..]
                .find('>')
                .map_or(INDEX_HTML.len(), |end| index + end);
            let tag = &INDEX_HTML[index..tag_end];
            let Some(id_start) = tag.find(" id=\"") else {
                panic!("an <input> without an id at byte {index} cannot have a <label for>");
            };
            let id_start = id_start + " id=\"".len();
            let id_length = tag[id_start..].find('"').unwrap_or(0);
            let id = &tag[id_start..id_start + id_length];
            assert!(
                INDEX_HTML.contains(&format!("<label for=\"{id}\"")),
                "input #{id} has no <label for=\"{id}\">"
            );
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} inputs found in index.html");
    }
}
