//! `cwlab watch --listen --web.config.file` off loopback: a real Prometheus scrapes the exporter
//! over TLS with basic auth (certificates and hashes made here), a wrong password is refused, a
//! client certificate is required where the file says so, a bad file stops the watch before it
//! starts, and thousands of clients that send half a request (or half a handshake) never delay a
//! scrape.

mod util;
mod watched;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use util::{can_isolate, scratch};
use watched::{ask, body, exporter, exporter_with, leak, prometheus_installed, raise_nofile};
use watched::{settled, Leak, Prometheus};

/// A CA, the server's certificate it signed (for 127.0.0.1), a client's it signed, and a client's
/// it did not; each written to `dir` as NAME.crt and NAME.key, the CA's as ca.crt.
fn pki(dir: &Path) {
    pki_as(dir, "ca");
}

/// [`pki`] with the CA's certificate written as `ca`.crt.
fn pki_as(dir: &Path, ca_name: &str) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("cwlab test {ca_name}"));
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{ca_name}.crt")), ca.pem()).unwrap();
    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose, signed: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = if signed { p.signed_by(&key, &ca, &ca_key) } else { p.self_signed(&key) };
        std::fs::write(dir.join(format!("{name}.crt")), cert.unwrap().pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    };
    let server = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    leaf("server", server, ExtendedKeyUsagePurpose::ServerAuth, true);
    let client = vec!["prometheus.example".to_string()];
    leaf("client", client.clone(), ExtendedKeyUsagePurpose::ClientAuth, true);
    leaf("stranger", client, ExtendedKeyUsagePurpose::ClientAuth, false);
}

/// A TLS client that trusts `dir/ca.crt` and shows the certificate `cert` (NAME) if given.
fn client(dir: &Path, cert: Option<&str>) -> Arc<rustls::ClientConfig> {
    client_of(dir, "ca", cert)
}

/// [`client`], trusting `dir/ca_name.crt`.
fn client_of(dir: &Path, ca_name: &str, cert: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join(format!("{ca_name}.crt"))).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{name}.crt")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

/// Sends `request` over TLS and reads the whole answer (the handshake's failure is an error).
fn ask_tls(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
    request: &str,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr)?;
    // A first look on a busy machine may take long; the timed scrapes come after one.
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)?;
    Ok(out)
}

/// A bcrypt hash of `password`, at the lowest cost (the exporter under test is a debug build).
fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// The exporter over `l`, serving HTTPS with the web configuration `yaml` written in `dir`.
fn tls_exporter(l: &Leak, dir: &Path, yaml: &str, extra: &[&str]) -> watched::Exporter {
    let file = dir.join("web config.yml");
    std::fs::write(&file, yaml).unwrap();
    let mut args = vec!["--web.config.file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    exporter_with(l, "https", &args)
}

/// The line of `l`'s CLOSE-WAIT count in the Prometheus text format.
fn close_wait_line(l: &Leak) -> String {
    format!(
        "cwlab_tcp_sockets{{netns=\"{}\",port=\"{}\",side=\"server\",state=\"close_wait\"}} {}",
        l.inode, l.port, l.n
    )
}

#[test]
fn issue_23_a_real_prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_is_down() {
    if !can_isolate("tls-prometheus") || !prometheus_installed() {
        return;
    }
    let l = leak(17);
    settled(&l);
    let dir = scratch("tls-prometheus");
    pki(&dir);
    let yaml = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         basic_auth_users:\n  prometheus: {}\n",
        hash("scrape-me")
    );
    let e = tls_exporter(&l, &dir, &yaml, &[]);
    assert!(e.notes.is_empty(), "{:?}", e.notes);
    let anyone = client(&dir, None);

    // Without credentials, or with wrong ones: 401 and nothing else, whatever the path.
    for (path, auth) in [
        ("/metrics", ""),
        ("/", ""),
        ("/nope", ""),
        ("/metrics", "Authorization: Basic cHJvbWV0aGV1czpndWVzcw==\r\n"),
    ] {
        let a = ask_tls(&e.addr, &anyone, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"))
            .unwrap();
        assert_eq!(
            a,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 13\r\nConnection: close\r\nWWW-Authenticate: Basic\r\n\r\nunauthorized\n",
            "{path} {auth}"
        );
    }
    // Plain HTTP to the TLS port gets no answer at all.
    let mut s = TcpStream::connect(&e.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(!String::from_utf8_lossy(&answer).contains("cwlab_"));
    let right = "Authorization: Basic cHJvbWV0aGV1czpzY3JhcGUtbWU=\r\n"; // prometheus:scrape-me
    let a = ask_tls(&e.addr, &anyone, &format!("GET /metrics HTTP/1.1\r\n{right}\r\n")).unwrap();
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(body(&a).lines().any(|x| x == close_wait_line(&l)), "{a}");

    // A real Prometheus: one job with the password, one with a wrong one.
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: ca.crt\n    \
             basic_auth:\n      username: prometheus\n      password: {password}\n    \
             static_configs:\n      - targets: ['{}']\n",
            e.addr
        )
    };
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n{}{}",
            job("right", "scrape-me"),
            job("wrong", "guess")
        ),
    )
    .unwrap();
    let prom = Prometheus::start(&dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (right, wrong) = loop {
        let v = prom.get("/api/v1/targets");
        let health = |job: &str| {
            v["data"]["activeTargets"].as_array().and_then(|t| {
                t.iter().find(|t| t["labels"]["job"] == job && t["health"] != "unknown").cloned()
            })
        };
        if let (Some(r), Some(w)) = (health("right"), health("wrong")) {
            break (r, w);
        }
        assert!(
            Instant::now() < deadline,
            "timeout while expecting both targets scraped, last {v}"
        );
        std::thread::sleep(Duration::from_millis(200)); // Prometheus's own pace: scrapes every 1 s
    };
    assert_eq!(right["health"], "up", "{right}");
    assert_eq!(wrong["health"], "down", "{wrong}");
    assert!(wrong["lastError"].as_str().unwrap().contains("401 Unauthorized"), "{wrong}");
    let query =
        "/api/v1/query?query=cwlab_tcp_sockets%7Bside%3D%22server%22%2Cstate%3D%22close_wait%22%7D";
    let v = prom.get(query);
    let result = v["data"]["result"].as_array().expect("a result");
    assert_eq!(result.len(), 1, "only the right job's series: {v}");
    assert_eq!(result[0]["metric"]["job"], "right");
    assert_eq!(result[0]["metric"]["port"], l.port.to_string());
    assert_eq!(result[0]["value"][1], "17", "{v}");
}

