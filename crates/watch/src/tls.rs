//! `tls_server_config` as a rustls server configuration (over ring): the certificate and key,
//! the versions, cipher suites and curves by Go's names, and the client-certificate policies of
//! Go's `tls.ClientAuthType`, with exporter-toolkit's `client_allowed_sans`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::webconfig::{Cipher, ClientAuth, Curve, Problem, TlsSection, TlsVersion};

/// The rustls configuration `t` asks for; `None` where it sets no certificate, key, client CA or
/// client policy (plain HTTP, as exporter-toolkit does). Files are read from `dir` when relative.
pub(crate) fn server_config(
    t: &TlsSection,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Option<Arc<ServerConfig>>, Problem> {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    let enabled = set(&t.cert)
        || set(&t.key)
        || set(&t.cert_file)
        || set(&t.key_file)
        || set(&t.client_ca)
        || set(&t.client_ca_file)
        || t.client_auth_type.is_some();
    if !enabled {
        return Ok(None);
    }
    let chain = certificates(t, dir)?;
    let key = private_key(t, dir)?;
    let mut provider = ring::default_provider();
    provider.cipher_suites = cipher_suites(t.cipher_suites.as_deref(), notes);
    provider.kx_groups = curves(t.curve_preferences.as_deref(), notes);
    let provider = Arc::new(provider);
    let verifier = client_verifier(t, dir, &provider, notes)?;
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| Problem::new("tls_server_config.key_file", key_mismatch(e)))?;
    let files = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => Some((dir.join(c), dir.join(k))),
        _ => None,
    };
    let resolver = Reloading::new(files, certified, provider.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(t, notes)?)
        .map_err(|e| Problem::new("tls_server_config.cipher_suites", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok(Some(Arc::new(config)))
}

fn key_mismatch(e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the key is not the certificate's (its public key differs)".to_string()
        }
        e => format!("cannot use the key: {e}"),
    }
}

/// The server's certificate and key, read again when their files change (looked at no more than
/// once a second, when a client connects), as exporter-toolkit reads them for every connection:
/// a renewed certificate is served without a restart. A pair that cannot be used leaves the last
/// good one in place, and says so on stderr.
#[derive(Debug)]
struct Reloading {
    /// `cert_file` and `key_file`; none where the PEM is inline.
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

/// The pair served, the files' modification times it was read at, and when they were looked at.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: Option<(SystemTime, SystemTime)>,
    looked: Instant,
}

impl Reloading {
    fn new(
        files: Option<(PathBuf, PathBuf)>,
        key: CertifiedKey,
        provider: Arc<CryptoProvider>,
    ) -> Reloading {
        let stamps = files.as_ref().and_then(stamps);
        let loaded = Loaded { key: Arc::new(key), stamps, looked: Instant::now() };
        Reloading { files, provider, state: Mutex::new(loaded) }
    }

    fn read(&self, (cert, key): &(PathBuf, PathBuf)) -> Result<CertifiedKey, String> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate in it", cert.display()));
        }
        let der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        CertifiedKey::from_der(chain, der, &self.provider).map_err(key_mismatch)
    }
}

fn stamps((cert, key): &(PathBuf, PathBuf)) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(files) = &self.files else { return Some(s.key.clone()) };
        if s.looked.elapsed() < Duration::from_secs(1) {
            return Some(s.key.clone());
        }
        s.looked = Instant::now();
        let now = stamps(files);
        if now.is_some() && now != s.stamps {
            s.stamps = now;
            match self.read(files) {
                Ok(key) => s.key = Arc::new(key),
                Err(e) => eprintln!(
                    "cwlab watch: note: cannot reload the certificate ({e}): still serving the last one"
                ),
            }
        }
        Some(s.key.clone())
    }
}

