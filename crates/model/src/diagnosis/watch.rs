//! The watch's reading: what one look at a live host's service means, read from the numbers
//! `cwlab watch` has (the CLOSE-WAIT count, the oldest's age, the growth per minute, what the
//! holders closed while watched, who holds them), in the findings a run's and a check's
//! diagnosis speak. The watch sees a holder, not how it came to hold: the server side is
//! `held-open` (or the `backlog` look-alike), and only `cwlab check` tells a fork's copy from a
//! handler that never closes. The client side is read as `cwlab check --client` reads it: a
//! pool leak grows, or outlives a bound unclosed; a bounded pool stays at most what it held
//! when it last closed some, and closes them on its next use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use super::{finding, Finding, FindingKind, HolderProcess, BOUNDED_POOL_FIX};
use crate::fix::Shape;
use crate::report::Role;
use crate::runtime::Runtime;
use crate::watch::Holding;

/// The service one side of which the watch read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The server side of a port: sockets whose local port it is.
    Port(u16),
    /// The client side of a remote service: sockets connected to this address and port.
    Remote(SocketAddr),
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Port(p) => write!(f, "port {p}"),
            Service::Remote(a) => write!(f, "{a}"),
        }
    }
}

/// What one look of the watch saw of one side of one service: the numbers its reading stands
/// on.
#[derive(Debug, Clone, Copy)]
pub struct Watched<'a> {
    /// Which service, and so which side.
    pub service: Service,
    /// Its CLOSE-WAIT sockets.
    pub close_wait: u32,
    /// Of them, those no file refers to (on the server side: waiting in the listen queue).
    pub unfiled: u32,
    /// How long the oldest has waited, in seconds.
    pub oldest_s: Option<f64>,
    /// How fast they grew over the last minute watched, per minute (none on the first look).
    pub per_min: Option<f64>,
    /// How many of them their holder closed while watched (client side).
    pub cleared: u32,
    /// The most there were at once up to the last look that saw some closed (client side):
    /// the bound a pool keeps to.
    pub bound: Option<u32>,
    /// How long the service has been watched with CLOSE-WAIT, in seconds (0 on the first look).
    pub watched_s: f64,
    /// How long a CLOSE-WAIT socket may wait before it is taken for stuck (`cwlab watch
    /// --stuck`): a younger one may still be closed by its server's handler or found by its
    /// client's pool.
    pub stuck_s: f64,
    /// Its top holders, most first.
    pub holders: &'a [Holding],
}

/// The watch's reading of one side of one service: a finding when something is wrong, none when
/// nothing is shown to be: no CLOSE-WAIT, or none older than `stuck_s` (a busy server's handler
/// closes what it was given a moment ago; a pool may still find the FIN). One look shows no
/// more than that: a socket's age is the watch's evidence.
pub fn of_watch(w: &Watched<'_>) -> Option<Finding> {
    if w.close_wait == 0 || w.oldest_s.unwrap_or(0.0) < w.stuck_s {
        return None;
    }
    let f = match w.service {
        Service::Port(_) => server(w),
        Service::Remote(addr) => client(w, addr)?,
    };
    let role = match w.service {
        Service::Port(_) => Role::Other,
        Service::Remote(_) => Role::Client,
    };
    let holders = w
        .holders
        .iter()
        .map(|h| HolderProcess {
            pid: h.pid,
            name: Some(h.name.clone()),
            role,
            command: None,
            fds: Vec::new(),
        })
        .collect();
    Some(Finding { holders, numbers: numbers(w), ..f })
}

fn numbers(w: &Watched<'_>) -> BTreeMap<String, i64> {
    let mut n = BTreeMap::from([("close_wait".to_string(), i64::from(w.close_wait))]);
    let mut put = |k: &str, v: Option<i64>| {
        if let Some(v) = v {
            n.insert(k.to_string(), v);
        }
    };
    put("oldest_s", w.oldest_s.map(|s| s.round() as i64));
    put("per_min", w.per_min.map(|r| r.round() as i64));
    match w.service {
        Service::Port(_) => put("unfiled", Some(i64::from(w.unfiled))),
        Service::Remote(_) => {
            put("cleared", Some(i64::from(w.cleared)));
            put("bound", w.bound.map(i64::from));
        }
    }
    n
}

/// "growing 40/min" or "steady", and ", the oldest 12 s" where the age is known.
fn pace(w: &Watched<'_>) -> String {
    let growing = match w.per_min {
        Some(r) if r > 0.0 => format!("growing {r:.0}/min"),
        _ => "steady".to_string(),
    };
    let age = w.oldest_s.map_or(String::new(), |s| format!(", the oldest {s:.0} s"));
    format!("{growing}{age}")
}

/// "pid 4711 `myserver`", for the top holder.
fn named(h: &Holding) -> String {
    format!("pid {} `{}`", h.pid, h.name)
}

/// Runtimes that cannot fork a copy of a connection: what they hold, they never closed.
fn never_forks(r: Runtime) -> bool {
    matches!(r, Runtime::Jvm | Runtime::Nodejs | Runtime::Tcl)
}

