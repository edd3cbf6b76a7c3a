//! The reading of a run: what its numbers mean, computed once from a report and shown by every
//! face (the summary, the live view, the charts, JSON, JUnit) without being worked out again.
//!
//! A [`Diagnosis`] has two parts:
//! - `held`: every stuck socket at the end, grouped by side, state and the role of what holds
//!   it, with the holding processes and their descriptor numbers. "N sockets held by ROLE" is
//!   counted here and nowhere else ([`held_sockets`]).
//! - `findings`: what the run shows (a fork leak held by the acceptor, a leak through exec'd
//!   helpers or forked workers, the symptom hidden while the descriptors grow, the backlog
//!   look-alike, hung clients, a clean close), each with the sockets, the holders, the numbers
//!   behind it, one sentence of explanation and the fix.
//!
//! The watch's looks at a live host are read here too ([`of_watch`], in `diagnosis/watch.rs`):
//! the same findings, from the numbers a look has.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fix::{self, Shape};
use crate::report::{Holder, Report, Role, Side};
use crate::runtime::Runtime;
use crate::state::TcpState;

mod watch;
pub use watch::{of_watch, Service, Watched};

/// What a run shows, and what holds its stuck sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    /// What the run shows, the most important first; never empty in a written report (a run
    /// with nothing wrong has one `clean` finding).
    pub findings: Vec<Finding>,
    /// Every stuck socket at the end, grouped by side, state and role.
    pub held: Vec<Held>,
    /// What the run saw that is no finding but helps reading it: clients that waited in the
    /// accept queue, slow replies, a one-time descriptor (schema 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Stuck sockets of one side and state, held by processes of one role (or by nobody).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// The sockets' side.
    pub side: Side,
    /// Their state.
    pub state: TcpState,
    /// What holds them.
    pub role: Role,
    /// Distinct sockets (a socket two processes share counts once).
    pub sockets: u32,
    /// The processes holding them, by pid; empty for `nobody`.
    pub processes: Vec<HolderProcess>,
}

/// One process and the descriptors by which it holds the sockets of a group or finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderProcess {
    /// Its pid as the runner sees it.
    pub pid: u32,
    /// Its name (`comm`), when it could be read.
    pub name: Option<String>,
    /// What it is to the run.
    pub role: Role,
    /// Its command line, for a user's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The descriptor numbers, ascending.
    pub fds: Vec<i32>,
}

/// One thing a run shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// What kind of thing.
    pub kind: FindingKind,
    /// A few words for a title: "fork leak: 100 CLOSE-WAIT held by the acceptor".
    pub title: String,
    /// The sockets it is about (0 where it is about descriptors or clients).
    pub sockets: u32,
    /// The processes holding them.
    pub holders: Vec<HolderProcess>,
    /// The numbers behind it, by name (`close_wait`, `acceptor_fds_grew`, `hung`, …).
    pub numbers: BTreeMap<String, i64>,
    /// One sentence: why it is so.
    pub explanation: String,
    /// What to change in the server, where something should change.
    pub fix: Option<String>,
    /// The measurements that make it a leak, in a sentence: "+1.00 descriptor and +1.00
    /// CLOSE-WAIT per connection over 2 waves of 48" (schema 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The runtime whose idiom `fix` is phrased in (schema 4); absent for the general sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idiom: Option<Runtime>,
}

impl Finding {
    /// "fix (Node.js): …", or "fix: …" for the general sentence; none without a fix.
    pub fn fix_line(&self) -> Option<String> {
        let fix = self.fix.as_deref()?;
        Some(match self.idiom {
            Some(r) => format!("fix ({r}): {fix}"),
            None => format!("fix: {fix}"),
        })
    }
}

/// The kinds of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// CLOSE-WAIT held by the acceptor: the parent kept its copy after fork.
    ForkLeak,
    /// CLOSE-WAIT held by helpers that inherited the connection across exec.
    ExecInherited,
    /// CLOSE-WAIT held by forked workers that never handled the connection.
    WorkerInherited,
    /// CLOSE-WAIT held by the handlers themselves: they have not closed yet.
    HandlerHolds,
    /// CLOSE-WAIT held by a process the run did not start.
    HeldElsewhere,
    /// No CLOSE-WAIT, but the acceptor holds more descriptors than before the clients.
    HiddenLeak,
    /// accept() failed: the acceptor ran out of something, descriptors first.
    AcceptFailing,
    /// CLOSE-WAIT held by nobody, never accepted: a busy server, not a leak.
    Backlog,
    /// Clients waited for a reply or an EOF that never came.
    HungClients,
    /// CLOSE-WAIT held by the listening process, which never forked: the handler never closes.
    NeverClosed,
    /// CLOSE-WAIT that drained within the hold: the server finishing its work, not a leak.
    SlowClose,
    /// The server went away during the run.
    ServerGone,
    /// accept() failed with EMFILE while the acceptor held CLOSE-WAIT: the leak ran it out of
    /// descriptors, and later connections were never accepted.
    FdExhaustion,
    /// CLOSE-WAIT on the client's side that grows with its requests: a connection pool that keeps
    /// connections the server closed and never notices their FIN.
    PoolLeak,
    /// CLOSE-WAIT on the client's side that stays bounded and is cleared when the pool next
    /// takes its connections: under control.
    PoolBounded,
    /// CLOSE-WAIT on a live host held open by a process (the watch sees the holder, not how it
    /// came to hold it: `cwlab check` tells the shapes apart).
    HeldOpen,
    /// None of the above.
    Clean,
}

