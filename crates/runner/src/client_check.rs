//! `cwlab check --client`: a client of the user's own, watched while it runs against the lab's
//! keep-alive server. Each client-side CLOSE-WAIT socket is followed from look to look (when it
//! came, when it went, whether the client closed it while it ran), who holds them is asked
//! whenever they change, and the server's answers, grouped into rounds of requests, tell whether
//! they grow with the requests.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cwlab_model::report::{ClientRun, Holder, Measure, Role, Side, Wave, Waves};
use cwlab_model::runtime::Runtime;
use cwlab_model::TcpState;
use cwlab_sampler::{holders, SocketRecord};

/// One client-side CLOSE-WAIT socket, by the client's port.
#[derive(Debug, Clone, Copy)]
struct Track {
    first_ms: u64,
    last_ms: u64,
    /// When it was first seen gone, while the client was alive.
    gone_ms: Option<u64>,
}

/// Every client-side CLOSE-WAIT socket seen, and the count at each look.
#[derive(Debug, Default)]
pub struct Tracker {
    socks: HashMap<u16, Track>,
    /// (ms since LISTEN, client-side CLOSE-WAIT) at each look while the client was alive.
    looks: Vec<(u64, u32)>,
    /// The CLOSE-WAIT sockets of the last look, by inode.
    now: HashSet<u64>,
    /// The holders asked for when the most sockets were held.
    best: Vec<Holder>,
    best_held: u32,
    last_survey: Option<Instant>,
}

impl Tracker {
    /// Takes in one look at the port's sockets, `t_ms` after LISTEN, while the client is alive;
    /// asks who holds the CLOSE-WAIT sockets when they changed (at most every 200 ms).
    pub fn look(&mut self, records: &[SocketRecord], port: u16, t_ms: u64, client_root: u32) {
        let cw: Vec<&SocketRecord> = records
            .iter()
            .filter(|r| r.remote.port() == port && r.state == TcpState::CloseWait)
            .collect();
        let ports: HashSet<u16> = cw.iter().map(|r| r.local.port()).collect();
        for p in &ports {
            let t = self.socks.entry(*p).or_insert(Track {
                first_ms: t_ms,
                last_ms: t_ms,
                gone_ms: None,
            });
            t.last_ms = t_ms;
            t.gone_ms = None;
        }
        for (p, t) in self.socks.iter_mut() {
            if !ports.contains(p) && t.gone_ms.is_none() {
                t.gone_ms = Some(t_ms);
            }
        }
        self.looks.push((t_ms, cw.len() as u32));
        let inodes: HashSet<u64> = cw.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
        let due = self.last_survey.is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
        let more = inodes.len() as u32 > self.best_held;
        if inodes != self.now && (due || more) && !inodes.is_empty() {
            self.last_survey = Some(Instant::now());
            let rows = holders_of(&cw, client_root);
            let held =
                cwlab_model::diagnosis::held_sockets(rows.iter().filter(|h| h.pid.is_some()));
            if held >= self.best_held {
                (self.best, self.best_held) = (rows, held);
            }
        }
        self.now = inodes;
    }

    /// The holders at the most held, for the report.
    pub fn holders(&mut self) -> Vec<Holder> {
        std::mem::take(&mut self.best)
    }

    /// What the client did with its CLOSE-WAIT sockets, `ended_ms` the moment it ended: those
    /// that went before it (less a look's grace: its exit closes the rest) it closed itself.
    pub fn run(&self, ended_ms: u64, interval: u64, stuck: Duration) -> ClientRun {
        let stuck_ms = stuck.as_millis() as u64;
        let closed_by_it = |t: &Track| t.gone_ms.is_some_and(|g| g + interval < ended_ms);
        let lasted = |t: &Track| t.gone_ms.unwrap_or(t.last_ms).saturating_sub(t.first_ms);
        ClientRun {
            peak: self.looks.iter().map(|(_, n)| *n).max().unwrap_or(0),
            stuck: self.socks.values().filter(|t| lasted(t) >= stuck_ms).count() as u32,
            cleared: self.socks.values().filter(|t| closed_by_it(t)).count() as u32,
            oldest_ms: self.socks.values().map(lasted).max().unwrap_or(0),
            stuck_ms,
            ..ClientRun::default()
        }
    }

