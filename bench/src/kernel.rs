//! System under test 3, the other baseline: the kernel talking to itself over a veth pair.
//!
//! Two namespaces, `…-peer` and `…-server`, joined by a veth pair at MTU 1500: the peer
//! at [`VETH_PEER`], the server at [`VETH_SERVER`]. The server runs the very services
//! tapnet runs (`serve.rs`), on `std::net` listeners through the same `Listener` / `Conn`
//! traits; the kernel's buffers are its own, autotuned, and the veth keeps its default
//! offloads (TSO, GRO), as a kernel at its best would.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use crate::netns::{MTU, Netns, PREFIX_LEN, SETUP_LIMIT, VETH_PEER, VETH_SERVER};
use crate::serve::{Service, Services};
use crate::{BoxError, Settings, Subject};

/// The pair of namespaces and the server, up. Dropping it stops the services, then
/// deletes both namespaces (which takes the veth pair with them).
pub struct Kernel {
    /// Held to be dropped first.
    _services: Services,
    _server: Netns,
    peer: Netns,
}

/// Makes the namespaces and the veth pair, and starts the server.
pub fn start(settings: &Settings) -> Result<Kernel, BoxError> {
    let peer = Netns::create("peer")?;
    let server = Netns::create("server")?;
    // Made in the peer's namespace with its other end straight in the server's, so
    // neither end ever exists outside the bench's namespaces.
    peer.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        server.name(),
    ])?;
    let mtu = MTU.to_string();
    for (ns, dev, addr) in [(&peer, "veth0", VETH_PEER), (&server, "veth1", VETH_SERVER)] {
        ns.ip(&["link", "set", dev, "mtu", &mtu])?;
        ns.ip(&["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    let listeners = server.run("bind", SETUP_LIMIT, || {
        let mut listeners = Vec::new();
        for service in [Service::Sink, Service::Source, Service::Echo] {
            let addr = SocketAddr::from((VETH_SERVER, service.port()));
            listeners.push((service, TcpListener::bind(addr)?));
        }
        Ok(listeners)
    })?;
    let services = Services::start(&server, listeners, settings.conn_limit())?;
    Ok(Kernel {
        _services: services,
        _server: server,
        peer,
    })
}

impl Subject for Kernel {
    fn peer(&self) -> &Netns {
        &self.peer
    }

    fn addr(&self) -> Ipv4Addr {
        VETH_SERVER
    }
}