impl FindingKind {
    /// The name reports and JUnit spell.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::ForkLeak => "fork-leak",
            FindingKind::ExecInherited => "exec-inherited",
            FindingKind::WorkerInherited => "worker-inherited",
            FindingKind::HandlerHolds => "handler-holds",
            FindingKind::HeldElsewhere => "held-elsewhere",
            FindingKind::HiddenLeak => "hidden-leak",
            FindingKind::AcceptFailing => "accept-failing",
            FindingKind::Backlog => "backlog",
            FindingKind::HungClients => "hung-clients",
            FindingKind::NeverClosed => "never-closed",
            FindingKind::SlowClose => "slow-close",
            FindingKind::ServerGone => "server-gone",
            FindingKind::FdExhaustion => "fd-exhaustion",
            FindingKind::PoolLeak => "pool-leak",
            FindingKind::PoolBounded => "pool-bounded",
            FindingKind::HeldOpen => "held-open",
            FindingKind::Clean => "clean",
        }
    }

    /// Whether the finding is a descriptor leak in the server (shown or hidden).
    pub fn is_leak(self) -> bool {
        matches!(
            self,
            FindingKind::ForkLeak
                | FindingKind::ExecInherited
                | FindingKind::WorkerInherited
                | FindingKind::HeldElsewhere
                | FindingKind::HiddenLeak
                | FindingKind::NeverClosed
                | FindingKind::FdExhaustion
                | FindingKind::PoolLeak
                | FindingKind::HeldOpen
        )
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The number of distinct sockets among `rows` (a socket several processes hold counts once):
/// the one count behind every "N sockets held by ROLE".
pub fn held_sockets<'a>(rows: impl IntoIterator<Item = &'a Holder>) -> u32 {
    let sockets: BTreeSet<(u64, &str, &str)> =
        rows.into_iter().map(|h| (h.inode, h.local.as_str(), h.remote.as_str())).collect();
    sockets.len() as u32
}

/// The processes among `rows` with their descriptors, by pid.
fn processes<'a>(rows: impl IntoIterator<Item = &'a Holder>) -> Vec<HolderProcess> {
    let mut by_pid: BTreeMap<u32, HolderProcess> = BTreeMap::new();
    for h in rows {
        let Some(pid) = h.pid else { continue };
        let p = by_pid.entry(pid).or_insert_with(|| HolderProcess {
            pid,
            name: h.comm.clone(),
            role: h.role,
            command: h.cmdline.clone(),
            fds: Vec::new(),
        });
        p.fds.extend(h.fd);
    }
    let mut v: Vec<HolderProcess> = by_pid.into_values().collect();
    for p in &mut v {
        p.fds.sort_unstable();
        p.fds.dedup();
    }
    v
}

impl Diagnosis {
    /// Reads a report. Everything it says comes from the report's holders, final counts,
    /// descriptor counts, waves and outcomes.
    pub fn of(r: &Report) -> Diagnosis {
        let held = group(&r.holders);
        let mut findings = Vec::new();
        gone(r, &mut findings);
        let exhausted = exhaustion(r, &held, &mut findings);
        close_wait(r, &held, exhausted, &mut findings);
        client_close_wait(r, &held, &mut findings);
        hidden(r, &mut findings);
        slow(r, &mut findings);
        if !exhausted {
            accept_errors(r, &mut findings);
        }
        hung(r, &mut findings);
        if findings.is_empty() {
            findings.push(clean(r));
        }
        let notes = notes(r, &findings);
        Diagnosis { findings, held, notes }
    }

    /// The first finding: the one a title or a one-line summary shows.
    pub fn primary(&self) -> Option<&Finding> {
        self.findings.first()
    }

    /// Whether nothing is wrong: every finding is `clean`, a slow close or a bounded pool (`cwlab
    /// check` exits 0).
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|f| {
            matches!(f.kind, FindingKind::Clean | FindingKind::SlowClose | FindingKind::PoolBounded)
        })
    }

    /// Whether any finding is a leak.
    pub fn leaks(&self) -> bool {
        self.findings.iter().any(|f| f.kind.is_leak())
    }

    /// Distinct sockets on `side` in `state` held by `role`.
    pub fn held_by(&self, side: Side, state: TcpState, role: Role) -> u32 {
        held_in(&self.held, side, state, role)
    }
}

fn held_in(held: &[Held], side: Side, state: TcpState, role: Role) -> u32 {
    held.iter()
        .filter(|h| h.side == side && h.state == state && h.role == role)
        .map(|h| h.sockets)
        .sum()
}