/// PEM text given inline (`inline`) or in a file (`file`, relative to `dir`): exactly one.
fn pem_source(
    inline: &Option<String>,
    file: &Option<String>,
    keys: (&'static str, &'static str),
    dir: &Path,
) -> Result<Option<(Vec<u8>, String)>, Problem> {
    let inline = inline.as_deref().filter(|s| !s.is_empty());
    let file = file.as_deref().filter(|s| !s.is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(Problem::new(
            keys.1,
            format!("give {} or {}, not both", short(keys.0), short(keys.1)),
        )),
        (Some(text), None) => Ok(Some((text.as_bytes().to_vec(), short(keys.0).to_string()))),
        (None, Some(f)) => {
            let path = dir.join(f);
            let bytes = std::fs::read(&path).map_err(|e| {
                Problem::new(keys.1, format!("cannot read {}: {e}", path.display()))
            })?;
            Ok(Some((bytes, path.display().to_string())))
        }
        (None, None) => Ok(None),
    }
}

fn short(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn certificates(t: &TlsSection, dir: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    const KEYS: (&str, &str) = ("tls_server_config.cert", "tls_server_config.cert_file");
    let (pem, from) = pem_source(&t.cert, &t.cert_file, KEYS, dir)?
        .ok_or_else(|| Problem::new(KEYS.1, "missing: TLS needs cert_file (or cert)"))?;
    pem_certificates(&pem, &from, KEYS.1)
}

fn pem_certificates(
    pem: &[u8],
    from: &str,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::new(key, format!("{from}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Problem::new(key, format!("{from}: no PEM certificate in it")));
    }
    Ok(certs)
}

fn private_key(t: &TlsSection, dir: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    const KEYS: (&str, &str) = ("tls_server_config.key", "tls_server_config.key_file");
    let (pem, from) = pem_source(&t.key, &t.key_file, KEYS, dir)?
        .ok_or_else(|| Problem::new(KEYS.1, "missing: TLS needs key_file (or key)"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            Problem::new(KEYS.1, format!("{from}: no PEM private key in it"))
        }
        e => Problem::new(KEYS.1, format!("{from}: not a PEM private key: {e}")),
    })
}

/// The rustls suite of a Go name; `None` for the ones rustls does not implement.
fn suite(c: Cipher) -> Option<SupportedCipherSuite> {
    use ring::cipher_suite as s;
    Some(match c {
        Cipher::TLS_AES_128_GCM_SHA256 => s::TLS13_AES_128_GCM_SHA256,
        Cipher::TLS_AES_256_GCM_SHA384 => s::TLS13_AES_256_GCM_SHA384,
        Cipher::TLS_CHACHA20_POLY1305_SHA256 => s::TLS13_CHACHA20_POLY1305_SHA256,
        Cipher::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
            s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        Cipher::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
            s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        Cipher::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Cipher::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Cipher::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        Cipher::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// `cipher_suites`, as Go reads it: the TLS 1.2 suites, in the file's order; TLS 1.3's are
/// always all offered (Go does not let them be chosen either).
fn cipher_suites(names: Option<&[Cipher]>, notes: &mut Vec<String>) -> Vec<SupportedCipherSuite> {
    let all = ring::default_provider().cipher_suites;
    let Some(names) = names.filter(|n| !n.is_empty()) else { return all };
    let mut chosen: Vec<SupportedCipherSuite> =
        all.iter().filter(|s| s.tls13().is_some()).copied().collect();
    let (mut missing, mut tls13) = (Vec::new(), Vec::new());
    for &name in names {
        match suite(name) {
            Some(s) if s.tls13().is_some() => tls13.push(format!("{name:?}")),
            Some(s) if !chosen.contains(&s) => chosen.push(s),
            Some(_) => {}
            None => missing.push(format!("{name:?}")),
        }
    }
    if !missing.is_empty() {
        notes.push(format!(
            "tls_server_config.cipher_suites: not offered (rustls does not implement them): {}",
            missing.join(", ")
        ));
    }
    if chosen.iter().all(|s| s.tls13().is_some()) {
        chosen = all;
        notes.push("tls_server_config.cipher_suites: no TLS 1.2 suite left: rustls's own (ECDHE with AES-GCM or ChaCha20-Poly1305) instead".to_string());
    }
    if !tls13.is_empty() {
        notes.push(format!(
            "tls_server_config.cipher_suites: {} are TLS 1.3 suites, always all offered (as in Go)",
            tls13.join(", ")
        ));
    }
    chosen
}

/// `curve_preferences`, in the file's order.
fn curves(names: Option<&[Curve]>, notes: &mut Vec<String>) -> Vec<&'static dyn SupportedKxGroup> {
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        return ring::default_provider().kx_groups;
    };
    let mut chosen: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for name in names {
        let group: &'static dyn SupportedKxGroup = match name {
            Curve::X25519 => ring::kx_group::X25519,
            Curve::CurveP256 => ring::kx_group::SECP256R1,
            Curve::CurveP384 => ring::kx_group::SECP384R1,
            Curve::CurveP521 => {
                notes.push("tls_server_config.curve_preferences: CurveP521 is not offered (rustls does not implement it)".to_string());
                continue;
            }
        };
        if !chosen.iter().any(|g| g.name() == group.name()) {
            chosen.push(group);
        }
    }
    if chosen.is_empty() {
        notes.push("tls_server_config.curve_preferences: rustls's own curves (X25519, P-256, P-384) instead".to_string());
        return ring::default_provider().kx_groups;
    }
    chosen
}

/// `min_version` and `max_version` (TLS12 and TLS13 by default).
fn versions(
    t: &TlsSection,
    notes: &mut Vec<String>,
) -> Result<Vec<&'static SupportedProtocolVersion>, Problem> {
    let min = t.min_version.unwrap_or(TlsVersion::Tls12);
    let max = t.max_version.unwrap_or(TlsVersion::Tls13);
    if max < TlsVersion::Tls12 {
        return Err(Problem::new(
            "tls_server_config.max_version",
            "rustls speaks TLS12 and TLS13 only: max_version must be one of them",
        ));
    }
    if min > max {
        return Err(Problem::new(
            "tls_server_config.min_version",
            format!("{min} is above max_version {max}"),
        ));
    }
    if min < TlsVersion::Tls12 {
        notes.push(format!(
            "tls_server_config.min_version: {min} is not offered; rustls starts at TLS12"
        ));
    }
    let mut v = Vec::new();
    if max == TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    Ok(v)
}

