//! The built-in display page: one HTML file with its CSS, JavaScript and smileys inline, so it
//! works without internet access. The server fills in the title, the `<html lang>` and one JSON
//! block (`<script type="application/json" id="config">`) with the language's locale, the
//! site's time zone and every label, so that the page formats everything itself.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::DisplayState;
use crate::config::DisplayConfig;

const PAGE: &str = include_str!("page.html");

/// What the page reads from its config block.
#[derive(Serialize)]
struct PageConfig<'a> {
    /// `en`, `de`, …
    language: &'a str,
    /// The BCP 47 locale for `Intl` (numbers, dates, times).
    locale: &'a str,
    /// The site's IANA time zone: the clock shows the site's time, not the browser's.
    time_zone: &'a str,
    /// Every label, resolved.
    labels: &'a BTreeMap<&'static str, String>,
}

/// Text for an HTML element or attribute.
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON that can sit inside a `<script>` element: no `<` (so no `</script>` or `<!--`), `>` or
/// `&` appears literally, and the line separators JavaScript once refused are escaped too. The
/// escapes are JSON escapes, so `JSON.parse` of the element's text gives back the same value.
fn script_safe_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The page for these settings, in the site's `time_zone`.
pub fn render(settings: &DisplayConfig, time_zone: &str) -> String {
    let config = PageConfig {
        language: settings.language.code(),
        locale: settings.language.locale(),
        time_zone,
        labels: &settings.labels,
    };
    // Serialising strings and a map of strings cannot fail; an empty object keeps the page up.
    let json = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
    PAGE.replace("{{LANG}}", settings.language.code())
        .replace("{{TITLE}}", &escape_html(&settings.title))
        .replace("{{CONFIG}}", &script_safe_json(&json))
}

/// `GET /`.
pub async fn page(State(state): State<DisplayState>) -> Response {
    let time_zone = state.tallies.snapshot.borrow().time_zone.clone();
    let body = render(&state.settings.borrow(), &time_zone);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{resolve, Language};

    /// The text of the config block.
    fn config_block(page: &str) -> &str {
        let start = page
            .find(r#"<script type="application/json" id="config">"#)
            .expect("a config block");
        let rest = &page[start..];
        let open = rest.find('>').expect("tag end") + 1;
        let close = rest.find("</script>").expect("closed");
        &rest[open..close]
    }

    #[test]
    fn the_title_is_escaped_and_the_page_has_no_external_assets() {
        let settings = DisplayConfig {
            title: "<b>Wie war's?</b>".into(),
            ..DisplayConfig::default()
        };
        let page = render(&settings, "Europe/Berlin");
        assert!(page.contains("&lt;b&gt;Wie war's?&lt;/b&gt;"));
        assert!(!page.contains("{{"), "a placeholder left");
        for external in [
            "http://",
            "https://",
            "//cdn",
            "src=\"http",
            "@import",
            "url(",
        ] {
            assert!(!page.contains(external), "the page loads {external}");
        }
        assert!(page.len() < 60_000, "the page is {} bytes", page.len());
    }

    #[test]
    fn labels_cannot_break_out_of_the_config_block() {
        let mut overrides = BTreeMap::new();
        let evil = "</script><script>alert(1)</script><!-- & \u{2028}";
        overrides.insert("votes", evil.to_string());
        let settings = DisplayConfig {
            language: Language::Fr,
            labels: resolve(Language::Fr, &overrides),
            ..DisplayConfig::default()
        };
        let page = render(&settings, "Europe/Paris");
        assert!(!page.contains("<script>alert"), "a label broke out");
        assert!(page.starts_with("<!doctype html>\n<html lang=\"fr\">"));
        let block = config_block(&page);
        assert!(!block.contains('<') && !block.contains('>') && !block.contains('&'));
        let config: serde_json::Value = serde_json::from_str(block).expect("valid JSON");
        assert_eq!(config["labels"]["votes"], evil);
        assert_eq!(config["labels"]["happy"], "Satisfait");
        assert_eq!(config["locale"], "fr-FR");
        assert_eq!(config["language"], "fr");
        assert_eq!(config["time_zone"], "Europe/Paris");
    }
}