fn group(rows: &[Holder]) -> Vec<Held> {
    let mut groups: BTreeMap<(Side, TcpState, Role), Vec<&Holder>> = BTreeMap::new();
    for h in rows {
        groups.entry((h.side, h.state, h.role)).or_default().push(h);
    }
    groups
        .into_iter()
        .map(|((side, state, role), rows)| Held {
            side,
            state,
            role,
            sockets: held_sockets(rows.iter().copied()),
            processes: processes(rows.iter().copied()),
        })
        .collect()
}

fn numbers(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn fds_grew(r: &Report) -> Option<i64> {
    Some(i64::from(r.acceptor.fds_end?) - i64::from(r.acceptor.fds_baseline?))
}

/// Whether a wave of `connections` that added `growth` grew with its connections: by at least
/// one for every ten of them (a one-time cost, a lazily opened file or socket, does not).
pub fn grows_with(growth: i64, connections: u32) -> bool {
    growth >= 1 && growth * 10 >= i64::from(connections)
}

/// Descriptors the listening process leaked. With waves (`cwlab check`): when every wave grew
/// with its connections ([`grows_with`]) and the growth was still there at the end of the hold,
/// what it held at the end more than after the warm-up; else 0 (a one-time cost, or descriptors
/// of connections still being served that were closed later). Without waves: its growth since
/// before the clients, when positive.
pub fn fds_leaked(r: &Report) -> Option<i64> {
    let Some(w) = &r.waves else { return fds_grew(r).map(|g| g.max(0)) };
    let growth = w.growth();
    let every = growth.iter().all(|g| g.fds.is_some_and(|f| grows_with(f, g.connections)));
    let kept = i64::from(r.acceptor.fds_end?) - i64::from(w.baseline.fds?);
    Some(if !growth.is_empty() && every && grows_with(kept, w.connections()) { kept } else { 0 })
}

/// "+1.00 descriptor and +1.00 CLOSE-WAIT per connection over 2 waves of 48": what the waves
/// measured, per connection.
fn wave_evidence(r: &Report, fds: bool) -> Option<String> {
    let w = r.waves.as_ref()?;
    let growth = w.growth();
    let n = f64::from(w.connections());
    if growth.is_empty() || n == 0.0 {
        return None;
    }
    let cw: i64 = growth.iter().map(|g| g.close_wait).sum();
    let fds: Option<i64> = if fds { growth.iter().map(|g| g.fds).sum() } else { None };
    let per = |v: i64| format!("{:+.2}", v as f64 / n);
    if w.bursts {
        let client: i64 = growth.iter().map(|g| g.client_close_wait).sum();
        let after: Vec<String> =
            w.waves.iter().map(|w| w.after.client_close_wait.to_string()).collect();
        return Some(format!(
            "{} CLOSE-WAIT in the client per request over {} bursts of {} (after each: {})",
            per(client),
            w.waves.len(),
            w.waves[0].connections,
            after.join(", ")
        ));
    }
    let what = match fds {
        Some(f) => format!("{} descriptor and {} CLOSE-WAIT", per(f), per(cw)),
        None => format!("{} CLOSE-WAIT", per(cw)),
    };
    let sizes: BTreeSet<u32> = w.waves.iter().map(|w| w.connections).collect();
    let waves = match (w.waves.len(), sizes.len()) {
        (1, _) => format!("1 wave of {}", w.waves[0].connections),
        (k, 1) => format!("{k} waves of {}", w.waves[0].connections),
        (k, _) => {
            let each: Vec<String> = w.waves.iter().map(|w| w.connections.to_string()).collect();
            format!("{k} waves ({} connections)", each.join(", "))
        }
    };
    Some(format!("{what} per connection over {waves}"))
}

/// How the report names the listening process: the lab's acceptor, or a user's server.
fn listener(r: &Report) -> String {
    match &r.scenario.command {
        None => "the acceptor".into(),
        Some(_) => format!("the listening process (pid {})", r.acceptor.pid),
    }
}

/// A finding with no fix, no evidence and no idiom yet.
fn finding(
    kind: FindingKind,
    title: String,
    sockets: u32,
    nums: &[(&str, i64)],
    explanation: String,
) -> Finding {
    Finding {
        kind,
        title,
        sockets,
        holders: Vec::new(),
        numbers: numbers(nums),
        explanation,
        fix: None,
        evidence: None,
        idiom: None,
    }
}

impl Finding {
    fn with_fix(self, shape: Shape, r: &Report) -> Finding {
        self.with_fix_for(shape, r.acceptor.runtime)
    }

    fn with_fix_for(mut self, shape: Shape, runtime: Option<Runtime>) -> Finding {
        let f = fix::for_shape(shape, runtime);
        (self.fix, self.idiom) = (Some(f.text), f.idiom);
        self
    }

    fn with_text_fix(mut self, text: &str) -> Finding {
        self.fix = Some(text.to_string());
        self
    }
}

/// accept() failing with EMFILE while the acceptor holds CLOSE-WAIT: the leak ran it out of
/// descriptors, and the connections after it were never accepted. True when it is so.
fn exhaustion(r: &Report, held: &[Held], out: &mut Vec<Finding>) -> bool {
    let kept = held_in(held, Side::Server, TcpState::CloseWait, Role::Acceptor);
    if r.server.accept_errno != Some(24) || kept == 0 {
        return false;
    }
    let queued = held_in(held, Side::Server, TcpState::CloseWait, Role::Nobody);
    let never = queued.max(r.client_outcome.unaccepted);
    let who = listener(r);
    let f = finding(
        FindingKind::FdExhaustion,
        format!("descriptors exhausted: {kept} CLOSE-WAIT held, {never} connections never accepted"),
        never,
        &[
            ("close_wait_held", i64::from(kept)),
            ("never_accepted", i64::from(never)),
            ("accepted", r.server.accepted as i64),
            ("accept_errors", r.server.accept_errors as i64),
        ],
        format!("the leak ran {who} out of descriptors: {kept} CLOSE-WAIT held, {never} connections never accepted (accept() failed with EMFILE {} times)", r.server.accept_errors),
    )
    .with_fix(Shape::ParentKeepsCopy, r);
    let fix = format!(
        "{}; a higher RLIMIT_NOFILE only delays the outage",
        f.fix.as_deref().unwrap_or_default()
    );
    out.push(Finding { fix: Some(fix), ..f });
    true
}

/// One finding per role that holds server CLOSE-WAIT sockets at the end. When the leak exhausted
/// the descriptors, the sockets nobody holds are its consequence, told by that finding.
fn close_wait(r: &Report, held: &[Held], exhausted: bool, out: &mut Vec<Finding>) {
    let total = r.final_counts.get(Side::Server, TcpState::CloseWait);
    for h in held.iter().filter(|h| h.side == Side::Server && h.state == TcpState::CloseWait) {
        if exhausted && h.role == Role::Nobody {
            continue;
        }
        let mut nums = vec![("close_wait", i64::from(total)), ("held", i64::from(h.sockets))];
        if let Some(g) = fds_grew(r) {
            nums.push(("acceptor_fds_grew", g));
        }
        let mut f = held_finding(r, h, &mut nums);
        f.numbers = numbers(&nums);
        f.holders = h.processes.clone();
        // The listening process's descriptors say something only when it holds the sockets.
        f.evidence = wave_evidence(r, h.role == Role::Acceptor);
        out.push(f);
    }
}

/// The finding for server CLOSE-WAIT held by one role.
fn held_finding(r: &Report, h: &Held, nums: &mut Vec<(&str, i64)>) -> Finding {
    let (n, who) = (h.sockets, listener(r));
    let user = r.scenario.command.is_some();
    let f = |kind, title: String, explanation: String| finding(kind, title, n, &[], explanation);
    match h.role {
        Role::Acceptor if r.acceptor.forked == Some(false) => f(
            FindingKind::NeverClosed,
            format!("never closed: {n} CLOSE-WAIT held by the listening process"),
            format!("{who} holds {n} connections the clients have closed, and it never forked (threads or an event loop): the server reads the EOF and never calls close()"),
        )
        .with_fix(Shape::NeverClosed, r),
        Role::Acceptor => f(
            FindingKind::ForkLeak,
            format!("fork leak: {n} CLOSE-WAIT held by {}", if user { "the listening process" } else { "the acceptor" }),
            format!("{who} holds {n} connections the clients have closed: the last reference never went, so no FIN was sent"),
        )
        .with_fix(Shape::ParentKeepsCopy, r),
        Role::Helper => f(
            FindingKind::ExecInherited,
            format!("inherited across exec: {n} CLOSE-WAIT held by helpers"),
            format!("{n} closed connections are held by helper processes that inherited them across exec: {who} is clean, the leak is in the children"),
        )
        .with_fix(Shape::ExecInherits, r),
        Role::Worker => f(
            FindingKind::WorkerInherited,
            format!("inherited by workers: {n} CLOSE-WAIT held by forked workers"),
            format!("{n} closed connections are held by workers forked while they were open: fork without exec copies every descriptor"),
        )
        .with_fix(Shape::WorkersInherit, r),
        Role::Handler => f(
            FindingKind::HandlerHolds,
            format!("handlers still open: {n} CLOSE-WAIT held by handlers"),
            if user {
                format!("{n} closed connections are held by the forks of the server that accepted and served them (a pool of workers): they read the EOF and never close")
            } else {
                format!("{n} closed connections are still held by the handlers that serve them: they have not closed yet")
            },
        )
        .with_fix(Shape::HandlerHolds, r),
        Role::Nobody => {
            nums.push(("accepted", r.server.accepted as i64));
            let accepted = match &r.scenario.command {
                None => format!("{} were accepted", r.server.accepted),
                Some(_) => "none was accepted".into(),
            };
            f(
                FindingKind::Backlog,
                format!("backlog look-alike: {n} CLOSE-WAIT held by nobody"),
                format!("{n} CLOSE-WAIT sockets are held by no process and {accepted}: they wait in the listen queue. A busy server, not a leak"),
            )
            .with_text_fix("none in the close path: the server is too busy to accept, not leaking")
        }
        Role::Client | Role::Other => f(
            FindingKind::HeldElsewhere,
            format!("{n} CLOSE-WAIT held by other processes"),
            format!("{n} server sockets wait in CLOSE-WAIT held by processes the run did not start: the peer closed, this side never sent its FIN"),
        )
        .with_text_fix("find who passed the descriptor on, and close it there"),
    }
}

/// What a bounded pool needs: nothing.
const BOUNDED_POOL_FIX: &str =
    "none needed: to shorten the wait, evict idle connections before the server's keep-alive timeout";

/// How a client's pool treats the connections the server closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolReading {
    /// No client-side CLOSE-WAIT stayed beyond a moment.
    Clean,
    /// It grows with the requests, or outlives `--stuck` without being closed or reused.
    Leak,
    /// It stays bounded and is cleared when the pool next takes its connections.
    Bounded,
}

