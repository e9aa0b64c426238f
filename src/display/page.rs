//! The built-in display page: one HTML file with its CSS, JavaScript and smileys inline, so it
//! works without internet access.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::DisplayState;

const PAGE: &str = include_str!("page.html");

/// The page with the configured title (HTML-escaped).
pub fn render(title: &str) -> String {
    let escaped = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    PAGE.replace("{{TITLE}}", &escaped)
}

/// `GET /`.
pub async fn page(State(state): State<DisplayState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        render(&state.settings.borrow().title),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_is_escaped_and_the_page_has_no_external_assets() {
        let page = render("<b>Wie war's?</b>");
        assert!(page.contains("&lt;b&gt;Wie war's?&lt;/b&gt;"));
        assert!(!page.contains("{{TITLE}}"));
        for external in ["http://", "https://", "//cdn", "src=\"http"] {
            assert!(!page.contains(external), "the page loads {external}");
        }
    }
}
