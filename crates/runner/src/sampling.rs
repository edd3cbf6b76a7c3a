//! The sampler: every `sample_interval`, one kernel-filtered dump of the run's port and the
//! acceptor's descriptor count, classified per side and state into a [`Sample`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cwlab_model::report::{Phase, Sample};
use cwlab_model::TcpState;
use cwlab_sampler::{fds, Backend, PortSide, Query, SocketRecord, Table};
use tokio::sync::mpsc::UnboundedSender;

use crate::RunError;

/// One look at the run's sockets.
pub struct Probe {
    /// The calling thread's namespace; with two hosts, then the server's.
    tables: Vec<Table>,
    port: u16,
    acceptor: u32,
}

impl Probe {
    /// Opens the socket table of the calling thread's namespace and, with two hosts, that of the
    /// server's namespace (process `server_ns`'s): each side is then read on its own host.
    pub fn open(port: u16, acceptor: u32, server_ns: Option<u32>) -> Result<Probe, RunError> {
        let mut tables = vec![Table::open(Backend::SockDiag)?];
        if let Some(pid) = server_ns {
            let there = cwlab_sampler::netns::in_namespace_of(pid, || {
                Table::open(Backend::SockDiag).map_err(std::io::Error::other)
            });
            tables.push(there.map_err(crate::io("open the socket table of the server's host"))?);
        }
        Ok(Probe { tables, port, acceptor })
    }

    /// Samples the table; also returns the records, for the holders at the end.
    pub fn sample(
        &mut self,
        t_ms: u64,
        phase: Phase,
    ) -> Result<(Sample, Vec<SocketRecord>), RunError> {
        let mut sample = Sample {
            t_ms,
            phase,
            server: Default::default(),
            client: Default::default(),
            acceptor_fds: fds::count(self.acceptor).ok(),
            queued: 0,
            serving: 0,
        };
        let q = Query { port: Some(self.port), side: PortSide::Any, ..Query::default() };
        let mut records = Vec::new();
        let port = self.port;
        for table in &mut self.tables {
            table.for_each(&q, |r| {
                let server = r.local.port() == port;
                match r.state {
                    // A LISTEN socket's receive queue: connections the kernel accepted and the
                    // server has not yet.
                    TcpState::Listen if server => sample.queued += r.recv_q,
                    TcpState::Established if server && r.inode != 0 => sample.serving += 1,
                    _ => {}
                }
                let side = if server { &mut sample.server } else { &mut sample.client };
                *side.entry(r.state).or_insert(0) += 1;
                records.push(r.clone());
            })?;
        }
        Ok((sample, records))
    }
}

/// The phase the run is in, shared with the sampler thread.
#[derive(Clone, Default)]
pub struct PhaseCell(Arc<AtomicU8>);

impl PhaseCell {
    const ORDER: [Phase; 5] =
        [Phase::Listen, Phase::Connect, Phase::Close, Phase::Hold, Phase::End];

    /// Moves the run into a phase.
    pub fn set(&self, p: Phase) {
        let i = Self::ORDER.iter().position(|x| *x == p).unwrap_or(0);
        self.0.store(i as u8, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        Self::ORDER[self.0.load(Ordering::SeqCst) as usize]
    }
}

/// A thread sampling at a fixed interval until stopped.
pub struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RunError>>>,
}

impl Sampler {
    /// Starts sampling; each sample goes to `tx`. Ticks are kept on a fixed grid from `t0`.
    pub fn spawn(
        mut probe: Probe,
        interval: Duration,
        t0: Instant,
        phase: PhaseCell,
        tx: UnboundedSender<Sample>,
    ) -> Sampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let mut next = Instant::now();
            loop {
                let t_ms = t0.elapsed().as_millis() as u64;
                let (s, _) = probe.sample(t_ms, phase.get())?;
                if tx.send(s).is_err() {
                    return Ok(());
                }
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now;
                }
                match stopped.recv_timeout(next - now) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => return Ok(()),
                }
            }
        });
        Sampler { stop: Some(stop), handle: Some(handle) }
    }

    /// Stops the thread and returns its error, if it had one.
    pub fn stop(&mut self) -> Result<(), RunError> {
        self.stop.take();
        match self.handle.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(RunError::Environment("the sampler panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