/// The client side of a run. With bursts (a pool's, or the rounds of a user's client): one that
/// grew with every burst is a leak, one that did not a bounded pool. A user's client
/// (`cwlab check --client`) whose CLOSE-WAIT never lasted `--stuck` is clean; with a single
/// round, one that outlived it and was never closed is a leak. Without bursts, client-side
/// CLOSE-WAIT held at the end is taken for a leak.
pub fn pool_reading(r: &Report) -> PoolReading {
    let held = held_sockets(r.holders.iter().filter(|h| {
        h.side == Side::Client && h.state == TcpState::CloseWait && h.role != Role::Nobody
    }));
    let bursts: Vec<crate::report::Growth> =
        r.waves.as_ref().filter(|w| w.bursts).map(|w| w.growth()).unwrap_or_default();
    let grows = !bursts.is_empty()
        && bursts.iter().all(|g| grows_with(g.client_close_wait, g.connections))
        && (bursts.len() >= 2 || r.client.is_none());
    match &r.client {
        _ if held == 0 => PoolReading::Clean,
        None if grows || bursts.is_empty() => PoolReading::Leak,
        None => PoolReading::Bounded,
        Some(_) if grows => PoolReading::Leak,
        Some(c) if c.stuck == 0 => PoolReading::Clean,
        Some(c) if bursts.len() < 2 && c.cleared == 0 => PoolReading::Leak,
        Some(_) => PoolReading::Bounded,
    }
}

