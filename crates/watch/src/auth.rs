//! Basic auth for the exporter (`basic_auth_users`: users and bcrypt hashes). A bcrypt check
//! costs tens of milliseconds by design, so the verdict on a pair of credentials is remembered
//! (under a SHA-256 of them, never the password itself): Prometheus, scraping every few seconds
//! with the same credentials, pays for one. Checks run one at a time off the exporter's thread,
//! so a client guessing passwords costs at most one core and never delays a scrape.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine;

/// Verdicts remembered at most; past that the refusals are forgotten.
const REMEMBERED: usize = 256;

/// Users and their bcrypt hashes.
pub struct Users {
    hashes: BTreeMap<String, String>,
    /// Verdicts by SHA-256 of `user \0 password`.
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt at a time.
    one: tokio::sync::Mutex<()>,
}

impl Users {
    /// Users from names to bcrypt hashes (at least one).
    pub fn new(hashes: BTreeMap<String, String>) -> Users {
        Users { hashes, verdicts: Mutex::new(HashMap::new()), one: tokio::sync::Mutex::new(()) }
    }

    /// Whether the `Authorization` header's value names a user and their password.
    pub async fn allow(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(basic) else { return false };
        let key = digest(&user, &password);
        if let Some(&v) = self.remembered().get(&key) {
            return v;
        }
        let _one = self.one.lock().await;
        if let Some(&v) = self.remembered().get(&key) {
            return v;
        }
        // An unknown user is checked against a known user's hash all the same, so that the time
        // an answer takes does not tell which users exist.
        let known = self.hashes.get(&user);
        let hash = known.or_else(|| self.hashes.values().next()).cloned().unwrap_or_default();
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let verdict = matches && known.is_some();
        let mut remembered = self.remembered();
        if remembered.len() >= REMEMBERED {
            // Refusals go; the credentials that were right stay, so that a client guessing
            // passwords never sends Prometheus's own back to a bcrypt.
            remembered.retain(|_, allowed| *allowed);
        }
        remembered.insert(key, verdict);
        verdict
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn digest(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(&[0]);
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The user and password of a `Basic` authorization (RFC 7617).
fn basic(value: &str) -> Option<(String, String)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_right_password_and_nothing_else() {
        // `htpasswd -nbBC 4 prometheus scrape-me` (Apache's $2y$ hashes, as in the toolkit's docs).
        let hash = "$2y$04$fCBkgop7WKfQXU53DUk9jOWsSlYe5I.IkIOqz57viCOalHoDwxlvu";
        let users = Users::new([("prometheus".to_string(), hash.to_string())].into());
        assert!(users.allow(Some(&header("prometheus", "scrape-me"))).await);
        assert!(users.allow(Some(&header("prometheus", "scrape-me"))).await, "remembered");
        assert!(!users.allow(Some(&header("prometheus", "scrape-you"))).await);
        assert!(!users.allow(Some(&header("grafana", "scrape-me"))).await);
        assert!(!users.allow(None).await);
        assert!(!users.allow(Some("Bearer abc")).await);
        assert!(!users.allow(Some("Basic !!!")).await);
        assert_eq!(users.remembered().len(), 3);
        for i in 0..REMEMBERED {
            users.remembered().insert(digest("guess", &i.to_string()), false);
        }
        assert!(!users.allow(Some(&header("prometheus", "scrape-them"))).await);
        let remembered = users.remembered();
        assert_eq!(remembered.len(), 2, "the right credentials and the last refusal");
        assert_eq!(remembered.get(&digest("prometheus", "scrape-me")), Some(&true));
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        assert_eq!(basic(&header("a", "b:c")), Some(("a".into(), "b:c".into())));
        assert_eq!(basic("basic YTpi"), Some(("a".into(), "b".into())));
        assert_eq!(basic("Basic YWI="), None, "no colon");
    }
}