/// Server-side CLOSE-WAIT: held open by a process, or waiting in the listen queue.
fn server(w: &Watched<'_>) -> Finding {
    let (n, pace) = (w.close_wait, pace(w));
    let named_by = |title: String, explanation: String, runtime: Option<Runtime>| {
        let shape = match runtime {
            Some(r) if never_forks(r) => Shape::NeverClosed,
            _ => Shape::HeldOpen,
        };
        finding(FindingKind::HeldOpen, title, n, &[], explanation).with_fix_for(shape, runtime)
    };
    match w.holders.first() {
        Some(h) => named_by(
            format!("held open: {n} CLOSE-WAIT held by {}", named(h)),
            format!("{n} CLOSE-WAIT ({pace}), held by {}: this side got the peer's FIN and never closed; the holder keeps the last reference", named(h)),
            h.runtime,
        ),
        None if w.unfiled < n => named_by(
            format!("held open: {n} CLOSE-WAIT held by processes the watch cannot name"),
            format!("{n} CLOSE-WAIT ({pace}), held by processes whose descriptors the watch may not read: this side got the peer's FIN and never closed"),
            None,
        ),
        None => finding(
            FindingKind::Backlog,
            format!("backlog look-alike: {n} CLOSE-WAIT held by nobody"),
            n,
            &[],
            format!("{n} CLOSE-WAIT ({pace}) held by no process: connections waiting in the listen queue, a busy server rather than a leak"),
        )
        .with_text_fix("none in the close path: the server is too busy to accept, not leaking"),
    }
}