/// Client-side CLOSE-WAIT a pool leaked (the `client CLOSE-WAIT leaked` quantity): every socket
/// a process holds there when [`pool_reading`] says leak, else 0.
pub fn client_close_wait_leaked(r: &Report) -> i64 {
    match pool_reading(r) {
        PoolReading::Leak => i64::from(held_sockets(r.holders.iter().filter(|h| {
            h.side == Side::Client && h.state == TcpState::CloseWait && h.role != Role::Nobody
        }))),
        _ => 0,
    }
}

/// CLOSE-WAIT on the client's side held by a process: a pool that keeps connections the server
/// closed, read by [`pool_reading`].
fn client_close_wait(r: &Report, held: &[Held], out: &mut Vec<Finding>) {
    let groups = held.iter().filter(|h| {
        h.side == Side::Client && h.state == TcpState::CloseWait && h.role != Role::Nobody
    });
    let reading = pool_reading(r);
    if reading == PoolReading::Clean {
        return;
    }
    for h in groups {
        let n = h.sockets;
        let who = match h.processes.as_slice() {
            [p] => format!("pid {} `{}`", p.pid, p.name.as_deref().unwrap_or("?")),
            many => format!("{} processes", many.len()),
        };
        let oldest = match &r.client {
            Some(c) => format!(" (the oldest {:.1} s)", c.oldest_ms as f64 / 1000.0),
            None => String::new(),
        };
        let grows = reading == PoolReading::Leak;
        let cleared = match &r.client {
            Some(c) => u64::from(c.cleared),
            None => r.transitions.count(Side::Client, TcpState::CloseWait, TcpState::LastAck),
        };
        let nums = [("close_wait", i64::from(n)), ("cleared", cleared as i64)];
        let f = if grows {
            finding(
                FindingKind::PoolLeak,
                format!("pool leak: {n} CLOSE-WAIT held by the client"),
                n,
                &nums,
                format!("{who} holds {n} connections the server has closed{oldest}: its pool keeps them and never notices their FIN, so each stays half-closed for as long as the process lives"),
            )
            .with_fix_for(Shape::PoolIgnoresFin, r.client.as_ref().and_then(|c| c.runtime))
        } else {
            let peak = r.samples.iter().map(|s| s.get(Side::Client, TcpState::CloseWait)).max();
            let peak = peak.unwrap_or(n).max(r.client.as_ref().map_or(0, |c| c.peak));
            let noun = if peak == 1 { "connection" } else { "connections" };
            finding(
                FindingKind::PoolBounded,
                format!("bounded pool: at most {peak} CLOSE-WAIT, cleared at the next burst"),
                n,
                &nums,
                format!("up to {peak} {noun} the server closed waited in CLOSE-WAIT in {who}'s pool{oldest}, and {cleared} were closed by the client while it ran: a bounded pool that finds the FIN on its next use. Under control, not a leak"),
            )
            .with_text_fix(BOUNDED_POOL_FIX)
        };
        out.push(Finding { holders: h.processes.clone(), evidence: wave_evidence(r, true), ..f });
    }
}

