//! The web configurations exporter-toolkit documents (docs/web-configuration.md, its sample
//! web-config.yml and the shapes of its good and bad test files) as the watch reads them: every
//! good one is accepted, with a note where rustls does otherwise than Go; every bad one is refused
//! naming its key, its line and the reason.

use std::path::{Path, PathBuf};

use cwlab_watch::webconfig::WebConfig;

/// A folder with a server certificate and key and a client CA, as the examples name them.
fn folder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cwlab-webconfig-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(dir.join("client_ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    dir
}

fn load(dir: &Path, name: &str, text: &str) -> Result<WebConfig, String> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    WebConfig::load(&path).map_err(|e| e.to_string())
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

/// The good examples: a name, the file, whether it serves TLS, its users, and the notes'
/// beginnings.
fn good() -> Vec<(&'static str, String, bool, usize, Vec<&'static str>)> {
    let users = "basic_auth_users:\n  alice: $2y$10$2KOPxuM0ZJZjDCqwUkJ1YuWx1QzrknoapY4x0ks.Xpuqf585rSRJy\n  \
                 bob: $2y$12$AHlWhWkDorVauA9cUQUwq.C/O8oNjbjTO4PFrDi8OlrJBOwWUbjBa\n  \
                 carol: $2y$10$gOo5Ii2cmPqC9LcrRbiP/.H1sUbJ42x1ONOD63Vq/ga49wrr3GvM6\n";
    let all_ciphers = [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384",
    ];
    let list = |names: &[&str]| names.iter().map(|n| format!("  - {n}\n")).collect::<String>();
    let ca = "  client_ca_file: client_ca.pem\n";
    vec![
        ("the sample web-config.yml", format!("# TLS and basic auth.\n{TLS}\n{users}"), true, 3, vec![]),
        ("users without TLS", users.to_string(), false, 3, vec![]),
        ("TLS, no client certificate", TLS.to_string(), true, 0, vec![]),
        (
            "every documented TLS key",
            format!(
                "{TLS}  client_auth_type: RequireAndVerifyClientCert\n{ca}  client_allowed_sans:\n    \
                 - scraper.example\n  min_version: TLS12\n  max_version: TLS13\n  \
                 cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    \
                 - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  prefer_server_cipher_suites: true\n  \
                 curve_preferences: [X25519, CurveP256, CurveP384]\nhttp_server_config:\n  \
                 http2: false\n"
            ),
            true,
            0,
            vec![],
        ),
        (
            "all of Go's cipher suites",
            format!("{TLS}  client_auth_type: VerifyClientCertIfGiven\n{ca}  cipher_suites:\n{}", list(&all_ciphers)),
            true,
            0,
            vec![
                "tls_server_config.cipher_suites: not offered (rustls does not implement them): TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, ",
                "tls_server_config.cipher_suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 are TLS 1.3 suites",
            ],
        ),
        (
            "two suites, TLS 1.2 only",
            format!("{TLS}  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  min_version: TLS12\n  max_version: TLS12\n"),
            true,
            0,
            vec![],
        ),
        (
            "every curve",
            format!("{TLS}  curve_preferences: [CurveP256, CurveP384, CurveP521, X25519]\n"),
            true,
            0,
            vec!["tls_server_config.curve_preferences: CurveP521 is not offered"],
        ),
        (
            "P-521 alone, TLS 1.3",
            format!("{TLS}  min_version: TLS13\n  curve_preferences:\n  - CurveP521\n"),
            true,
            0,
            vec![
                "tls_server_config.curve_preferences: CurveP521 is not offered",
                "tls_server_config.curve_preferences: rustls's own curves",
            ],
        ),
        (
            "certificate and key inline",
            {
                let dir = folder_of_examples();
                let cert = std::fs::read_to_string(dir.join("server.crt")).unwrap();
                let key = std::fs::read_to_string(dir.join("server.key")).unwrap();
                let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
                format!("tls_server_config:\n  cert: |\n{}  key: |\n{}  client_auth_type: RequireAnyClientCert\n", indent(&cert), indent(&key))
            },
            true,
            0,
            vec![],
        ),
        (
            "request a client certificate",
            format!("{TLS}  client_auth_type: RequestClientCert\n"),
            true,
            0,
            vec![],
        ),
        (
            "the old name of RequireAnyClientCert",
            format!("{TLS}  client_auth_type: RequireClientCert\n"),
            true,
            0,
            vec![],
        ),
        (
            "HTTP/2 and headers",
            "http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000; includeSubDomains\n    \
             X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n    \
             Content-Security-Policy: \"default-src 'self' *.test.example.net\"\n"
                .to_string(),
            false,
            0,
            vec!["http_server_config.http2: the exporter speaks HTTP/1.1 only"],
        ),
        ("a rate limit", "rate_limit:\n  interval: \"1s\"\n  burst: 0\n".to_string(), false, 0, vec![]),
        ("TLS 1.0 allowed", format!("{TLS}  min_version: TLS10\n"), true, 0, vec![
            "tls_server_config.min_version: TLS10 is not offered; rustls starts at TLS12",
        ]),
    ]
}

/// The folder the examples are written in, made once.
fn folder_of_examples() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(folder)
}