/// The client-certificate policy `client_auth_type` names, with the CA and SAN checks.
fn client_verifier(
    t: &TlsSection,
    dir: &Path,
    provider: &Arc<CryptoProvider>,
    notes: &mut Vec<String>,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    const KEYS: (&str, &str) = ("tls_server_config.client_ca", "tls_server_config.client_ca_file");
    let auth = t.client_auth_type.unwrap_or_default();
    let ca = pem_source(&t.client_ca, &t.client_ca_file, KEYS, dir)?;
    let sans = t.client_allowed_sans.clone().unwrap_or_default();
    let inner: Arc<dyn ClientCertVerifier> = match auth {
        ClientAuth::NoClientCert if ca.is_some() => {
            let given = if t.client_ca.is_some() { KEYS.0 } else { KEYS.1 };
            return Err(Problem::new(
                given,
                "a client CA is given but client_auth_type is NoClientCert: name the policy \
                 (RequireAndVerifyClientCert to require certificates signed by it)",
            ));
        }
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => Arc::new(AnyCert {
            mandatory: auth == ClientAuth::RequireAnyClientCert,
            algorithms: provider.signature_verification_algorithms,
        }),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let (pem, from, hints) = match ca {
                Some((pem, from)) => (pem, from, true),
                None => {
                    let (pem, from) = system_roots(auth, notes)?;
                    (pem, from, false)
                }
            };
            let mut roots = RootCertStore::empty();
            for c in pem_certificates(&pem, &from, KEYS.1)? {
                roots.add(c).map_err(|e| Problem::new(KEYS.1, format!("{from}: {e}")))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            // Go names no CAs to the client when it verifies against the system's roots.
            let b = if hints { b } else { b.clear_root_hint_subjects() };
            let b = if auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| Problem::new(KEYS.1, e.to_string()))?
        }
    };
    if sans.is_empty() {
        return Ok(inner);
    }
    if !matches!(auth, ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert) {
        return Err(Problem::new(
            "tls_server_config.client_allowed_sans",
            "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
        ));
    }
    Ok(Arc::new(AllowedSans { inner, sans }))
}

