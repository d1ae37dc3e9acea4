//! Cross-origin requests from browsers, answered as vLLM and SGLang answer them: every origin,
//! method and header allowed unless `--allowed-origins`, `--allowed-methods` or
//! `--allowed-headers` narrow them; `--allow-credentials` lets a page send its cookies (the
//! allowed origins are then echoed back, since a wildcard cannot carry credentials).

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// The `--allowed-*` flags as the router reads them: lists, `*` for any.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsOptions {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    pub headers: Vec<String>,
    pub credentials: bool,
}

impl Default for CorsOptions {
    fn default() -> Self {
        let any = || vec!["*".to_owned()];
        Self {
            origins: any(),
            methods: any(),
            headers: any(),
            credentials: false,
        }
    }
}

/// A flag's list: JSON (`'["https://a.example", "https://b.example"]'`, as vLLM takes it) or
/// comma-separated.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("not a JSON list of strings: {e}"))?
    } else {
        text.split(',').map(|s| s.trim().to_owned()).collect()
    };
    if items.iter().any(String::is_empty) {
        return Err("an empty entry".into());
    }
    Ok(items)
}

impl CorsOptions {
    /// The layer, or an error naming the flag whose entry is not a valid origin, method or
    /// header name.
    pub fn layer(&self) -> Result<CorsLayer, String> {
        let any = |list: &[String]| list.iter().any(|s| s == "*");
        let origin = match (any(&self.origins), self.credentials) {
            (true, false) => AllowOrigin::any(),
            (true, true) => AllowOrigin::mirror_request(),
            (false, _) => AllowOrigin::list(parsed(&self.origins, "--allowed-origins", |s| {
                HeaderValue::from_str(s).ok()
            })?),
        };
        let methods = match (any(&self.methods), self.credentials) {
            (true, false) => AllowMethods::any(),
            (true, true) => AllowMethods::mirror_request(),
            (false, _) => AllowMethods::list(parsed(&self.methods, "--allowed-methods", |s| {
                Method::from_bytes(s.to_ascii_uppercase().as_bytes()).ok()
            })?),
        };
        let headers = match (any(&self.headers), self.credentials) {
            (true, false) => AllowHeaders::any(),
            (true, true) => AllowHeaders::mirror_request(),
            (false, _) => AllowHeaders::list(parsed(&self.headers, "--allowed-headers", |s| {
                HeaderName::from_bytes(s.as_bytes()).ok()
            })?),
        };
        Ok(CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(methods)
            .allow_headers(headers)
            .allow_credentials(self.credentials))
    }
}

fn parsed<T>(
    list: &[String],
    flag: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    list.iter()
        .map(|s| parse(s).ok_or_else(|| format!("{flag}: {s:?} is not valid")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_json_or_comma_separated() {
        let want = vec!["https://a.example".to_owned(), "http://b:8080".to_owned()];
        assert_eq!(
            parse_list(r#"["https://a.example", "http://b:8080"]"#),
            Ok(want.clone())
        );
        assert_eq!(parse_list("https://a.example, http://b:8080"), Ok(want));
        assert!(parse_list("[1]").is_err() && parse_list("a,,b").is_err());
    }

    #[test]
    fn every_setting_builds_and_bad_entries_are_named() {
        let mut o = CorsOptions::default();
        assert!(o.layer().is_ok());
        o.credentials = true; // a wildcard with credentials would be refused by browsers
        assert!(o.layer().is_ok());
        o.origins = vec!["https://a.example".into()];
        o.methods = vec!["get".into(), "POST".into()];
        o.headers = vec!["authorization".into()];
        assert!(o.layer().is_ok());
        o.headers = vec!["bad header".into()];
        assert!(o.layer().unwrap_err().contains("--allowed-headers"));
    }
}