    /// The client's requests in rounds (a pause of `idle` or more, the server's keep-alive
    /// timeout, ends one), each with the most client-side CLOSE-WAIT seen after its last request
    /// and before the next round (a look's time before it: the pool closes what it finds dead
    /// just before its first request is answered), the last one to the client's end.
    pub fn rounds(&self, served_ms: &[u64], idle: Duration, interval: u64) -> Waves {
        let idle = idle.as_millis() as u64;
        // (first request, last request, requests)
        let mut rounds: Vec<(u64, u64, u32)> = Vec::new();
        for &t in served_ms {
            match rounds.last_mut() {
                Some(r) if t - r.1 < idle => (r.1, r.2) = (t, r.2 + 1),
                _ => rounds.push((t, t, 1)),
            }
        }
        let waves = (0..rounds.len())
            .map(|i| {
                let (from, last, n) = rounds[i];
                let until = rounds.get(i + 1).map_or(u64::MAX, |r| r.0.saturating_sub(interval));
                let gap = self.looks.iter().filter(|(at, _)| *at > last && *at <= until);
                let (t_ms, cw) = gap.max_by_key(|(at, n)| (*n, *at)).copied().unwrap_or((last, 0));
                let after = Measure { t_ms, client_close_wait: cw, ..Measure::default() };
                Wave { connections: n, from_ms: from, after }
            })
            .collect();
        Waves { bursts: true, warmup: 0, baseline: Measure::default(), waves }
    }
}

/// Who holds each of these client-side sockets: rows as the report keeps them, the client's
/// processes (those under `client_root`) in the role `client`.
fn holders_of(cw: &[&SocketRecord], client_root: u32) -> Vec<Holder> {
    let inodes: HashSet<u64> = cw.iter().map(|r| r.inode).filter(|i| *i != 0).collect();
    let found = holders::find(&inodes);
    let mut rows = Vec::new();
    for r in cw {
        let held = found.of(r.inode);
        let row = |pid: Option<u32>, fd: Option<i32>| {
            let p = pid.and_then(|p| found.processes.get(&p));
            Holder {
                side: Side::Client,
                state: r.state,
                local: r.local.to_string(),
                remote: r.remote.to_string(),
                inode: r.inode,
                pid,
                fd,
                role: match pid {
                    None => Role::Nobody,
                    Some(p) if found.descends(p, client_root) => Role::Client,
                    Some(_) => Role::Other,
                },
                comm: p.map(|p| p.comm.clone()),
                cmdline: p.map(|p| p.cmdline.replace('\0', " ").trim().to_string()),
            }
        };
        // One no process holds was closed between the look and the walk: the client closed it.
        rows.extend(held.iter().map(|h| row(Some(h.pid), Some(h.fd))));
    }
    rows.sort_by_key(|h| (h.pid, h.fd));
    rows
}

/// The client command's first process: the oldest process under `root` that is not the lab's
/// own (`cwlab contain`'s supervisor and init).
pub fn first_process(root: u32) -> Option<u32> {
    let mut parent_of = HashMap::new();
    let mut name_of = HashMap::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parent_of.insert(pid, ppid);
            name_of.insert(pid, comm);
        }
    }
    let under = |mut pid: u32| {
        for _ in 0..64 {
            match parent_of.get(&pid) {
                Some(&p) if p == root => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let lab = |pid: &u32| name_of.get(pid).is_some_and(|n| n == "cwlab-init" || n == "cwlab");
    parent_of.keys().copied().filter(|p| under(*p) && !lab(p)).min()
}

/// Whether a process still runs (it exists and is not a zombie: its descriptors are still its).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The runtime of the client: the executable of a process holding its sockets, else its
/// command's first word.
pub fn runtime(rows: &[Holder], argv: &[String]) -> Runtime {
    let exe = rows
        .iter()
        .find(|h| h.role == Role::Client)
        .and_then(|h| h.pid)
        .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Runtime::identify(&exe, argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_rounds_at_pauses_of_the_keep_alive_timeout() {
        let looks = vec![(0, 0), (150, 0), (400, 10), (600, 10), (900, 20), (1300, 20), (1400, 0)];
        let t = Tracker { looks, ..Tracker::default() };
        let w = t.rounds(&[100, 110, 120, 700, 705, 710, 720], Duration::from_millis(200), 50);
        let rounds: Vec<(u32, u32)> =
            w.waves.iter().map(|w| (w.connections, w.after.client_close_wait)).collect();
        assert_eq!(rounds, [(3, 10), (4, 20)]);
        assert!(w.bursts);
    }

    #[test]
    fn a_socket_the_client_closed_while_it_ran_is_cleared_one_its_exit_closed_is_not() {
        let mut t = Tracker::default();
        t.socks.insert(1, Track { first_ms: 0, last_ms: 1500, gone_ms: Some(1550) });
        t.socks.insert(2, Track { first_ms: 100, last_ms: 2950, gone_ms: Some(3000) });
        t.looks = vec![(0, 1), (3000, 0)];
        let r = t.run(3000, 50, Duration::from_secs(1));
        assert_eq!((r.stuck, r.cleared, r.oldest_ms, r.peak), (2, 1, 2900, 1));
    }
}
