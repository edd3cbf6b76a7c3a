//! The expectation language: one readable line per assertion, evaluated over a run's timeline.
//!
//! ```text
//! expectation := quantity OP rhs [window] | quantity "grew by" rhs [window]
//! quantity    := SIDE STATE                  e.g. `server CLOSE-WAIT`, `client time_wait`
//!              | SIDE STATE "held by" ROLE   e.g. `server CLOSE-WAIT held by acceptor` (end only)
//!              | "acceptor fds"              the acceptor's open descriptors
//!              | "acceptor fds growth"       the same, less its count before any client
//!              | "acceptor fds leaked"       descriptors it gained with the connections: with
//!                                            `cwlab check`'s waves, their growth when every wave
//!                                            grew with its connections, else 0 (end only)
//!              | "hung clients"              served clients whose reply or EOF never came (end only)
//!              | "unaccepted clients"        clients whose connection was never accepted (end only)
//!              | "client CLOSE-WAIT leaked"  client-side CLOSE-WAIT a pool leaked: held there and
//!                                            growing with the requests, or stuck (end only)
//!              | "accepted"                  connections the acceptor accepted (end only)
//!              | "accept errors"             accept() calls that failed (end only)
//!              | ROLE "fds"                  descriptors open in processes of that role: handler,
//!                                            helper or worker (end only)
//!              | SIDE "transitions" STATE "->" STATE
//!                                            connections whose socket made that transition (end only)
//!              | SIDE "path" STATE ("->" STATE)*
//!                                            connections whose path from ESTAB on is exactly that
//!              | SIDE ("FIN" | "SYN" | "RST")
//!                                            connections in which that side sent such a segment
//! OP          := == | != | < | <= | > | >=
//! rhs         := a whole number | "clients"
//! window      := "within" DURATION           true at some sample in the hold, no later than D
//!              | "for" DURATION              true at every sample of a stretch of the hold >= D
//!                                            (no window: true at the end)
//! ```
//!
//! `acceptor fds grew by N` is `acceptor fds growth == N`. Durations read `500ms`, `1s`, `1.5s`.

use std::fmt;
use std::time::Duration;

use crate::diagnosis::{client_close_wait_leaked, fds_leaked, held_sockets};
use crate::duration;
use crate::report::{ExpectationResult, Report, Role, Sample, Side};
use crate::state::TcpState;

/// What an expectation measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    /// Sockets on one side in one state.
    Sockets(Side, TcpState),
    /// Sockets on one side in one state held by a process of one role (known at the end only).
    HeldBy(Side, TcpState, Role),
    /// The acceptor's open descriptors.
    AcceptorFds,
    /// The acceptor's open descriptors less its count before any client.
    AcceptorFdsGrowth,
    /// The descriptors the acceptor gained with the connections ([`fds_leaked`]).
    AcceptorFdsLeaked,
    /// Clients that waited for a reply or an EOF that never came (known at the end only).
    HungClients,
    /// Clients whose connection the server never accepted (known at the end only).
    UnacceptedClients,
    /// Client-side CLOSE-WAIT a pool leaked ([`client_close_wait_leaked`]; at the end only).
    ClientCloseWaitLeaked,
    /// Connections the acceptor accepted (known at the end only).
    Accepted,
    /// accept() calls that failed (known at the end only).
    AcceptErrors,
    /// Descriptors open in the acceptor's descendants of one role (known at the end only).
    RoleFds(Role),
    /// Connections whose socket on one side made a transition (from the kernel's tracepoint).
    Transitions(Side, TcpState, TcpState),
    /// Connections whose socket on one side took exactly this path from ESTAB on.
    Path(Side, Vec<TcpState>),
    /// Connections in which one side sent a segment with this flag (from the capture).
    Sent(Side, &'static str),
}

impl Quantity {
    /// True when the quantity is only known at the end of a run.
    pub fn end_only(&self) -> bool {
        !matches!(self, Quantity::Sockets(..) | Quantity::AcceptorFds | Quantity::AcceptorFdsGrowth)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "==" | "=" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            _ => return None,
        })
    }

    /// Applies the comparison.
    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        })
    }
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rhs {
    /// A number.
    Number(i64),
    /// The scenario's client count.
    Clients,
}

impl Rhs {
    /// The value, given the client count.
    pub fn value(self, clients: u32) -> i64 {
        match self {
            Rhs::Number(n) => n,
            Rhs::Clients => i64::from(clients),
        }
    }
}

/// When an expectation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// At the last sample.
    End,
    /// At some sample of the hold phase no later than this after it began.
    Within(Duration),
    /// At every sample of a stretch of the hold phase at least this long.
    For(Duration),
}

