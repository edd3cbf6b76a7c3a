//! `--web.config.file`: the web configuration of the Prometheus exporter-toolkit (the YAML file
//! node_exporter and every exporter built on the toolkit read), checked whole before the exporter
//! starts, so that an operator gives the watch the file they already give node_exporter.
//!
//! # Format
//!
//! ```yaml
//! tls_server_config:            # TLS when a certificate, key, client CA or client_auth_type is set
//!   cert_file: server.crt       # or `cert:` (PEM inline); paths are relative to this file
//!   key_file: server.key        # or `key:`
//!   client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), RequestClientCert,
//!                               # RequireAnyClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt      # or `client_ca:`
//!   client_allowed_sans: [scraper.example]   # DNS, e-mail, IP or URI, matched exactly
//!   min_version: TLS12          # TLS10..TLS13; rustls speaks TLS12 and TLS13
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]   # Go's names; TLS 1.2 only
//!   prefer_server_cipher_suites: true
//!   curve_preferences: [X25519, CurveP256]
//! http_server_config:
//!   http2: true                 # accepted; the exporter speaks HTTP/1.1
//!   headers: {X-Frame-Options: deny}   # the five headers exporter-toolkit allows
//! basic_auth_users:             # bcrypt hashes ($2y$, $2b$, $2a$)
//!   prometheus: $2y$10$...
//! rate_limit: {interval: 1s, burst: 10}   # answers 429 beyond it
//! ```
//!
//! Where the toolkit's Go and rustls differ, the file is still accepted and a note says what is
//! done instead: TLS 1.0 and 1.1, the CBC and RSA-key-exchange suites and the P-521 curve are not
//! offered (rustls has none of them). Unknown keys are errors, as in the toolkit. Unlike the
//! toolkit, which reads the file again for every request, the watch reads it once at start; the
//! certificate and key files alone are read again when they change (a renewal).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::auth::Users;

/// A web configuration, checked and ready to serve with. The default serves plain HTTP to anyone.
#[derive(Default)]
pub struct WebConfig {
    /// TLS, when the file configures it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may scrape, when the file names users.
    pub users: Option<Users>,
    /// Headers added to every answer (`http_server_config.headers`).
    pub headers: Vec<(String, String)>,
    /// At most so many requests (`rate_limit`).
    pub rate_limit: Option<RateLimit>,
    /// What the file asks that is accepted but done otherwise, one sentence each.
    pub notes: Vec<String>,
}

/// `rate_limit`: a token bucket of `burst` requests, one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// The time between two requests.
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

/// A web configuration file that cannot be served with.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub at: Option<(usize, usize)>,
    /// The key, as a path (`tls_server_config.cert_file`); empty when the file as a whole.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A problem with one key, found after parsing; its place is looked up in the text.
pub(crate) struct Problem {
    /// The key's path.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    pub(crate) fn new(key: &'static str, reason: impl Into<String>) -> Problem {
        Problem { key, reason: reason.into() }
    }
}

/// The file as the toolkit defines it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsSection>,
    http_server_config: Option<HttpSection>,
    basic_auth_users: Option<BTreeMap<String, Hash>>,
    rate_limit: Option<RateLimitSection>,
}

/// `tls_server_config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub client_auth_type: Option<ClientAuth>,
    pub client_ca_file: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    pub cipher_suites: Option<Vec<Cipher>>,
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Option<Vec<Curve>>,
}

/// `client_auth_type`: Go's `tls.ClientAuthType` names.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ClientAuth {
    #[default]
    #[serde(alias = "")]
    NoClientCert,
    RequestClientCert,
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// `min_version`, `max_version`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = match self {
            TlsVersion::Tls10 => "TLS10",
            TlsVersion::Tls11 => "TLS11",
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        };
        f.write_str(n)
    }
}

/// `cipher_suites`: the names Go's `tls.CipherSuites()` gives, the only ones the toolkit takes.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    TLS_RSA_WITH_AES_128_CBC_SHA,
    TLS_RSA_WITH_AES_256_CBC_SHA,
    TLS_RSA_WITH_AES_128_GCM_SHA256,
    TLS_RSA_WITH_AES_256_GCM_SHA384,
    TLS_AES_128_GCM_SHA256,
    TLS_AES_256_GCM_SHA384,
    TLS_CHACHA20_POLY1305_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
    TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
    TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
    TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
}

/// `curve_preferences`: Go's `tls.CurveID` names the toolkit takes.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    CurveP256,
    CurveP384,
    CurveP521,
    X25519,
}

/// `http_server_config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    http2: Option<bool>,
    headers: Option<Headers>,
}

/// `http_server_config.headers`, checked as the toolkit checks them.
struct Headers(Vec<(String, String)>);

