//! Who holds the stuck sockets, at each look: a cache that reads only what changed since the
//! last (see [`HolderCache`]), each port's and remote service's top holders from it, with their
//! descriptor counts, their limit, their runtime (what their executable is) and where they run
//! (their cgroup: the unit, container or pod), read when they are found.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cwlab_model::runtime::Runtime;
use cwlab_model::watch::Holding;
use cwlab_sampler::cgroup;
use cwlab_sampler::holders::{self, FastMap, InodeSet};

/// The stuck sockets of one group: a namespace's port's server CLOSE-WAIT, or its client
/// CLOSE-WAIT to one remote service: its namespace, a number that tells it from the
/// namespace's other groups, the sockets' inodes, and whether each holder's own inodes are
/// wanted (a client's: each process's pool is read on its own).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group<'a> {
    pub ns: u64,
    pub id: u64,
    pub inodes: &'a [u64],
    pub each: bool,
}

/// A holder of a group, and the group's inodes it holds (when the group wants them).
pub(crate) type Held = (Holding, Vec<u64>);

/// The processes holding the group's inodes, most first (each counted once per process, however
/// many descriptors it holds it by): the top `top` of a server's group, every one of a
/// client's.
fn top_holders(g: &Group, found: &holders::Holders, top: usize) -> Vec<Held> {
    let mut per_pid: FastMap<u32, (u32, Vec<u64>)> = FastMap::default();
    for inode in g.inodes.iter().filter(|i| **i != 0) {
        let hs = found.of(*inode);
        for (k, h) in hs.iter().enumerate() {
            if hs[..k].iter().all(|o| o.pid != h.pid) {
                let e = per_pid.entry(h.pid).or_default();
                e.0 += 1;
                if g.each {
                    e.1.push(*inode);
                }
            }
        }
    }
    let mut v: Vec<Held> = per_pid
        .into_iter()
        .filter_map(|(pid, (sockets, inodes))| {
            let p = found.processes.get(&pid)?;
            let h = Holding {
                pid,
                name: p.comm.clone(),
                sockets,
                open_fds: 0,
                max_fds: None,
                runtime: None,
                cgroup: cgroup::of(pid),
            };
            Some((h, inodes))
        })
        .collect();
    v.sort_by(|a, b| b.0.sockets.cmp(&a.0.sockets).then(a.0.pid.cmp(&b.0.pid)));
    // A client's group keeps every holder: each pool is read, the top ones shown.
    if !g.each {
        v.truncate(top);
    }
    v
}

/// Each group's shown holders' descriptor counts and limits, as they are now, and every
/// holder's runtime (a pool not shown may still be the finding, its fix in its idiom).
fn refresh_shown(answer: &mut [Vec<Held>], top: usize) {
    for (i, h) in answer.iter_mut().flat_map(|g| g.iter_mut().enumerate()) {
        if i < top {
            refresh(&mut h.0);
        } else if h.0.runtime.is_none() {
            h.0.runtime = runtime(h.0.pid);
        }
    }
}

/// A holder's descriptor count and limit, as they are now, and its runtime where not read yet.
fn refresh(h: &mut Holding) {
    h.open_fds = cwlab_sampler::fds::count(h.pid).unwrap_or(0);
    h.max_fds = max_fds(h.pid);
    if h.runtime.is_none() {
        h.runtime = runtime(h.pid);
    }
}

/// The runtime of process `pid`, from its executable and command line.
fn runtime(pid: u32) -> Option<Runtime> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    if exe.is_none() && cmdline.is_none() {
        return None;
    }
    let exe = exe.map(|p| p.display().to_string()).unwrap_or_default();
    let argv: Vec<String> = cmdline
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(Runtime::identify(&exe, &argv))
}