/// Client-side CLOSE-WAIT to one remote service, once its oldest has waited `stuck_s`: a pool
/// that closes some and stays within what it held then is bounded; any other, a leak.
fn client(w: &Watched<'_>, addr: SocketAddr) -> Option<Finding> {
    let (n, pace) = (w.close_wait, pace(w));
    let top = w.holders.first();
    let who = top.map_or("a process the watch cannot name".to_string(), named);
    let holds = format!("{who} holds {n} half-closed connections to {addr} ({pace})");
    let within = w.bound.filter(|b| w.cleared > 0 && n <= *b);
    if let Some(bound) = within {
        return Some(
            finding(
                FindingKind::PoolBounded,
                format!("bounded pool: at most {bound} CLOSE-WAIT to {addr}, closed on its next use"),
                n,
                &[],
                format!("{holds} and closed {} while watched, never holding more than {bound}: a bounded pool that finds the FIN on its next use. Under control, not a leak", w.cleared),
            )
            .with_text_fix(BOUNDED_POOL_FIX),
        );
    }
    let stays = "each stays half-closed until the process closes it or exits";
    let why = match (w.cleared, w.bound) {
        // Told to read them at once (`--stuck 0s`): no wait to speak of.
        (0, _) if w.watched_s == 0.0 && w.stuck_s < 1.0 => stays.to_string(),
        (0, _) if w.watched_s == 0.0 => {
            format!("the oldest has outlived the {:.0} s a pool may take to notice, and {stays}", w.stuck_s)
        }
        (0, _) => format!(
            "none was closed in the {:.0} s watched, and {stays}",
            w.watched_s.max(1.0)
        ),
        (c, b) => format!(
            "it closed {c} while watched, yet holds more than the {} it held when it last did: they grow with its requests",
            b.unwrap_or(0)
        ),
    };
    let title = format!("pool leak: {n} CLOSE-WAIT to {addr} held by {who}");
    let explanation = format!("{holds}: its pool does not notice the server's FIN; {why}");
    Some(
        finding(FindingKind::PoolLeak, title, n, &[], explanation)
            .with_fix_for(Shape::PoolIgnoresFin, top.and_then(|h| h.runtime)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(runtime: Option<Runtime>) -> Holding {
        Holding {
            pid: 4242,
            name: "python3".into(),
            sockets: 50,
            open_fds: 57,
            max_fds: Some(1024),
            runtime,
            cgroup: None,
        }
    }

    fn remote(close_wait: u32, oldest: f64, holders: &[Holding]) -> Watched<'_> {
        Watched {
            service: Service::Remote("10.0.0.5:443".parse().unwrap()),
            close_wait,
            unfiled: 0,
            oldest_s: Some(oldest),
            per_min: None,
            cleared: 0,
            bound: None,
            watched_s: 0.0,
            stuck_s: 60.0,
            holders,
        }
    }

    #[test]
    fn issue_19_a_client_holding_50_half_closed_connections_is_a_pool_leak_in_its_idiom() {
        let hs = [holder(Some(Runtime::Cpython))];
        let f = of_watch(&Watched { watched_s: 30.0, ..remote(50, 75.0, &hs) }).unwrap();
        assert_eq!(f.kind, FindingKind::PoolLeak);
        assert_eq!(f.title, "pool leak: 50 CLOSE-WAIT to 10.0.0.5:443 held by pid 4242 `python3`");
        assert_eq!(
            f.explanation,
            "pid 4242 `python3` holds 50 half-closed connections to 10.0.0.5:443 (steady, the oldest 75 s): its pool does not notice the server's FIN; none was closed in the 30 s watched, and each stays half-closed until the process closes it or exits"
        );
        assert_eq!(f.idiom, Some(Runtime::Cpython));
        assert!(f.fix.as_deref().unwrap().contains("requests.Session()"), "{:?}", f.fix);
        assert_eq!((f.holders[0].pid, f.holders[0].role), (4242, Role::Client));
        assert_eq!(f.numbers["close_wait"], 50);
        assert_eq!(f.numbers["cleared"], 0);
        assert!(f.kind.is_leak());
    }

    #[test]
    fn issue_19_client_close_wait_younger_than_the_bound_is_no_finding_yet() {
        let hs = [holder(None)];
        assert_eq!(of_watch(&remote(50, 59.0, &hs)), None);
        assert_eq!(of_watch(&remote(0, 600.0, &hs)), None);
        let f = of_watch(&Watched { stuck_s: 0.0, ..remote(3, 0.0, &hs) }).unwrap();
        assert_eq!(f.kind, FindingKind::PoolLeak);
        assert!(
            f.explanation.ends_with(
                "the server's FIN; each stays half-closed until the process closes it or exits"
            ),
            "{}",
            f.explanation
        );
        let f = of_watch(&remote(50, 61.0, &hs)).unwrap();
        assert!(f.explanation.ends_with("the oldest has outlived the 60 s a pool may take to notice, and each stays half-closed until the process closes it or exits"), "{}", f.explanation);
        assert_eq!(f.idiom, None, "no runtime, the general sentence");
    }

    #[test]
    fn issue_19_a_pool_that_closes_some_and_stays_within_its_bound_is_under_control() {
        let hs = [holder(Some(Runtime::Cpython))];
        let bounded = Watched { cleared: 5, bound: Some(5), ..remote(5, 90.0, &hs) };
        let f = of_watch(&bounded).unwrap();
        assert_eq!(f.kind, FindingKind::PoolBounded);
        assert!(!f.kind.is_leak());
        assert!(f.explanation.ends_with("and closed 5 while watched, never holding more than 5: a bounded pool that finds the FIN on its next use. Under control, not a leak"), "{}", f.explanation);
        // Past its bound it grows with the requests, closings or not.
        let grown = Watched { close_wait: 9, per_min: Some(4.0), ..bounded };
        let f = of_watch(&grown).unwrap();
        assert_eq!(f.kind, FindingKind::PoolLeak);
        assert!(f.explanation.contains("(growing 4/min, the oldest 90 s)"), "{}", f.explanation);
        assert!(f.explanation.ends_with("it closed 5 while watched, yet holds more than the 5 it held when it last did: they grow with its requests"), "{}", f.explanation);
    }

    #[test]
    fn issue_19_the_server_side_once_stuck_reads_as_the_watch_always_said_with_a_fix() {
        let mut h = holder(Some(Runtime::Native));
        h.name = "myserver".into();
        let hs = [h];
        let w = Watched {
            service: Service::Port(8080),
            per_min: Some(40.0),
            stuck_s: 10.0,
            ..remote(100, 12.4, &hs)
        };
        // Younger than --stuck, a server's CLOSE-WAIT may be its handlers at work: no finding.
        assert_eq!(of_watch(&Watched { oldest_s: Some(9.9), ..w }), None);
        assert_eq!(of_watch(&Watched { oldest_s: None, ..w }), None);
        let f = of_watch(&w).unwrap();
        assert_eq!(f.kind, FindingKind::HeldOpen);
        assert_eq!(f.explanation, "100 CLOSE-WAIT (growing 40/min, the oldest 12 s), held by pid 4242 `myserver`: this side got the peer's FIN and never closed; the holder keeps the last reference");
        assert_eq!(f.idiom, None, "a native server may fork: the general sentence");
        assert!(f.fix.as_deref().unwrap().contains("cwlab check"), "{:?}", f.fix);
        // A JVM never forks: it never closed, and is told so in its idiom.
        let jvm = [Holding { runtime: Some(Runtime::Jvm), ..hs[0].clone() }];
        let f = of_watch(&Watched { holders: &jvm, ..w }).unwrap();
        assert_eq!(f.idiom, Some(Runtime::Jvm));
        assert!(f.fix.as_deref().unwrap().contains("try-with-resources"));
        // Nobody holds them: the listen queue; held but unnamed: held open all the same.
        let f = of_watch(&Watched { holders: &[], unfiled: 100, ..w }).unwrap();
        assert_eq!(f.kind, FindingKind::Backlog);
        assert_eq!(f.explanation, "100 CLOSE-WAIT (growing 40/min, the oldest 12 s) held by no process: connections waiting in the listen queue, a busy server rather than a leak");
        let f = of_watch(&Watched { holders: &[], unfiled: 10, ..w }).unwrap();
        assert_eq!(f.kind, FindingKind::HeldOpen);
        assert!(f.explanation.contains("whose descriptors the watch may not read"));
    }
}