/// The server went away before the run ended.
fn gone(r: &Report, out: &mut Vec<Finding>) {
    if !r.server.gone {
        return;
    }
    let how = r.server.exited.as_deref().unwrap_or("its processes are gone");
    out.push(finding(
        FindingKind::ServerGone,
        "the server went away during the run".into(),
        0,
        &[],
        format!("nothing of the server was left before the run ended ({how}): it crashed or quit, and what it held went with it"),
    ));
}

/// How long CLOSE-WAIT must last, at the median, to be a slow close rather than a server that
/// closes as it should (a busy handler takes a few milliseconds; a run's samples are 50 ms apart).
pub const SLOW_CLOSE_MS: f64 = 100.0;

/// CLOSE-WAIT that lasted (at least [`SLOW_CLOSE_MS`] at the median) and was gone by the end:
/// the server finished its work after the client's FIN, then closed.
fn slow(r: &Report, out: &mut Vec<Finding>) {
    if r.final_counts.get(Side::Server, TcpState::CloseWait) > 0 {
        return;
    }
    let Some(hold) = r.hold_from_ms() else { return };
    let seen: Vec<&crate::report::Sample> = r
        .samples
        .iter()
        .filter(|s| s.t_ms >= hold && s.get(Side::Server, TcpState::CloseWait) > 0)
        .collect();
    let Some(last) = seen.last() else { return };
    let peak = seen.iter().map(|s| s.get(Side::Server, TcpState::CloseWait)).max().unwrap_or(0);
    let stay = r
        .transitions
        .durations
        .iter()
        .find(|d| d.side == Side::Server && d.state == TcpState::CloseWait);
    let (how_long, mut nums) = match stay {
        Some(d) if d.median_ms < SLOW_CLOSE_MS => return,
        Some(d) => (
            format!(
                "each stayed {:.0} ms at the median, {:.0} ms at most (from the kernel's transitions)",
                d.median_ms, d.max_ms
            ),
            vec![("median_ms", d.median_ms.round() as i64), ("max_ms", d.max_ms.round() as i64)],
        ),
        None if r.transitions.available => return,
        None => {
            let ms = last.t_ms.saturating_sub(hold);
            if (ms as f64) < SLOW_CLOSE_MS {
                return;
            }
            (
                format!("the last was gone {ms} ms into the hold (from the samples)"),
                vec![("drained_ms", ms as i64)],
            )
        }
    };
    nums.push(("peak", i64::from(peak)));
    out.push(
        finding(
            FindingKind::SlowClose,
            format!("slow close: up to {peak} CLOSE-WAIT, all drained"),
            peak,
            &nums,
            format!("up to {peak} server sockets sat in CLOSE-WAIT after the clients closed and all were closed within the hold: {how_long}. The server finished its work, then closed"),
        )
        .with_text_fix("none: it is the server finishing its work, not a leak"),
    );
}

/// No CLOSE-WAIT, but the listening process's descriptors grew with the connections: the FIN
/// went out (or never mattered), something per connection did not go.
fn hidden(r: &Report, out: &mut Vec<Finding>) {
    if r.final_counts.get(Side::Server, TcpState::CloseWait) > 0 {
        return;
    }
    let Some(grew) = fds_leaked(r).filter(|g| *g > 0) else { return };
    let who = listener(r);
    let nums = [
        ("close_wait", 0),
        ("acceptor_fds_grew", grew),
        ("acceptor_fds_before", i64::from(r.acceptor.fds_baseline.unwrap_or(0))),
        ("acceptor_fds_after", i64::from(r.acceptor.fds_end.unwrap_or(0))),
    ];
    let f = if r.acceptor.forked == Some(false) {
        finding(
            FindingKind::HiddenLeak,
            format!("descriptor leak: no CLOSE-WAIT, {who} holds {grew} more fds"),
            0,
            &nums,
            format!("no socket waits in CLOSE-WAIT, but {who}, which never forked, gained {grew} descriptors with the connections: something it opens for each connection is never closed"),
        )
        .with_fix(Shape::DescriptorPerConnection, r)
    } else {
        finding(
            FindingKind::HiddenLeak,
            format!("symptom hidden: no CLOSE-WAIT, {who} holds {grew} more fds"),
            0,
            &nums,
            format!("the symptom is gone, the fd leak is not: {who} holds {grew} more descriptors than before the clients came"),
        )
        .with_fix(Shape::ParentKeepsCopyHidden, r)
    };
    out.push(Finding { evidence: wave_evidence(r, true), ..f });
}