/// The headers the toolkit lets a file add, and the values it allows (any, where empty).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        for (k, v) in &map {
            let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| h == k) else {
                let names: Vec<&str> = HEADERS.iter().map(|(h, _)| *h).collect();
                return Err(de::Error::custom(format!(
                    "HTTP header {k:?} cannot be configured (one of {})",
                    names.join(", ")
                )));
            };
            if !allowed.is_empty() && !allowed.contains(&v.as_str()) {
                return Err(de::Error::custom(format!(
                    "{k}: {v:?} is not one of {}",
                    allowed.join(", ")
                )));
            }
            if v.chars().any(|c| c.is_control()) {
                return Err(de::Error::custom(format!("{k}: a header value has no line breaks")));
            }
        }
        Ok(Headers(map.into_iter().collect()))
    }
}

/// A bcrypt hash, checked for form when read.
pub(crate) struct Hash(pub String);

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        // The error does not repeat the value: it may be a password written in plain.
        s.parse::<bcrypt::HashParts>().map_err(|_| {
            de::Error::custom(
                "not a bcrypt hash (like $2y$10$ and 53 more characters); make one with \
                 `htpasswd -nBC 10 \"\" | tr -d ':\\n'`",
            )
        })?;
        Ok(Hash(s))
    }
}

/// `rate_limit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSection {
    interval: Option<GoDuration>,
    burst: Option<u32>,
}

/// A duration as Go writes it (`1s`, `1m30s`, `250ms`).
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        let s = String::deserialize(d)?;
        parse_go_duration(&s).map(GoDuration).ok_or_else(|| {
            de::Error::custom(format!("{s:?} is not a duration (like 1s, 250ms, 1m30s)"))
        })
    }
}

/// Go's `time.ParseDuration` for non-negative durations: numbers with units ns, us, µs, ms, s, m, h.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Some(Duration::from_secs_f64(total))
}

impl WebConfig {
    /// Reads and checks the file at `path`: its YAML, every key, the certificates and keys it
    /// names (read now, relative to the file's folder), the users' hashes.
    pub fn load(path: &Path) -> Result<WebConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error {
            file: path.to_path_buf(),
            at: None,
            key: String::new(),
            reason: format!("cannot read the web configuration: {e}"),
        })?;
        let file = parse(&text).map_err(|e| yaml_error(path, &text, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::from_file(file, dir).map_err(|p| Error {
            file: path.to_path_buf(),
            at: locate(&text, p.key),
            key: p.key.to_string(),
            reason: p.reason,
        })
    }

    fn from_file(file: File, dir: &Path) -> Result<WebConfig, Problem> {
        let mut notes = Vec::new();
        let tls = match &file.tls_server_config {
            Some(t) => crate::tls::server_config(t, dir, &mut notes)?,
            None => None,
        };
        let http = file.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            notes.push("http_server_config.http2: the exporter speaks HTTP/1.1 only".to_string());
        }
        let users = file.basic_auth_users.unwrap_or_default();
        if let Some(name) = users.keys().find(|u| u.contains(':')) {
            return Err(Problem::new(
                "basic_auth_users",
                format!("{name:?}: a user name cannot hold ':' (basic auth splits there)"),
            ));
        }
        let users = (!users.is_empty())
            .then(|| Users::new(users.into_iter().map(|(u, h)| (u, h.0)).collect()));
        let rate_limit = match file.rate_limit {
            Some(RateLimitSection { interval: Some(GoDuration(interval)), burst })
                if !interval.is_zero() =>
            {
                Some(RateLimit { interval, burst: burst.unwrap_or(0) })
            }
            _ => None,
        };
        Ok(WebConfig {
            tls,
            users,
            headers: http.headers.map(|h| h.0).unwrap_or_default(),
            rate_limit,
            notes,
        })
    }
}

/// The file's YAML; an empty file (or one of comments only) is an empty configuration.
fn parse(text: &str) -> Result<File, serde_norway::Error> {
    let blank = text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        return Ok(File::default());
    }
    serde_norway::from_str(text)
}

/// A YAML error as the file's: the key path the parser names, its line and column. A value's
/// own check (a hash, a header, a duration) is named by its parent; the key written on its line
/// completes the path.
fn yaml_error(path: &Path, text: &str, e: serde_norway::Error) -> Error {
    let at = e.location().map(|l| (l.line(), l.column()));
    let mut message = e.to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let (mut key, reason) = match message.split_once(": ") {
        Some((k, r)) if !k.contains(' ') && !k.is_empty() => (k.to_string(), r.to_string()),
        _ => (String::new(), message),
    };
    let written = at.and_then(|(line, _)| text.lines().nth(line - 1)).and_then(|l| {
        let (k, _) = l.trim_start().split_once(':')?;
        let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
        (!k.is_empty() && !k.contains(' ') && !k.starts_with('-')).then_some(k)
    });
    let last = key.rsplit('.').next().unwrap_or("").split('[').next().unwrap_or("");
    if let Some(w) = written.filter(|w| !key.is_empty() && *w != last) {
        key = format!("{key}.{w}");
    }
    Error { file: path.to_path_buf(), at, key, reason }
}