/// One parsed expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The text as written.
    pub text: String,
    /// What it measures.
    pub quantity: Quantity,
    /// How it compares.
    pub cmp: Cmp,
    /// What it compares with.
    pub rhs: Rhs,
    /// When it is checked.
    pub window: Window,
}

/// A parse error at a byte offset of the expectation's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the text where the problem starts.
    pub offset: usize,
    /// What was expected there.
    pub message: String,
}

struct Tokens<'a> {
    items: Vec<(usize, &'a str)>,
    next: usize,
    end: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Tokens<'a> {
        let mut items = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    items.push((s, &text[s..i]));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            items.push((s, &text[s..]));
        }
        Tokens { items, next: 0, end: text.len() }
    }

    fn peek(&self) -> Option<(usize, &'a str)> {
        self.items.get(self.next).copied()
    }

    fn take(&mut self, what: &str) -> Result<(usize, &'a str), ParseError> {
        let t = self.peek().ok_or_else(|| ParseError {
            offset: self.end,
            message: format!("expected {what}, found the end of the expectation"),
        })?;
        self.next += 1;
        Ok(t)
    }

    fn keyword(&mut self, word: &str) -> Result<(), ParseError> {
        let (at, t) = self.take(&format!("`{word}`"))?;
        if t.eq_ignore_ascii_case(word) {
            Ok(())
        } else {
            Err(ParseError { offset: at, message: format!("expected `{word}`, found `{t}`") })
        }
    }
}

const QUANTITY_HELP: &str = "expected a quantity: `server STATE`, `client STATE` or `acceptor fds`";

impl Expectation {
    /// Parses one expectation line.
    pub fn parse(text: &str) -> Result<Expectation, ParseError> {
        let mut toks = Tokens::new(text);
        let (quantity, grew) = parse_quantity(&mut toks)?;
        let cmp = if grew {
            Cmp::Eq
        } else {
            let (at, t) = toks.take("a comparison (==, !=, <, <=, >, >=)")?;
            Cmp::parse(t).ok_or_else(|| ParseError {
                offset: at,
                message: format!("expected a comparison (==, !=, <, <=, >, >=), found `{t}`"),
            })?
        };
        let rhs = parse_rhs(&mut toks)?;
        let window = parse_window(&mut toks)?;
        if quantity.end_only() && window != Window::End {
            return Err(ParseError {
                offset: toks.items[toks.next - 2].0,
                message: format!(
                    "{quantity} is known only at the end of a run: drop `within`/`for`"
                ),
            });
        }
        if let Some((at, t)) = toks.peek() {
            return Err(ParseError {
                offset: at,
                message: format!("expected `within D`, `for D` or the end, found `{t}`"),
            });
        }
        Ok(Expectation { text: text.trim().to_string(), quantity, cmp, rhs, window })
    }
}

fn parse_quantity(toks: &mut Tokens<'_>) -> Result<(Quantity, bool), ParseError> {
    let (at, word) = toks.take("a quantity")?;
    let lower = word.to_ascii_lowercase();
    let word = lower.as_str();
    let side = match word {
        "server" => Side::Server,
        "client" => Side::Client,
        "acceptor" => {
            toks.keyword("fds")?;
            return parse_fds_suffix(toks);
        }
        "hung" => {
            toks.keyword("clients")?;
            return Ok((Quantity::HungClients, false));
        }
        "unaccepted" => {
            toks.keyword("clients")?;
            return Ok((Quantity::UnacceptedClients, false));
        }
        "accepted" => return Ok((Quantity::Accepted, false)),
        "handler" | "helper" | "worker" => {
            toks.keyword("fds")?;
            let role = Role::ALL.iter().copied().find(|r| r.name() == word).expect("listed");
            return Ok((Quantity::RoleFds(role), false));
        }
        "accept" => {
            toks.keyword("errors")?;
            return Ok((Quantity::AcceptErrors, false));
        }
        _ => {
            return Err(ParseError {
                offset: at,
                message: format!("{QUANTITY_HELP}, found `{word}`"),
            })
        }
    };
    if let Some((_, next)) = toks.peek() {
        let upper = next.to_ascii_uppercase();
        if let Some((flag, _)) = crate::evidence::FLAGS.iter().find(|(f, _)| *f == upper) {
            toks.next += 1;
            return Ok((Quantity::Sent(side, flag), false));
        }
        if next.eq_ignore_ascii_case("transitions") {
            toks.next += 1;
            let from = parse_state(toks)?;
            toks.keyword("->")?;
            let to = parse_state(toks)?;
            return Ok((Quantity::Transitions(side, from, to), false));
        }
        if next.eq_ignore_ascii_case("path") {
            toks.next += 1;
            let mut path = vec![parse_state(toks)?];
            while toks.peek().is_some_and(|(_, t)| t == "->") {
                toks.next += 1;
                path.push(parse_state(toks)?);
            }
            return Ok((Quantity::Path(side, path), false));
        }
    }
    let (at, st) = toks.take("a TCP state such as CLOSE-WAIT")?;
    let state: TcpState = st.parse().map_err(|e: crate::state::UnknownState| ParseError {
        offset: at,
        message: e.to_string(),
    })?;
    if side == Side::Client
        && state == TcpState::CloseWait
        && toks.peek().is_some_and(|(_, t)| t.eq_ignore_ascii_case("leaked"))
    {
        toks.next += 1;
        return Ok((Quantity::ClientCloseWaitLeaked, false));
    }
    if toks.peek().is_some_and(|(_, t)| t.eq_ignore_ascii_case("held")) {
        toks.next += 1;
        toks.keyword("by")?;
        let (at, r) = toks.take("a role")?;
        let role = Role::ALL.iter().copied().find(|x| x.name().eq_ignore_ascii_case(r)).ok_or_else(
            || ParseError {
                offset: at,
                message: format!(
                    "unknown role `{r}` (expected one of acceptor, handler, helper, client, nobody, other)"
                ),
            },
        )?;
        return Ok((Quantity::HeldBy(side, state, role), false));
    }
    Ok((Quantity::Sockets(side, state), false))
}

