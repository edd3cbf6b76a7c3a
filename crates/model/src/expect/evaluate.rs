//! Evaluating expectations over what a run observed ([`Evidence`]): at the end, within a
//! time, or for a stretch of the hold; quantities known only at the end read the report.

use std::time::Duration;

use super::{Expectation, Quantity, Window};
use crate::diagnosis::{client_close_wait_leaked, fds_leaked, held_sockets};
use crate::duration;
use crate::report::{ExpectationResult, Report, Sample};

/// What a run observed, for evaluating expectations: its samples, and once it has ended, its
/// report (holders, outcomes, descriptor counts, the witnesses) for what is known only then.
pub struct Evidence<'a> {
    /// Every sample, in time order; the last one is the end.
    pub samples: &'a [Sample],
    /// When the hold phase began (ms since LISTEN): `within`/`for` look from here on.
    pub hold_from_ms: u64,
    /// The scenario's client count.
    pub clients: u32,
    /// The finished run, when there is one: without it, what is known only at the end (and
    /// the descriptor growth, which needs the baseline) cannot be read.
    pub end: Option<&'a Report>,
}

impl<'a> Evidence<'a> {
    /// The evidence of a finished run: its report.
    pub fn of(r: &'a Report) -> Evidence<'a> {
        Evidence {
            samples: &r.samples,
            hold_from_ms: r.hold_from_ms().unwrap_or(u64::MAX),
            clients: r.clients,
            end: Some(r),
        }
    }

    /// Evidence of samples alone, while a run goes on (the live view's ticks).
    pub fn of_samples(samples: &'a [Sample], hold_from_ms: u64, clients: u32) -> Evidence<'a> {
        Evidence { samples, hold_from_ms, clients, end: None }
    }

    /// Why a quantity cannot be observed in this run, if it cannot.
    fn unobservable(&self, q: &Quantity) -> Option<String> {
        let r = self.end?;
        match q {
            Quantity::Transitions(..) | Quantity::Path(..) if !r.transitions.available => {
                Some(format!(
                    "not observable: {}",
                    r.transitions.note.as_deref().unwrap_or("no transitions")
                ))
            }
            Quantity::Sent(..) if !r.packets.available => Some(format!(
                "not observable: {}",
                r.packets.note.as_deref().unwrap_or("no capture")
            )),
            _ => None,
        }
    }

    fn value(&self, q: &Quantity, s: &Sample) -> Option<i64> {
        match *q {
            Quantity::Sockets(side, state) => return Some(i64::from(s.get(side, state))),
            Quantity::AcceptorFds => return s.acceptor_fds.map(i64::from),
            _ => {}
        }
        let r = self.end?;
        Some(match *q {
            Quantity::Sockets(..) | Quantity::AcceptorFds => unreachable!("read from the sample"),
            Quantity::AcceptorFdsGrowth => {
                i64::from(s.acceptor_fds?) - i64::from(r.acceptor.fds_baseline?)
            }
            Quantity::AcceptorFdsLeaked => fds_leaked(r)?,
            Quantity::HungClients => i64::from(r.client_outcome.hung),
            Quantity::UnacceptedClients => i64::from(r.client_outcome.unaccepted),
            Quantity::ClientCloseWaitLeaked => client_close_wait_leaked(r),
            Quantity::Accepted => r.server.accepted as i64,
            Quantity::AcceptErrors => r.server.accept_errors as i64,
            Quantity::RoleFds(role) => r.fds_by_role.get(&role).copied().unwrap_or(0) as i64,
            Quantity::Transitions(side, from, to) => r.transitions.count(side, from, to) as i64,
            Quantity::Path(side, ref path) => r.transitions.path(side, path) as i64,
            Quantity::Sent(side, flag) => r.packets.sent(side, flag) as i64,
            Quantity::HeldBy(side, state, role) => i64::from(held_sockets(
                r.holders.iter().filter(|h| h.side == side && h.state == state && h.role == role),
            )),
        })
    }
}

/// Evaluates one expectation over the evidence.
pub fn evaluate(e: &Expectation, ev: &Evidence<'_>) -> ExpectationResult {
    let want = e.rhs.value(ev.clients);
    let result = |passed: bool, observed: Option<i64>, detail: String| ExpectationResult {
        text: e.text.clone(),
        passed,
        observed,
        detail,
        observable: true,
    };
    if let Some(why) = ev.unobservable(&e.quantity) {
        return ExpectationResult {
            text: e.text.clone(),
            passed: false,
            observed: None,
            detail: why,
            observable: false,
        };
    }
    let Some(last) = ev.samples.last() else {
        return result(false, None, "no sample was taken".into());
    };
    let hold: Vec<&Sample> = ev.samples.iter().filter(|s| s.t_ms >= ev.hold_from_ms).collect();
    match e.window {
        Window::End => match ev.value(&e.quantity, last) {
            Some(v) => {
                let ok = e.cmp.holds(v, want);
                result(ok, Some(v), format!("{v} at the end"))
            }
            None => result(false, None, format!("{} could not be read", e.quantity)),
        },
        Window::Within(d) => {
            let limit = ev.hold_from_ms + d.as_millis() as u64;
            let mut last_seen = None;
            for s in hold.iter().take_while(|s| s.t_ms <= limit) {
                let v = ev.value(&e.quantity, s);
                if let Some(v) = v {
                    if e.cmp.holds(v, want) {
                        let after = s.t_ms - ev.hold_from_ms;
                        return result(true, Some(v), format!("{v} after {after} ms"));
                    }
                }
                last_seen = v;
            }
            let detail = match last_seen {
                Some(v) => format!("still {v} after {}", duration::format(d)),
                None => format!("no sample within {}", duration::format(d)),
            };
            result(false, last_seen, detail)
        }
        Window::For(d) => evaluate_for(e, ev, &hold, want, d),
    }
}

fn evaluate_for(
    e: &Expectation,
    ev: &Evidence<'_>,
    hold: &[&Sample],
    want: i64,
    d: Duration,
) -> ExpectationResult {
    let need = d.as_millis() as u64;
    let mut best: Option<(u64, i64)> = None;
    let mut run_start: Option<(u64, i64)> = None;
    let mut first_miss: Option<(u64, Option<i64>)> = None;
    for s in hold {
        let v = ev.value(&e.quantity, s);
        match v.filter(|v| e.cmp.holds(*v, want)) {
            Some(v) => {
                let (start, v0) = *run_start.get_or_insert((s.t_ms, v));
                let span = s.t_ms - start;
                if best.is_none_or(|(b, _)| span > b) {
                    best = Some((span, v0));
                }
            }
            None => {
                run_start = None;
                first_miss.get_or_insert((s.t_ms - ev.hold_from_ms, v));
            }
        }
    }
    let passed = best.is_some_and(|(span, _)| span >= need);
    let (observed, detail) = match (best, first_miss) {
        (Some((span, v)), _) if passed => (Some(v), format!("{v} for {span} ms")),
        (Some((span, v)), _) => {
            (Some(v), format!("{v} for only {span} ms of the {} needed", duration::format(d)))
        }
        (None, Some((t, v))) => {
            let v_text = v.map_or("unreadable".to_string(), |v| v.to_string());
            (v, format!("{v_text} at {t} ms into the hold, never {} {want}", e.cmp))
        }
        (None, None) => (None, "no sample in the hold phase".into()),
    };
    ExpectationResult { text: e.text.clone(), passed, observed, detail, observable: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::Transitions;
    use crate::report::{Holder, Phase, Role, ServerOutcome, Side};
    use crate::state::TcpState;
    use std::collections::BTreeMap;

    /// A finished run of 10 clients whose hold began at 100 ms, with a baseline of 4 fds.
    fn report(samples: &[Sample]) -> Report {
        let mut r = crate::report::tests::report("t", 10);
        r.samples = samples.to_vec();
        r.phases.push(crate::report::PhaseMark { phase: Phase::Hold, t_ms: 100 });
        r.acceptor.fds_baseline = Some(4);
        r
    }

    fn parse(s: &str) -> Expectation {
        Expectation::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn without_the_witness_an_expectation_is_not_observable() {
        let t = timeline();
        let mut r = report(&t);
        r.transitions = Transitions {
            available: false,
            note: Some("tracefs is not mounted".into()),
            ..Default::default()
        };
        let ev = Evidence::of(&r);
        let r = evaluate(&parse("server path ESTAB -> CLOSE-WAIT == clients"), &ev);
        assert!(!r.observable);
        assert_eq!(r.detail, "not observable: tracefs is not mounted");
        assert!(evaluate(&parse("server CLOSE-WAIT == 9"), &ev).observable);
    }

    fn sample(t_ms: u64, phase: Phase, close_wait: u32, fds: u32) -> Sample {
        let mut server = BTreeMap::new();
        if close_wait > 0 {
            server.insert(TcpState::CloseWait, close_wait);
        }
        Sample {
            t_ms,
            phase,
            server,
            client: BTreeMap::new(),
            acceptor_fds: Some(fds),
            queued: 0,
            serving: 0,
        }
    }

    fn timeline() -> Vec<Sample> {
        // Clients close at 100 ms; CLOSE-WAIT climbs to 10 by 150 ms and stays until 1300 ms.
        let mut v = vec![sample(0, Phase::Listen, 0, 4), sample(50, Phase::Connect, 0, 14)];
        v.push(sample(100, Phase::Hold, 6, 14));
        for t in (150..=1300).step_by(50) {
            v.push(sample(t, Phase::Hold, 10, 14));
        }
        v.push(sample(1350, Phase::End, 9, 14));
        v
    }

    fn eval(text: &str, samples: &[Sample]) -> ExpectationResult {
        evaluate(&parse(text), &Evidence::of(&report(samples)))
    }

    #[test]
    fn at_the_end_reads_the_last_sample() {
        let t = timeline();
        let r = eval("server CLOSE-WAIT == 9", &t);
        assert!(r.passed);
        assert_eq!(r.observed, Some(9));
        let r = eval("server CLOSE-WAIT == clients", &t);
        assert!(!r.passed);
        assert_eq!(r.detail, "9 at the end");
        assert!(eval("acceptor fds grew by clients", &t).passed);
        assert!(eval("acceptor fds == 14", &t).passed);
    }

    #[test]
    fn within_needs_one_sample_before_the_deadline() {
        let t = timeline();
        let r = eval("server CLOSE-WAIT == clients within 100ms", &t);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.detail, "10 after 50 ms");
        let r = eval("server CLOSE-WAIT == clients within 40ms", &t);
        assert!(!r.passed);
        assert_eq!((r.observed, r.detail.as_str()), (Some(6), "still 6 after 40ms"));
    }

    #[test]
    fn for_needs_an_unbroken_stretch() {
        let t = timeline();
        let r = eval("server CLOSE-WAIT == clients for 1s", &t);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.detail, "10 for 1150 ms");
        let r = eval("server CLOSE-WAIT == clients for 1.2s", &t);
        assert!(!r.passed);
        assert_eq!(r.detail, "10 for only 1150 ms of the 1.2s needed");
        let mut broken = timeline();
        broken[10].server.insert(TcpState::CloseWait, 3);
        let r = eval("server CLOSE-WAIT == clients for 1s", &broken);
        assert!(!r.passed, "a dip breaks the stretch: {r:?}");
        let r = eval("server CLOSE-WAIT == 0 for 1s", &t);
        assert_eq!(r.detail, "6 at 0 ms into the hold, never == 0");
    }

    #[test]
    fn held_by_counts_distinct_sockets() {
        let t = timeline();
        let h = |inode, pid, role| Holder {
            side: Side::Server,
            state: TcpState::CloseWait,
            local: "127.0.0.1:1".into(),
            remote: format!("127.0.0.1:{inode}"),
            inode,
            pid,
            fd: pid.map(|_| 5),
            role,
            comm: None,
            cmdline: None,
        };
        let mut r = report(&t);
        r.holders = vec![
            h(1, Some(10), Role::Acceptor),
            h(1, Some(11), Role::Handler),
            h(2, Some(10), Role::Acceptor),
            h(3, None, Role::Nobody),
        ];
        r.server = ServerOutcome { accepted: 7, ..Default::default() };
        let ev = Evidence::of(&r);
        assert!(evaluate(&parse("accepted == 7"), &ev).passed);
        let r = evaluate(&parse("server CLOSE-WAIT held by acceptor == 2"), &ev);
        assert!(r.passed, "{r:?}");
        let r = evaluate(&parse("server CLOSE-WAIT held by nobody == 1"), &ev);
        assert!(r.passed, "{r:?}");
    }
}
