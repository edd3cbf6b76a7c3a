//! `cwlab watch`: the close sequence of a live host, read-only. A [`Watcher`] looks at the
//! socket tables of one or more network namespaces and makes a
//! [`Snapshot`](cwlab_model::watch::Snapshot): per service port, the sockets per state on each
//! side, how long the oldest CLOSE-WAIT has waited, how fast CLOSE-WAIT grows, and who holds it,
//! on the server side and, per remote service, on the client side, each read by the model's
//! diagnosis ([`cwlab_model::diagnosis::of_watch`]).
//! [`metrics`] turns a snapshot into Prometheus metrics and [`http`] serves them, built at scrape
//! time, over TLS and behind basic auth when a [`webconfig`] (exporter-toolkit's
//! `--web.config.file`) asks; Prometheus does the rest (storage, many hosts, alerts).
#![warn(missing_docs)]

pub mod auth;
mod history;
mod holders;
pub mod http;
pub mod metrics;
mod tally;
mod targets;
mod tls;
mod watcher;
pub mod webconfig;

pub use targets::Namespaces;
pub use watcher::{Watcher, STUCK};

/// What stops a watch before it starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A namespace named on the command line could not be entered.
    #[error("cannot watch the network namespace {what}: {source}")]
    Namespace {
        /// The path or pid given.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket table could not be read.
    #[error(transparent)]
    Sampler(#[from] cwlab_sampler::Error),
}