fn parse_state(toks: &mut Tokens<'_>) -> Result<TcpState, ParseError> {
    let (at, st) = toks.take("a TCP state such as CLOSE-WAIT")?;
    st.parse()
        .map_err(|e: crate::state::UnknownState| ParseError { offset: at, message: e.to_string() })
}

fn parse_fds_suffix(toks: &mut Tokens<'_>) -> Result<(Quantity, bool), ParseError> {
    match toks.peek() {
        Some((_, t)) if t.eq_ignore_ascii_case("grew") => {
            toks.next += 1;
            toks.keyword("by")?;
            Ok((Quantity::AcceptorFdsGrowth, true))
        }
        Some((_, t)) if t.eq_ignore_ascii_case("growth") => {
            toks.next += 1;
            Ok((Quantity::AcceptorFdsGrowth, false))
        }
        Some((_, t)) if t.eq_ignore_ascii_case("leaked") => {
            toks.next += 1;
            Ok((Quantity::AcceptorFdsLeaked, false))
        }
        _ => Ok((Quantity::AcceptorFds, false)),
    }
}

fn parse_rhs(toks: &mut Tokens<'_>) -> Result<Rhs, ParseError> {
    let (at, t) = toks.take("a number or `clients`")?;
    if t.eq_ignore_ascii_case("clients") {
        return Ok(Rhs::Clients);
    }
    t.parse::<i64>().map(Rhs::Number).map_err(|_| ParseError {
        offset: at,
        message: format!("expected a number or `clients`, found `{t}`"),
    })
}