#[test]
fn issue_23_the_toolkit_s_documented_examples_are_accepted() {
    let dir = folder_of_examples();
    for (i, (name, text, tls, users, notes)) in good().into_iter().enumerate() {
        let w = load(dir, &format!("good{i}.yml"), &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(w.tls.is_some(), tls, "{name}: TLS");
        assert_eq!(w.users.is_some(), users > 0, "{name}: users");
        assert_eq!(w.notes.len(), notes.len(), "{name}: {:?}", w.notes);
        for (note, want) in w.notes.iter().zip(&notes) {
            assert!(note.starts_with(want), "{name}: {note:?} should start {want:?}");
        }
    }
}

#[test]
fn issue_23_bad_files_are_refused_naming_the_key_the_line_and_the_reason() {
    let dir = folder_of_examples();
    let cases = [
        ("tls_server_config:\n  cert_file: \"\"\n  key_file: server.key\n",
         ":2:3: tls_server_config.cert_file: missing: TLS needs cert_file (or cert)"),
        ("tls_server_config:\n  cert_file: somewhere/server.crt\n  key_file: server.key\n",
         ":2:3: tls_server_config.cert_file: cannot read "),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: \"\"\n",
         ":3:3: tls_server_config.key_file: missing: TLS needs key_file (or key)"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
         ":3:3: tls_server_config.key_file: "),
        ("tls_server_config:\n  cert_file: empty.pem\n  key_file: server.key\n",
         ":2:3: tls_server_config.cert_file: "),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites:\n    - TLS_FOO_BAR\n",
         ":5:7: tls_server_config.cipher_suites[0]: unknown variant `TLS_FOO_BAR`"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  curve_preferences: [CurveP257]\n",
         ":4:23: tls_server_config.curve_preferences[0]: unknown variant `CurveP257`"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS111\n",
         ":4:16: tls_server_config.min_version: unknown variant `TLS111`"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS11\n",
         ":4:3: tls_server_config.max_version: rustls speaks TLS12 and TLS13 only"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n  max_version: TLS12\n",
         ":4:3: tls_server_config.min_version: TLS13 is above max_version TLS12"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: client_ca.pem\n",
         ":4:3: tls_server_config.client_ca_file: a client CA is given but client_auth_type is NoClientCert"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: empty.pem\n",
         ":5:3: tls_server_config.client_ca_file: "),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client_ca.pem\n  client_allowed_sans: [one]\n",
         ":6:3: tls_server_config.client_allowed_sans: needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
         ":4:21: tls_server_config.client_auth_type: unknown variant `Sometimes`"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nsome_junk_key: true\n",
         ":4:1: unknown field `some_junk_key`"),
        ("basic_auth_users:\n  alice: wonderland\n",
         ":2:3: basic_auth_users.alice: not a bcrypt hash (like $2y$10$ and 53 more characters); make one"),
        ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
         ":2:3: http_server_config.headers: X-Content-Type-Options: \"sniff\" is not one of nosniff"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: [server.key\n",
         ":3:"),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}.yml");
        let e = match load(dir, &name, text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        };
        let after = e
            .strip_prefix(&dir.join(&name).display().to_string())
            .unwrap_or_else(|| panic!("{e:?} names the file {name}"));
        assert!(after.starts_with(want), "{text}\n{after:?} should start {want:?}");
        assert!(!after.contains("wonderland"), "a password written in plain is not repeated");
    }
}