/// Where `key` (a path; its last part is looked for) is written in `text`: the first line that
/// starts with it, not in a comment. The place of a problem found after parsing.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let leaf = key.rsplit('.').next()?;
    text.lines().enumerate().find_map(|(i, line)| {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix(leaf)?;
        rest.trim_start().starts_with(':').then(|| (i + 1, line.len() - trimmed.len() + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<WebConfig, Error> {
        let dir = std::env::temp_dir().join(format!("cwlab-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.yml", text.len() * 7919 + text.lines().count()));
        std::fs::write(&path, text).unwrap();
        let r = WebConfig::load(&path);
        let _ = std::fs::remove_file(&path);
        r
    }

    fn error(text: &str) -> String {
        match load_text(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                let s = e.to_string();
                s.split_once(".yml").map_or(s.clone(), |(_, r)| r.to_string())
            }
        }
    }

    #[test]
    fn an_empty_file_serves_plain_http_to_anyone() {
        let w = load_text("# nothing yet\n").unwrap();
        assert!(w.tls.is_none() && w.users.is_none() && w.rate_limit.is_none());
        assert!(w.notes.is_empty());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        assert_eq!(
            error("tls_server_config:\n  cert_fil: x\n"),
            ":2:3: tls_server_config.cert_fil: unknown field `cert_fil`, expected one of `cert`, `key`, \
             `client_ca`, `cert_file`, `key_file`, `client_auth_type`, `client_ca_file`, \
             `client_allowed_sans`, `min_version`, `max_version`, `cipher_suites`, \
             `prefer_server_cipher_suites`, `curve_preferences`"
        );
        let e = error("basic_auth_users:\n  a: b\nfoo: 1\n");
        assert_eq!(
            e,
            ":2:3: basic_auth_users.a: not a bcrypt hash (like $2y$10$ and 53 more characters); \
             make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
        );
    }

    #[test]
    fn values_outside_the_toolkit_s_names_are_refused_with_the_names() {
        let e = error("tls_server_config:\n  min_version: TLS14\n");
        assert_eq!(
            e,
            ":2:16: tls_server_config.min_version: unknown variant `TLS14`, expected one of \
             `TLS10`, `TLS11`, `TLS12`, `TLS13`"
        );
        let e = error("tls_server_config:\n  curve_preferences: [CurveP256, Curve25519]\n");
        assert!(
            e.starts_with(
                ":2:34: tls_server_config.curve_preferences[1]: unknown variant `Curve25519`"
            ),
            "{e}"
        );
        let e = error("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert_eq!(
            e,
            ":2:3: http_server_config.headers: X-Frame-Options: \"allow\" is not one of deny, sameorigin"
        );
        let e = error("http_server_config:\n  headers:\n    Server: cwlab\n");
        assert!(e.contains("HTTP header \"Server\" cannot be configured"), "{e}");
        let e = error("rate_limit:\n  interval: soon\n");
        assert!(e.contains("rate_limit.interval: \"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn problems_found_after_parsing_are_placed_at_their_key() {
        let e = error("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n");
        assert!(e.starts_with(":2:3: tls_server_config.cert_file: cannot read "), "{e}");
        assert!(e.ends_with("nope.crt: No such file or directory (os error 2)"), "{e}");
        let e = error("basic_auth_users:\n  \"a:b\": $2y$04$fCBkgop7WKfQXU53DUk9jOWsSlYe5I.IkIOqz57viCOalHoDwxlvu\n");
        assert!(
            e.starts_with(":1:1: basic_auth_users: \"a:b\": a user name cannot hold ':'"),
            "{e}"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("1d"), None);
    }

    #[test]
    fn rate_limit_and_headers_are_kept() {
        let w = load_text(
            "rate_limit:\n  interval: 1s\n  burst: 3\nhttp_server_config:\n  http2: true\n  \
             headers:\n    X-Frame-Options: deny\n",
        )
        .unwrap();
        assert_eq!(w.rate_limit, Some(RateLimit { interval: Duration::from_secs(1), burst: 3 }));
        assert_eq!(w.headers, [("X-Frame-Options".to_string(), "deny".to_string())]);
        assert_eq!(w.notes, ["http_server_config.http2: the exporter speaks HTTP/1.1 only"]);
    }
}
