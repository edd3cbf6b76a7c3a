//! What the watch remembers of each service from look to look: its CLOSE-WAIT over the last
//! minute (how fast it grows), since when it has been watched, and, on the client side, for
//! each process holding connections to a remote service (each pool is its own), how many of
//! its CLOSE-WAIT sockets it closed while watched and the most it held before it did (the bound
//! its pool keeps to): the numbers the model's reading needs that one look cannot have.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cwlab_sampler::holders;

/// How far back the growth of CLOSE-WAIT is measured.
const WINDOW: Duration = Duration::from_secs(60);

/// How long a remote service with no CLOSE-WAIT is remembered: a pool that closed all it held
/// keeps what it showed (its closings, its bound) for when its CLOSE-WAIT comes back.
const KEEP: Duration = Duration::from_secs(600);

/// Remote services remembered at most, per watcher: beyond it the longest unseen go first.
const MOST: usize = 4096;

/// One side of one service in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// The server side of a port.
    Server(u16),
    /// The client side of a remote service, all its holders together.
    Client(SocketAddr),
    /// One process's connections to a remote service: its pool.
    Pool(SocketAddr, u32),
}

impl Key {
    /// A number that tells it from the namespace's other keys (for the holder cache).
    pub fn id(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = holders::FastHasher::default();
        self.hash(&mut h);
        h.finish()
    }
}

/// What the history adds to one look at a service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Reading {
    /// Growth over the last minute watched, per minute (none on the first look).
    pub per_min: Option<f64>,
    /// How long the service has been watched with CLOSE-WAIT, in seconds.
    pub watched_s: f64,
    /// CLOSE-WAIT sockets their holders closed while watched.
    pub cleared: u32,
    /// The most there were at once up to the last look that saw some closed.
    pub bound: Option<u32>,
}

#[derive(Debug)]
struct Seen {
    /// CLOSE-WAIT at each look of the last minute.
    counts: VecDeque<(Instant, u32)>,
    /// The first look that saw CLOSE-WAIT, since it was last without.
    since: Option<Instant>,
    /// The last look that saw the service.
    last_seen: Instant,
    /// The last look's CLOSE-WAIT inodes, sorted, and its holders with their start times.
    inodes: Vec<u64>,
    holders: Vec<(u32, Option<u64>)>,
    cleared: u32,
    peak: u32,
    bound: Option<u32>,
    generation: u64,
}

/// Every service's history, by namespace and [`Key`].
#[derive(Debug, Default)]
pub(crate) struct History {
    seen: HashMap<(u64, Key), Seen>,
    generation: u64,
    /// What every process's pool of a remote service closed while watched, by namespace and
    /// remote: summed when a look begins, added to as its pools are read.
    cleared: HashMap<(u64, SocketAddr), u32>,
    /// The namespaces this look could not read: what it did not see there, it knows nothing of.
    failed: HashSet<u64>,
}

impl History {
    /// Starts a look.
    pub fn begin(&mut self) {
        self.generation += 1;
        self.failed.clear();
        self.cleared.clear();
        for ((ns, key), s) in &self.seen {
            if let Key::Pool(remote, _) = key {
                *self.cleared.entry((*ns, *remote)).or_default() += s.cleared;
            }
        }
    }

    /// This look could not read namespace `ns`.
    pub fn failed(&mut self, ns: u64) {
        self.failed.insert(ns);
    }

    /// The server side of `port` in namespace `ns` has `close_wait` sockets now.
    pub fn server(&mut self, ns: u64, port: u16, close_wait: u32, now: Instant) -> Reading {
        let s = self.entry(ns, Key::Server(port), now);
        s.count(close_wait, now)
    }

    /// The client side of `remote` in namespace `ns`, all holders together, has these
    /// CLOSE-WAIT sockets now (sorted inodes). Where no holder can be named, its closings are
    /// the sockets that went (whoever closed them: the watch cannot tell one pool from another).
    pub fn client(&mut self, ns: u64, remote: SocketAddr, inodes: &[u64], now: Instant) -> Reading {
        let s = self.entry(ns, Key::Client(remote), now);
        s.closed(inodes);
        s.inodes = inodes.to_vec();
        s.count(inodes.len() as u32, now)
    }