/// The soft RLIMIT_NOFILE of a process (`Max open files` in /proc/PID/limits).
fn max_fds(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// An order-free digest of each group's stuck inodes, with the group's namespace and number.
fn fingerprint(groups: &[Group]) -> u64 {
    // splitmix64's finalizer: every input bit moves every output bit.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut sum = groups.len() as u64;
    for Group { ns, id, inodes, .. } in groups {
        let key = mix(ns ^ mix(*id));
        sum = sum.wrapping_add(key.wrapping_mul(inodes.len() as u64 + 1));
        for i in *inodes {
            sum = sum.wrapping_add(mix(i ^ key));
        }
    }
    sum
}

/// How often the holders are found by a whole walk of /proc, whatever the cache says: every
/// 30 s, or, where a walk takes longer than 1.5 s (a million stuck sockets: 6 s here), every
/// 20 walks' time, so that the walks take at most a twentieth of the watch's time.
const REWALK: Duration = Duration::from_secs(30);
const REWALK_SHARE: u32 = 20;

/// Who held the stuck sockets at the last looks, so that a look reads only what
/// changed: the descriptors of the known holders that it has not seen before. A socket no known
/// holder accounts for (a new holder) brings a whole walk, and so does every [`REWALK`]; a
/// descriptor closed and reused for another socket between two walks is seen at the next.
#[derive(Default)]
pub(crate) struct HolderCache {
    /// pid → (its start time, its descriptor count, its descriptors that hold stuck sockets).
    procs: HashMap<u32, (u64, u32, FastMap<i32, u64>)>,
    info: HashMap<u32, holders::Process>,
    /// Sockets the last walk found no process holding.
    unheld: InodeSet,
    walked: Option<Instant>,
    /// How long the last whole walk took.
    walk_took: Duration,
    /// The last look's stuck sockets (a fingerprint of each group's) and its holders per group.
    last: Option<(u64, Vec<Vec<Held>>)>,
}

impl HolderCache {
    /// The top holders of each group's sockets. When the
    /// stuck sockets are the very ones of the last look and no known holder has changed (the
    /// same process, the same descriptor count), the last answer is the answer.
    pub fn top(&mut self, groups: &[Group], top: usize) -> Vec<Vec<Held>> {
        let print = fingerprint(groups);
        let fresh = self.fresh();
        if let Some((last, answer)) = &self.last {
            if *last == print && fresh && self.unchanged() {
                let mut answer = answer.clone();
                refresh_shown(&mut answer, top);
                return answer;
            }
        }
        let inodes: InodeSet =
            groups.iter().flat_map(|g| g.inodes.iter()).filter(|i| **i != 0).copied().collect();
        let found = self.holders(&inodes);
        let mut answer: Vec<Vec<Held>> =
            groups.iter().map(|g| top_holders(g, &found, top)).collect();
        refresh_shown(&mut answer, top);
        self.last = Some((print, answer.clone()));
        answer
    }

    /// Whether every known holder is the same process with as many descriptors as at the last
    /// look.
    fn unchanged(&self) -> bool {
        self.procs.iter().all(|(pid, (start, count, _))| {
            holders::start_time(*pid) == Some(*start)
                && cwlab_sampler::fds::count(*pid).ok() == Some(*count)
        })
    }

    fn holders(&mut self, inodes: &InodeSet) -> holders::Holders {
        if self.fresh() {
            if let Some(h) = self.of_known(inodes) {
                return h;
            }
        }
        self.walk(inodes)
    }

    /// Whether the last whole walk is recent enough to trust the cache (see [`REWALK`]).
    fn fresh(&self) -> bool {
        let every = REWALK.max(self.walk_took * REWALK_SHARE);
        self.walked.is_some_and(|t| t.elapsed() < every)
    }

    fn walk(&mut self, inodes: &InodeSet) -> holders::Holders {
        let started = Instant::now();
        let found = holders::find(inodes);
        self.procs.clear();
        for (inode, hs) in &found.by_inode {
            for h in hs {
                let e = self.procs.entry(h.pid).or_insert_with(|| {
                    let count = cwlab_sampler::fds::count(h.pid).unwrap_or(0);
                    (holders::start_time(h.pid).unwrap_or(0), count, FastMap::default())
                });
                e.2.insert(h.fd, *inode);
            }
        }
        self.info = found.processes.clone();
        self.unheld = inodes.iter().filter(|i| !found.by_inode.contains_key(i)).copied().collect();
        self.walked = Some(Instant::now());
        self.walk_took = started.elapsed();
        found
    }

    /// The holders from the known holders alone; `None` when some socket is not accounted for.
    fn of_known(&mut self, inodes: &InodeSet) -> Option<holders::Holders> {
        let mut h = holders::Holders::default();
        let mut gone = Vec::new();
        for (pid, (start, count, fds)) in &mut self.procs {
            if holders::start_time(*pid) != Some(*start) {
                gone.push(*pid);
                continue;
            }
            // The same number of descriptors and every one known still stuck: nothing to read
            // (a descriptor closed and another opened in its place is seen at the next walk).
            let now_count = cwlab_sampler::fds::count(*pid).unwrap_or(u32::MAX);
            let unchanged = now_count == *count && fds.values().all(|i| inodes.contains(i));
            if !unchanged {
                let known = |fd: i32| fds.get(&fd).copied().filter(|i| inodes.contains(i));
                let Some(now) = holders::sockets_of(*pid, known) else {
                    gone.push(*pid);
                    continue;
                };
                fds.clear();
                fds.extend(now.into_iter().filter(|(_, i)| inodes.contains(i)));
                *count = now_count;
            }
            for (&fd, &inode) in fds.iter() {
                h.by_inode.entry(inode).or_default().push(holders::Holding { pid: *pid, fd });
            }
            if let Some(p) = self.info.get(pid) {
                h.processes.insert(*pid, p.clone());
            }
        }
        for pid in gone {
            self.procs.remove(&pid);
            self.info.remove(&pid);
        }
        let accounted =
            inodes.iter().all(|i| h.by_inode.contains_key(i) || self.unheld.contains(i));
        if !accounted {
            return None;
        }
        for v in h.by_inode.values_mut() {
            v.sort();
        }
        Some(h)
    }
}
