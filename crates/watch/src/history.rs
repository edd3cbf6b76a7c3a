//! What the watch remembers of each service from look to look: its CLOSE-WAIT over the last
//! minute (how fast it grows), since when it has been watched, and, on the client side, for
//! each process holding connections to a remote service (each pool is its own), how many of
//! its CLOSE-WAIT sockets it closed while watched and the most it held before it did (the bound
//! its pool keeps to): the numbers the model's reading needs that one look cannot have.

use std::collections::{HashMap, VecDeque};
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
}

impl History {
    /// Starts a look.
    pub fn begin(&mut self) {
        self.generation += 1;
    }

    /// The server side of `port` in namespace `ns` has `close_wait` sockets now.
    pub fn server(&mut self, ns: u64, port: u16, close_wait: u32, now: Instant) -> Reading {
        let s = self.entry(ns, Key::Server(port), now);
        s.count(close_wait, now)
    }

    /// The client side of `remote` in namespace `ns`, all holders together, has `close_wait`
    /// sockets now.
    pub fn client(
        &mut self,
        ns: u64,
        remote: SocketAddr,
        close_wait: u32,
        now: Instant,
    ) -> Reading {
        self.entry(ns, Key::Client(remote), now).count(close_wait, now)
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
        s.closed(&inodes);
        s.inodes = inodes;
        if s.holders.is_empty() {
            s.holders = vec![(pid, holders::start_time(pid))];
        }
        let n = s.inodes.len() as u32;
        s.count(n, now)
    }

    /// What every process's pool of `remote` in namespace `ns` closed while watched.
    pub fn cleared(&self, ns: u64, remote: SocketAddr) -> u32 {
        let of = |k: &(u64, Key)| k.0 == ns && matches!(k.1, Key::Pool(r, _) if r == remote);
        self.seen.iter().filter(|(k, _)| of(k)).map(|(_, s)| s.cleared).sum()
    }

    /// Ends a look: the pools it did not see hold no CLOSE-WAIT now (what they closed counts);
    /// the server sides it did not see, and client sides unseen for [`KEEP`], are forgotten.
    pub fn end(&mut self, now: Instant) {
        let generation = self.generation;
        for ((_, key), s) in self.seen.iter_mut() {
            if s.generation != generation && !matches!(key, Key::Server(_)) {
                s.closed(&[]);
                s.inodes.clear();
                s.since = None;
            }
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
    /// then).
    fn closed(&mut self, now: &[u64]) {
        let gone = self.inodes.iter().filter(|i| now.binary_search(i).is_err()).count() as u32;
        if gone == 0 {
            return;
        }
        let alive = self
            .holders
            .iter()
            .all(|(pid, start)| start.is_some() && holders::start_time(*pid) == *start);
        if alive && !self.holders.is_empty() {
            self.cleared += gone;
            self.bound = Some(self.bound.unwrap_or(0).max(self.peak));
        }
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