    /// Process `pid` holds these CLOSE-WAIT sockets to `remote` in namespace `ns` now (sorted
    /// inodes): its pool's reading.
    pub fn pool(
        &mut self,
        ns: u64,
        remote: SocketAddr,
        pid: u32,
        inodes: Vec<u64>,
        now: Instant,
    ) -> Reading {
        let s = self.entry(ns, Key::Pool(remote, pid), now);
        if s.holders.is_empty() {
            s.holders = vec![(pid, holders::start_time(pid))];
        }
        let closed = s.closed(&inodes);
        s.inodes = inodes;
        let n = s.inodes.len() as u32;
        let reading = s.count(n, now);
        *self.cleared.entry((ns, remote)).or_default() += closed;
        reading
    }

    /// What every process's pool of `remote` in namespace `ns` closed while watched.
    pub fn cleared(&self, ns: u64, remote: SocketAddr) -> u32 {
        self.cleared.get(&(ns, remote)).copied().unwrap_or(0)
    }

    /// Ends a look. A pool it did not see (its holder not found this time, or its remote
    /// without CLOSE-WAIT now) closed those of its sockets its remote no longer has; a remote
    /// it did not see has none now. In a namespace the look could not read nothing changes.
    /// The server sides it did not see, and client sides unseen for [`KEEP`], are forgotten.
    pub fn end(&mut self, now: Instant) {
        let generation = self.generation;
        // What each pool not seen still holds: those of its sockets its remote still has.
        let unseen = |ns: &u64, s: &Seen| s.generation != generation && !self.failed.contains(ns);
        let still: Vec<((u64, Key), Vec<u64>)> = self
            .seen
            .iter()
            .filter(|((ns, key), s)| unseen(ns, s) && !matches!(key, Key::Server(_)))
            .map(|(&(ns, key), s)| {
                let there = match key {
                    Key::Pool(remote, _) => self
                        .seen
                        .get(&(ns, Key::Client(remote)))
                        .filter(|c| c.generation == generation)
                        .map_or(&[][..], |c| &c.inodes[..]),
                    _ => &[][..],
                };
                let held = s.inodes.iter().filter(|i| there.binary_search(i).is_ok());
                ((ns, key), held.copied().collect())
            })
            .collect();
        for (k, held) in still {
            let s = self.seen.get_mut(&k).expect("a key just read");
            s.closed(&held);
            s.count(held.len() as u32, now);
            s.inodes = held;
        }
        self.seen.retain(|(_, key), s| match key {
            Key::Server(_) => s.generation == generation,
            Key::Client(_) | Key::Pool(..) => now.duration_since(s.last_seen) < KEEP,
        });
        if self.seen.len() > MOST {
            let mut by_age: Vec<(Instant, (u64, Key))> =
                self.seen.iter().map(|(k, s)| (s.last_seen, *k)).collect();
            by_age.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
            for (_, k) in by_age.drain(MOST..) {
                self.seen.remove(&k);
            }
        }
    }

    fn entry(&mut self, ns: u64, key: Key, now: Instant) -> &mut Seen {
        let s = self.seen.entry((ns, key)).or_insert_with(|| Seen {
            counts: VecDeque::new(),
            since: None,
            last_seen: now,
            inodes: Vec::new(),
            holders: Vec::new(),
            cleared: 0,
            peak: 0,
            bound: None,
            generation: 0,
        });
        s.last_seen = now;
        s.generation = self.generation;
        s
    }
}