fn accept_errors(r: &Report, out: &mut Vec<Finding>) {
    let s = &r.server;
    if s.accept_errors == 0 {
        return;
    }
    let why = match s.accept_errno {
        Some(24) => "EMFILE: the acceptor is out of descriptors".to_string(),
        Some(23) => "ENFILE: the system is out of descriptors".to_string(),
        Some(12) => "ENOMEM".to_string(),
        Some(105) => "ENOBUFS".to_string(),
        Some(n) => format!("errno {n}"),
        None => "an unknown error".to_string(),
    };
    let mut nums = vec![("accepted", s.accepted as i64), ("accept_errors", s.accept_errors as i64)];
    if let Some(e) = s.accept_errno {
        nums.push(("errno", i64::from(e)));
    }
    let mut f = finding(
        FindingKind::AcceptFailing,
        format!("accept() failing: {} calls failed", s.accept_errors),
        0,
        &nums,
        format!(
            "{} connections accepted, {} accept() calls failed ({why})",
            s.accepted, s.accept_errors
        ),
    );
    if s.accept_errno == Some(24) {
        f = f.with_text_fix(
            "stop the descriptor leak; a higher RLIMIT_NOFILE only delays the outage",
        );
    }
    out.push(f);
}

fn hung(r: &Report, out: &mut Vec<Finding>) {
    let hung = r.client_outcome.hung;
    if hung == 0 {
        return;
    }
    out.push(finding(
        FindingKind::HungClients,
        format!("clients hung: {hung} of {}", r.clients),
        hung,
        &[("hung", i64::from(hung)), ("clients", i64::from(r.clients))],
        format!(
            "{hung} of {} clients were served (the server accepted their connection) and waited for a reply or an EOF that never came by the end of the run",
            r.clients
        ),
    ));
}

fn clean(r: &Report) -> Finding {
    let explanation = match (r.acceptor.fds_baseline, &r.waves) {
        (_, Some(w)) if w.bursts => {
            "no socket waits in CLOSE-WAIT, in the server or in the client's pool".to_string()
        }
        (_, Some(w)) if !w.waves.is_empty() => format!(
            "no socket waits in CLOSE-WAIT and the descriptors of {} did not grow with the connections",
            listener(r)
        ),
        (Some(n), _) => format!(
            "no socket waits in CLOSE-WAIT and {} is back to its {n} descriptors",
            listener(r)
        ),
        (None, _) => "no socket waits in CLOSE-WAIT".to_string(),
    };
    let mut nums = vec![("close_wait", 0)];
    if let Some(g) = fds_grew(r) {
        nums.push(("acceptor_fds_grew", g));
    }
    Finding {
        evidence: wave_evidence(r, true),
        ..finding(
            FindingKind::Clean,
            "clean: no CLOSE-WAIT, no descriptor left".into(),
            0,
            &nums,
            explanation,
        )
    }
}

/// What helps reading the run without being a finding.
fn notes(r: &Report, findings: &[Finding]) -> Vec<String> {
    let mut notes = Vec::new();
    // A backlog, or the leak's exhaustion, is why connections queued: their findings say so.
    let explained = |k: &FindingKind| matches!(k, FindingKind::Backlog | FindingKind::FdExhaustion);
    // The lab's own servers are staged: their queues are the scenario's business.
    if r.scenario.command.is_some() && !findings.iter().any(|f| explained(&f.kind)) {
        queue_note(r, &mut notes);
    }
    let c = &r.client_outcome;
    if let Some(ms) = c.slowest_ms.filter(|ms| *ms >= 1000) {
        let late = match c.late {
            0 => String::new(),
            n => format!("; {n} came after the client had given up waiting"),
        };
        notes.push(format!("replies took up to {:.1} s{late}", ms as f64 / 1000.0));
    }
    if !findings.iter().any(|f| f.kind.is_leak()) {
        once_note(r, &mut notes);
    }
    notes
}

/// How long connections must have waited in the accept queue, in all, for a note.
pub const QUEUED_NOTE_MS: u64 = 500;

/// Clients that waited in the accept queue (for [`QUEUED_NOTE_MS`] or more in all): a server that
/// serves a few at a time, not a hang.
fn queue_note(r: &Report, notes: &mut Vec<String>) {
    let waited_ms: u64 = r
        .samples
        .windows(2)
        .filter(|w| w[0].queued > 0)
        .map(|w| w[1].t_ms.saturating_sub(w[0].t_ms))
        .sum();
    if waited_ms < QUEUED_NOTE_MS {
        return;
    }
    let peak = r.samples.iter().map(|s| s.queued).max().unwrap_or(0);
    // How many the server was serving while clients waited: the most frequent count then (a
    // dump is no snapshot, and may see one connection just before its worker closes it and the
    // worker's next one just after it was accepted).
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    for s in r.samples.iter().filter(|s| s.queued > 0) {
        *seen.entry(s.serving).or_insert(0) += 1;
    }
    let serving = seen.iter().max_by_key(|(n, times)| (**times, **n)).map_or(0, |(n, _)| *n);
    notes.push(format!(
        "clients waited in the accept queue (up to {peak} at once, for {:.1} s in all) while the server served {serving} at a time",
        waited_ms as f64 / 1000.0
    ));
}