#[test]
fn issue_23_where_a_client_certificate_is_required_a_client_without_one_fails_the_handshake() {
    if !can_isolate("tls-client-cert") {
        return;
    }
    let l = leak(3);
    settled(&l);
    let dir = scratch("tls-client-cert");
    pki(&dir);
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
    let e = tls_exporter(&l, &dir, yaml, &[]);
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let err = ask_tls(&e.addr, &client(&dir, None), request).unwrap_err();
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let err = ask_tls(&e.addr, &client(&dir, Some("stranger")), request).unwrap_err();
    assert!(err.to_string().contains("UnknownCA"), "{err}");
    let a = ask_tls(&e.addr, &client(&dir, Some("client")), request).unwrap();
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(body(&a).lines().any(|x| x == close_wait_line(&l)), "{a}");
}

#[test]
fn issue_23_a_renewed_certificate_is_served_without_a_restart() {
    if !can_isolate("tls-renewal") {
        return;
    }
    let l = leak(2);
    settled(&l);
    let dir = scratch("tls-renewal");
    pki(&dir);
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let e = tls_exporter(&l, &dir, yaml, &[]);
    let request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let old = client(&dir, None);
    assert!(ask_tls(&e.addr, &old, request).unwrap().starts_with("HTTP/1.1 200 OK"));
    // A new CA and server certificate, moved in place as a renewal (or a Secret's update) does.
    let next = dir.join("next");
    std::fs::create_dir_all(&next).unwrap();
    pki_as(&next, "renewed-ca");
    std::fs::rename(next.join("renewed-ca.crt"), dir.join("renewed-ca.crt")).unwrap();
    std::fs::rename(next.join("server.key"), dir.join("server.key")).unwrap();
    std::fs::rename(next.join("server.crt"), dir.join("server.crt")).unwrap();
    let new = client_of(&dir, "renewed-ca", None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask_tls(&e.addr, &new, request) {
            Ok(a) => break assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}"),
            Err(err) => assert!(
                Instant::now() < deadline,
                "timeout while expecting the renewed certificate, last {err}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100)); // the exporter looks once a second
    }
    // A client of the old CA (with no session to resume) no longer trusts the server.
    let err = ask_tls(&e.addr, &client(&dir, None), request).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

/// `cwlab watch ARGS` to its end, killed if it is still running after 20 s (a file wrongly
/// accepted would serve).
fn watch_to_end(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cwlab"))
        .arg("watch")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn issue_23_a_bad_web_configuration_exits_2_naming_the_file_the_key_and_the_reason() {
    let dir = scratch("tls-bad-file");
    pki(&dir);
    let file = dir.join("web.yml");
    let f = file.to_str().unwrap();
    for (yaml, want) in [
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n",
         format!("error: {f}:3:3: tls_server_config.key_file: cannot read {}: No such file or directory (os error 2)\n", dir.join("missing.key").display())),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
         format!("error: {f}:3:3: tls_server_config.key_file: the key is not the certificate's (its public key differs)\n")),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n",
         format!("error: {f}:4:16: tls_server_config.min_version: unknown variant `TLS14`, expected one of `TLS10`, `TLS11`, `TLS12`, `TLS13`\n")),
        ("basic_auth_users:\n  prometheus: scrape-me\n",
         format!("error: {f}:2:3: basic_auth_users.prometheus: not a bcrypt hash (like $2y$10$ and 53 more characters); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`\n")),
    ] {
        std::fs::write(&file, yaml).unwrap();
        let (code, stderr) = watch_to_end(&["--listen", "127.0.0.1:0", "--web.config.file", f]);
        assert_eq!((code, stderr.as_str()), (Some(2), want.as_str()), "{yaml}");
    }
    let (code, stderr) =
        watch_to_end(&["--listen", "127.0.0.1:0", "--web.config.file", "/nonexistent/web.yml"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr, "error: /nonexistent/web.yml: cannot read the web configuration: No such file or directory (os error 2)\n");
}

/// Opens `n` connections to `addr` that each send `half` and wait. Each must connect at once:
/// an exporter that stops accepting lets its listen queue fill, and the kernel then drops SYNs,
/// which the client sends again only a second later.
fn slow_clients(addr: &str, n: usize, half: &[u8]) -> Vec<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(900))
                .unwrap_or_else(|e| panic!("slow client {i} could not connect: {e}"));
            s.write_all(half).unwrap();
            s
        })
        .collect()
}