impl Seen {
    /// Takes in this look's count; the reading, with the growth over the last minute (or as
    /// much of it as was watched).
    fn count(&mut self, n: u32, now: Instant) -> Reading {
        while self.counts.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
            self.counts.pop_front();
        }
        let per_min = self.counts.front().and_then(|(then, before)| {
            let mins = now.duration_since(*then).as_secs_f64() / 60.0;
            (mins > 0.0).then(|| (f64::from(n) - f64::from(*before)) / mins)
        });
        self.counts.push_back((now, n));
        self.since = if n == 0 { None } else { Some(self.since.unwrap_or(now)) };
        let watched_s = self.since.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        let reading = Reading { per_min, watched_s, cleared: self.cleared, bound: self.bound };
        self.peak = self.peak.max(n);
        reading
    }

    /// The last look's sockets that are not among `now` were closed by their holder, when it is
    /// still the same process (one that exited took its sockets with it: nothing is counted
    /// then); where no holder is known (a remote's sockets all together), by whoever held them.
    /// How many it counts.
    fn closed(&mut self, now: &[u64]) -> u32 {
        let gone = self.inodes.iter().filter(|i| now.binary_search(i).is_err()).count() as u32;
        if gone == 0 {
            return 0;
        }
        let alive = self
            .holders
            .iter()
            .all(|(pid, start)| start.is_some() && holders::start_time(*pid) == *start);
        if !alive {
            return 0;
        }
        self.cleared += gone;
        self.bound = Some(self.bound.unwrap_or(0).max(self.peak));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_19_a_pool_that_closes_what_it_held_is_seen_closing_and_keeps_its_bound() {
        let mut h = History::default();
        let remote: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let look = |h: &mut History, inodes: Vec<u64>, t| {
            h.begin();
            let r = h.pool(1, remote, std::process::id(), inodes, t);
            h.end(t);
            r
        };
        let r = look(&mut h, vec![1, 2, 3], at(0));
        assert_eq!((r.per_min, r.watched_s, r.cleared, r.bound), (None, 0.0, 0, None));
        let r = look(&mut h, vec![1, 2, 3], at(30));
        assert_eq!((r.per_min, r.watched_s, r.cleared), (Some(0.0), 30.0, 0));
        // The pool's next use: it closes all three; the remote has no CLOSE-WAIT at this look.
        h.begin();
        h.end(at(40));
        let r = look(&mut h, vec![4, 5], at(50));
        assert_eq!((r.cleared, r.bound, r.watched_s), (3, Some(3), 0.0));
        // A holder that is gone closed nothing: what went, went with it.
        let mut gone = History::default();
        gone.begin();
        let dead = u32::MAX - 1;
        gone.pool(1, remote, dead, vec![7, 8], at(0));
        gone.end(at(0));
        gone.begin();
        let r = gone.pool(1, remote, dead, vec![8], at(1));
        assert_eq!(r.cleared, 0);
    }

    #[test]
    fn issue_19_a_pool_missing_from_one_look_closed_only_what_its_remote_no_longer_has() {
        let remote: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let me = std::process::id();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = History::default();
        h.begin();
        h.client(1, remote, &[1, 2, 3], at(0));
        h.pool(1, remote, me, vec![1, 2, 3], at(0));
        h.end(at(0));
        // Its holder was not found this look (or not among those read): its sockets are all
        // still there, so it closed none.
        h.begin();
        h.client(1, remote, &[1, 2, 3], at(1));
        h.end(at(1));
        h.begin();
        let r = h.pool(1, remote, me, vec![1, 2, 3], at(2));
        h.client(1, remote, &[1, 2, 3], at(2));
        h.end(at(2));
        assert_eq!((r.cleared, r.bound), (0, None));
        // A look that could not read the namespace knows nothing of it: nothing closed.
        h.begin();
        h.failed(1);
        h.end(at(3));
        h.begin();
        let r = h.pool(1, remote, me, vec![1, 2, 3], at(4));
        h.end(at(4));
        assert_eq!((r.cleared, r.bound), (0, None));
        // Its remote lost one of them while it went unseen: that one it closed.
        h.begin();
        h.client(1, remote, &[2, 3], at(5));
        h.end(at(5));
        assert_eq!(h.cleared(1, remote), 0, "summed when a look begins");
        h.begin();
        assert_eq!(h.cleared(1, remote), 1);
        let r = h.pool(1, remote, me, vec![2, 3], at(6));
        assert_eq!((r.cleared, r.bound), (1, Some(3)));
    }

    #[test]
    fn issue_19_with_no_holder_named_a_remote_s_closings_are_its_sockets_that_went() {
        let remote: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let t0 = Instant::now();
        let mut h = History::default();
        for (s, inodes) in [(0, vec![1, 2, 3]), (1, vec![4]), (2, vec![4, 5])] {
            h.begin();
            let r = h.client(1, remote, &inodes, t0 + Duration::from_secs(s));
            h.end(t0 + Duration::from_secs(s));
            match s {
                0 => assert_eq!((r.cleared, r.bound), (0, None)),
                _ => assert_eq!((r.cleared, r.bound), (3, Some(3))),
            }
        }
    }

    #[test]
    fn issue_19_growth_is_per_minute_over_the_last_minute_watched() {
        let mut h = History::default();
        let t0 = Instant::now();
        for (s, n) in [(0, 10), (30, 20), (60, 40), (90, 40)] {
            h.begin();
            let r = h.server(1, 8080, n, t0 + Duration::from_secs(s));
            h.end(t0 + Duration::from_secs(s));
            match s {
                0 => assert_eq!(r.per_min, None),
                30 => assert_eq!(r.per_min, Some(20.0)),
                60 => assert_eq!(r.per_min, Some(30.0)),
                _ => assert_eq!(r.per_min, Some(20.0)),
            }
        }
    }
}