/// Descriptors the listening process opened once, not per connection: at the warm-up, or in a
/// wave but not in every wave.
fn once_note(r: &Report, notes: &mut Vec<String>) {
    let Some(w) = &r.waves else { return };
    let who = listener(r);
    if let (Some(before), Some(after)) = (r.acceptor.fds_baseline, w.baseline.fds) {
        let k = i64::from(after) - i64::from(before);
        if k > 0 {
            notes.push(format!(
                "the warm-up's {} connections left {who} {k} more descriptor{} (opened once, not per connection: not counted)",
                w.warmup,
                if k == 1 { "" } else { "s" }
            ));
        }
    }
    let end = w.waves.last().and_then(|l| l.after.fds);
    if let (Some(before), Some(after)) = (w.baseline.fds, end) {
        let k = i64::from(after) - i64::from(before);
        if k > 0 {
            notes.push(format!(
                "{who} held {k} more descriptor{} after the waves than before them, but did not grow with every wave's connections: a one-time cost, not a leak",
                if k == 1 { "" } else { "s" }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;
    use crate::report::ServerOutcome;

    fn holder(inode: u64, pid: Option<u32>, fd: Option<i32>, role: Role) -> Holder {
        Holder {
            side: Side::Server,
            state: TcpState::CloseWait,
            local: "127.0.0.1:40000".into(),
            remote: format!("127.0.0.1:{}", 50000 + inode),
            inode,
            pid,
            fd,
            role,
            comm: pid.map(|_| "cwlab-acceptor".into()),
            cmdline: None,
        }
    }

    fn ended(close_wait: u32, fds: (u32, u32), holders: Vec<Holder>) -> Report {
        let mut r = report("t", 3);
        r.final_counts.server.insert(TcpState::CloseWait, close_wait);
        r.final_counts.server.retain(|_, n| *n > 0);
        r.acceptor.fds_baseline = Some(fds.0);
        r.acceptor.fds_end = Some(fds.1);
        r.holders = holders;
        r
    }

    #[test]
    fn a_socket_two_processes_hold_counts_once() {
        let rows = [
            holder(1, Some(10), Some(5), Role::Acceptor),
            holder(1, Some(11), Some(7), Role::Acceptor),
            holder(2, Some(10), Some(6), Role::Acceptor),
        ];
        assert_eq!(held_sockets(&rows), 2);
        let d = Diagnosis::of(&ended(2, (4, 6), rows.to_vec()));
        assert_eq!(d.held.len(), 1);
        assert_eq!(d.held_by(Side::Server, TcpState::CloseWait, Role::Acceptor), 2);
        let pids: Vec<(u32, Vec<i32>)> =
            d.held[0].processes.iter().map(|p| (p.pid, p.fds.clone())).collect();
        assert_eq!(pids, [(10, vec![5, 6]), (11, vec![7])]);
    }

    #[test]
    fn the_fork_leak_names_the_acceptor_and_the_fix() {
        let rows = (1..=3).map(|i| holder(i, Some(10), Some(3 + i as i32), Role::Acceptor));
        let d = Diagnosis::of(&ended(3, (4, 7), rows.collect()));
        let f = d.primary().unwrap();
        assert_eq!(f.kind, FindingKind::ForkLeak);
        assert_eq!(f.sockets, 3);
        assert_eq!(f.holders[0].fds, [4, 5, 6]);
        assert_eq!(f.numbers["acceptor_fds_grew"], 3);
        assert!(f.fix.as_deref().unwrap().starts_with("close the accepted socket in the parent"));
        assert!(d.leaks());
        assert_eq!(d.findings.len(), 1);
    }

    #[test]
    fn no_close_wait_with_growing_descriptors_is_a_hidden_leak() {
        let d = Diagnosis::of(&ended(0, (4, 104), Vec::new()));
        assert_eq!(d.findings.len(), 1);
        let f = &d.findings[0];
        assert_eq!(f.kind, FindingKind::HiddenLeak);
        assert_eq!(f.explanation, "the symptom is gone, the fd leak is not: the acceptor holds 100 more descriptors than before the clients came");
        assert!(d.leaks());
    }

    #[test]
    fn close_wait_nobody_holds_is_the_backlog_not_a_leak() {
        let rows = (1..=2).map(|i| holder(i, None, None, Role::Nobody)).collect();
        let d = Diagnosis::of(&ended(2, (4, 4), rows));
        assert_eq!(d.primary().unwrap().kind, FindingKind::Backlog);
        assert!(!d.leaks());
    }

    #[test]
    fn clean_hung_and_accept_errors() {
        let d = Diagnosis::of(&ended(0, (4, 4), Vec::new()));
        assert_eq!(d.findings.len(), 1);
        assert_eq!(d.findings[0].kind, FindingKind::Clean);
        assert_eq!(
            d.findings[0].explanation,
            "no socket waits in CLOSE-WAIT and the acceptor is back to its 4 descriptors"
        );
        let mut r = ended(0, (4, 4), Vec::new());
        r.client_outcome.hung = 2;
        r.server = ServerOutcome {
            accepted: 1,
            accept_errors: 5,
            accept_errno: Some(24),
            ..Default::default()
        };
        let kinds: Vec<FindingKind> = Diagnosis::of(&r).findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FindingKind::AcceptFailing, FindingKind::HungClients]);
    }
}