/// True when `s` is still open: no end of stream, no reset (what was sent, such as TLS 1.3's
/// session tickets, is read and let be).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Waits until exactly the connections from `first_open` on are open (the oldest dropped to
/// make room, the newest held), to a deadline.
fn dropped_oldest_first(socks: &mut [&mut TcpStream], first_open: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut open = Vec::new();
        for (i, s) in socks.iter_mut().enumerate() {
            if still_open(s) {
                open.push(i);
            }
        }
        let want: Vec<usize> = (first_open..socks.len()).collect();
        if open == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timeout while expecting connections {first_open}.. open, last {} open from {:?}",
            open.len(),
            open.first()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_23_two_thousand_half_requests_do_not_delay_a_scrape() {
    if !can_isolate("slow-clients") {
        return;
    }
    let _one_flood_at_a_time = util::serial();
    raise_nofile();
    let l = leak(5);
    settled(&l);
    // Only the cap closes slow clients here, not their 5 s to send a request.
    let e = exporter(&l, &["--request-timeout", "120s"]);
    let scrape = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(ask(&e.addr, scrape).starts_with("HTTP/1.1 200 OK\r\n"), "a first look, made");
    let mut slow = slow_clients(&e.addr, 2000, b"GET /metr");
    // The leak's holder is this process, which now holds the slow clients' 2,000 sockets too: the
    // next look reads its descriptors again (a look's own work, which a holder that is not also
    // the flood never causes). The scrape after it is the one timed.
    assert!(ask(&e.addr, scrape).starts_with("HTTP/1.1 200 OK\r\n"), "the holder read again");
    let started = Instant::now();
    let a = ask(&e.addr, scrape);
    let took = started.elapsed();
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(body(&a).lines().any(|x| x == close_wait_line(&l)), "{a}");
    assert!(took < Duration::from_secs(1), "a scrape among 2,000 slow clients took {took:?}");
    // At most 1,024 connections: the oldest 976 slow clients made room for the newer ones, and
    // one more for the first scrape (the second found its place free); the newest 1,023 are still
    // connected.
    dropped_oldest_first(&mut slow.iter_mut().collect::<Vec<_>>(), 977);
}

#[test]
fn issue_23_two_thousand_half_handshakes_and_half_requests_do_not_delay_a_tls_scrape() {
    if !can_isolate("slow-tls-clients") {
        return;
    }
    let _one_flood_at_a_time = util::serial();
    raise_nofile();
    let l = leak(5);
    settled(&l);
    let dir = scratch("slow-tls-clients");
    pki(&dir);
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let e = tls_exporter(&l, &dir, yaml, &["--request-timeout", "120s"]);
    let anyone = client(&dir, None);
    let scrape = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let first = ask_tls(&e.addr, &anyone, scrape).unwrap();
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "a first look, made: {first}");
    // A TLS record header announcing a 512-byte ClientHello, and its first bytes.
    let mut slow = slow_clients(&e.addr, 1900, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]);
    // And clients whose handshake is done but whose request is half sent.
    let mut done: Vec<_> = (0..100)
        .map(|_| {
            let tcp = TcpStream::connect(&e.addr).unwrap();
            let conn = rustls::ClientConnection::new(
                anyone.clone(),
                ServerName::try_from("127.0.0.1").unwrap(),
            )
            .unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"GET /metr").unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();
    let again = ask_tls(&e.addr, &anyone, scrape).unwrap();
    assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "the holder read again: {again}");
    let started = Instant::now();
    let a = ask_tls(&e.addr, &anyone, scrape).unwrap();
    let took = started.elapsed();
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(body(&a).lines().any(|x| x == close_wait_line(&l)), "{a}");
    assert!(took < Duration::from_secs(1), "a TLS scrape among 2,000 slow clients took {took:?}");
    // As above: 1,900 half handshakes, then 100 half requests; the oldest 977 went.
    let mut all: Vec<&mut TcpStream> = slow.iter_mut().collect();
    all.extend(done.iter_mut().map(|t| &mut t.sock));
    dropped_oldest_first(&mut all, 977);
}