/// Where Go's crypto/x509 looks for the system's roots on Linux, `SSL_CERT_FILE` first.
const SYSTEM_ROOTS: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's roots, which Go verifies client certificates against when no client CA is given.
fn system_roots(auth: ClientAuth, notes: &mut Vec<String>) -> Result<(Vec<u8>, String), Problem> {
    let env = std::env::var("SSL_CERT_FILE").ok();
    let found = env.iter().map(String::as_str).chain(SYSTEM_ROOTS).find_map(|p| {
        let pem = std::fs::read(p).ok()?;
        Some((pem, p.to_string()))
    });
    let Some((pem, from)) = found else {
        return Err(Problem::new(
            "tls_server_config.client_auth_type",
            format!("{auth:?} needs client_ca_file (or client_ca): the CA that signs the clients' certificates (and the system has no roots to use instead)"),
        ));
    };
    notes.push(format!(
        "tls_server_config.client_auth_type: {auth:?} without client_ca_file: client certificates are verified against the system's roots ({from}), as Go does"
    ));
    Ok((pem, from))
}

/// RequestClientCert and RequireAnyClientCert: any certificate, not checked against a CA; the
/// client must still prove it holds its key.
#[derive(Debug)]
struct AnyCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: the inner policy, then one of the certificate's subject alternative
/// names must be in the list, compared exactly (as exporter-toolkit does).
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<String>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let names = subject_alt_names(end_entity).unwrap_or_default();
        if names.iter().any(|n| self.sans.contains(n)) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "none of the client certificate's names {names:?} is in client_allowed_sans"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element of `input`: its tag, its contents and what follows; `None` if malformed.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject alternative names of a DER certificate as Go's `x509.Certificate` gives them:
/// DNS names, e-mail addresses, IP addresses as text, URIs. `None` if the DER is malformed.
fn subject_alt_names(cert: &[u8]) -> Option<Vec<String>> {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    let (_, certificate, _) = tlv(cert)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    while !tbs.is_empty() {
        let (tag, body, next) = tlv(tbs)?;
        tbs = next;
        if tag != 0xa3 {
            continue; // [3] extensions, after the version, serial, names, validity and key
        }
        let (_, mut exts, _) = tlv(body)?;
        while !exts.is_empty() {
            let (_, ext, next) = tlv(exts)?;
            exts = next;
            let (_, oid, rest) = tlv(ext)?;
            if oid != SAN {
                continue;
            }
            let (mut tag, mut value, rest) = tlv(rest)?;
            if tag == 0x01 {
                (tag, value, _) = tlv(rest)?; // the critical flag, then the OCTET STRING
            }
            if tag != 0x04 {
                return None;
            }
            let (_, names, _) = tlv(value)?;
            return general_names(names);
        }
    }
    Some(Vec::new())
}

fn general_names(mut names: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !names.is_empty() {
        let (tag, v, next) = tlv(names)?;
        names = next;
        match tag {
            0x81 | 0x82 | 0x86 => out.push(String::from_utf8_lossy(v).into_owned()),
            0x87 => out.push(match v.len() {
                4 => std::net::Ipv4Addr::new(v[0], v[1], v[2], v[3]).to_string(),
                16 => {
                    let a = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?);
                    a.to_ipv4_mapped().map_or(a.to_string(), |v4| v4.to_string())
                }
                _ => continue,
            }),
            _ => {}
        }
    }
    Some(out)
}
