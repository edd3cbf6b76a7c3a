//! The two-hosts topology: the server in a network namespace of its own (`cwlab serve
//! --net-namespace`), joined to the runner's by a veth pair, as two machines on one link.
//! The clients connect from 10.77.0.1 on `cwlab-c`; the server answers on 10.77.0.2 on `cwlab-s`.
//! Both namespaces are the run's own, so the addresses clash with nothing; the pair goes when
//! the server's namespace does.

use std::net::Ipv4Addr;

use cwlab_model::scenario::Topology;
use cwlab_sampler::netns;

use crate::{io, RunError};

/// The clients' address.
pub const CLIENT_HOST: Ipv4Addr = Topology::CLIENT_HOST;
/// The server's address.
pub const SERVER_HOST: Ipv4Addr = Topology::SERVER_HOST;
/// The clients' end of the pair, in the runner's namespace: where packets are captured.
pub const CLIENT_IFACE: &str = "cwlab-c";
/// The server's end, in its namespace.
pub const SERVER_IFACE: &str = "cwlab-s";
const PREFIX: u8 = 24;

/// Joins the network namespace of process `server` to the caller's with the veth pair, both
/// ends addressed and up.
pub fn join(server: u32) -> Result<(), RunError> {
    netns::veth_to(CLIENT_IFACE, SERVER_IFACE, server)
        .map_err(io(format!("create the veth pair {CLIENT_IFACE}/{SERVER_IFACE}")))?;
    netns::set_ipv4(CLIENT_IFACE, CLIENT_HOST, PREFIX)
        .and_then(|()| netns::set_up(CLIENT_IFACE))
        .map_err(io(format!("bring {CLIENT_IFACE} up as {CLIENT_HOST}/{PREFIX}")))?;
    netns::in_namespace_of(server, || {
        netns::set_ipv4(SERVER_IFACE, SERVER_HOST, PREFIX)?;
        netns::set_up(SERVER_IFACE)
    })
    .map_err(io(format!(
        "bring {SERVER_IFACE} up as {SERVER_HOST}/{PREFIX} in the server's namespace"
    )))
}