fn parse_window(toks: &mut Tokens<'_>) -> Result<Window, ParseError> {
    let Some((_, word)) = toks.peek() else { return Ok(Window::End) };
    let make: fn(Duration) -> Window = match word.to_ascii_lowercase().as_str() {
        "within" => Window::Within,
        "for" => Window::For,
        _ => return Ok(Window::End),
    };
    toks.next += 1;
    let (at, d) = toks.take("a duration such as `2s`")?;
    let d = duration::parse(d).map_err(|message| ParseError { offset: at, message })?;
    Ok(make(d))
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Sockets(side, state) => write!(f, "{side} {state}"),
            Quantity::HeldBy(side, state, role) => write!(f, "{side} {state} held by {role}"),
            Quantity::AcceptorFds => f.write_str("acceptor fds"),
            Quantity::AcceptorFdsGrowth => f.write_str("acceptor fds growth"),
            Quantity::AcceptorFdsLeaked => f.write_str("acceptor fds leaked"),
            Quantity::HungClients => f.write_str("hung clients"),
            Quantity::UnacceptedClients => f.write_str("unaccepted clients"),
            Quantity::ClientCloseWaitLeaked => f.write_str("client CLOSE-WAIT leaked"),
            Quantity::Accepted => f.write_str("accepted"),
            Quantity::AcceptErrors => f.write_str("accept errors"),
            Quantity::RoleFds(role) => write!(f, "{role} fds"),
            Quantity::Transitions(side, from, to) => write!(f, "{side} transitions {from} -> {to}"),
            Quantity::Path(side, path) => {
                let p: Vec<&str> = path.iter().map(|s| s.name()).collect();
                write!(f, "{side} path {}", p.join(" -> "))
            }
            Quantity::Sent(side, flag) => write!(f, "{side} {flag}"),
        }
    }
}

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
    use crate::report::{Holder, Phase, Sample, ServerOutcome};
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

    fn err(s: &str) -> ParseError {
        Expectation::parse(s).unwrap_err()
    }

    #[test]
    fn parses_the_readme_examples() {
        let e = parse("server CLOSE-WAIT == clients for 1s");
        assert_eq!(e.quantity, Quantity::Sockets(Side::Server, TcpState::CloseWait));
        assert_eq!((e.cmp, e.rhs), (Cmp::Eq, Rhs::Clients));
        assert_eq!(e.window, Window::For(Duration::from_secs(1)));
        let e = parse("server close_wait == 0 within 2s");
        assert_eq!(e.window, Window::Within(Duration::from_secs(2)));
        assert_eq!(e.rhs, Rhs::Number(0));
        let e = parse("client TIME-WAIT == clients");
        assert_eq!(e.window, Window::End);
        let e = parse("acceptor fds grew by clients");
        assert_eq!(
            (e.quantity, e.cmp, e.rhs),
            (Quantity::AcceptorFdsGrowth, Cmp::Eq, Rhs::Clients)
        );
        let e = parse("acceptor fds growth <= 3");
        assert_eq!((e.quantity, e.cmp), (Quantity::AcceptorFdsGrowth, Cmp::Le));
        let e = parse("server CLOSE-WAIT held by acceptor == clients");
        assert_eq!(e.quantity, Quantity::HeldBy(Side::Server, TcpState::CloseWait, Role::Acceptor));
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

    #[test]
    fn every_parse_error_points_at_its_word() {
        let e = err("servre CLOSE-WAIT == 1");
        assert_eq!(e.offset, 0);
        assert_eq!(e.message, format!("{QUANTITY_HELP}, found `servre`"));
        let e = err("server CLOSE-WIAT == 1");
        assert_eq!(e.offset, 7);
        assert!(e.message.starts_with("unknown TCP state `CLOSE-WIAT`"), "{}", e.message);
        let e = err("server CLOSE-WAIT ~ 1");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (18, "expected a comparison (==, !=, <, <=, >, >=), found `~`")
        );
        let e = err("server CLOSE-WAIT == many");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (21, "expected a number or `clients`, found `many`")
        );
        let e = err("server CLOSE-WAIT == 1 within forever");
        assert_eq!(e.offset, 30);
        assert!(e.message.contains("found `forever`"));
        let e = err("server CLOSE-WAIT == 1 please");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (23, "expected `within D`, `for D` or the end, found `please`")
        );
        let e = err("server CLOSE-WAIT ==");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (20, "expected a number or `clients`, found the end of the expectation")
        );
        let e = err("server CLOSE-WAIT held by landlord == 1");
        assert_eq!(e.offset, 26);
        assert!(e.message.starts_with("unknown role `landlord`"));
        let e = err("server CLOSE-WAIT held by acceptor == 1 for 1s");
        assert!(
            e.message.starts_with("server CLOSE-WAIT held by acceptor is known only at the end"),
            "{}",
            e.message
        );
        let e = parse("hung clients == 3");
        assert_eq!((e.quantity, e.rhs), (Quantity::HungClients, Rhs::Number(3)));
        let e = parse("accept errors >= 1");
        assert_eq!((e.quantity, e.cmp), (Quantity::AcceptErrors, Cmp::Ge));
        assert_eq!(parse("accepted == clients").quantity, Quantity::Accepted);
        assert_eq!(parse("helper fds == 50").quantity, Quantity::RoleFds(Role::Helper));
        let e = parse("server transitions CLOSE-WAIT -> LAST-ACK == clients");
        assert_eq!(
            e.quantity,
            Quantity::Transitions(Side::Server, TcpState::CloseWait, TcpState::LastAck)
        );
        let e = parse("server path ESTAB -> CLOSE-WAIT == clients");
        assert_eq!(
            e.quantity,
            Quantity::Path(Side::Server, vec![TcpState::Established, TcpState::CloseWait])
        );
        assert_eq!(parse("client fin == clients").quantity, Quantity::Sent(Side::Client, "FIN"));
        assert_eq!(parse("server RST == 0").quantity, Quantity::Sent(Side::Server, "RST"));
        let e = err("server transitions CLOSE-WAIT LAST-ACK == 1");
        assert_eq!(e.message, "expected `->`, found `LAST-ACK`");
        let e = err("accepted == 60 within 1s");
        assert!(e.message.starts_with("accepted is known only at the end"), "{}", e.message);
        let e = err("acceptor sockets == 1");
        assert_eq!((e.offset, e.message.as_str()), (9, "expected `fds`, found `sockets`"));
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
