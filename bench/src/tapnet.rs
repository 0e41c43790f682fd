//! System under test 1: tapnet, through its Conn API.
//!
//! A [`Stack`] on a [`netdev::Tap`] inside a namespace of its own, at
//! [`TAP_STACK`], serving the services of `serve.rs` from
//! [`stack::TcpListener`]s. The peer is the kernel at the TAP's other end, in the same
//! namespace.

use std::net::{Ipv4Addr, SocketAddr};

use stack::{Ipv4Net, Stack, StackConfig};

use crate::netns::{self, Netns, PREFIX_LEN, TAP_STACK};
use crate::serve::{Service, Services};
use crate::{BoxError, Settings, Subject};

/// tapnet, up and serving. Dropping it stops the services, then the stack (which
/// closes the TAP), then deletes the namespace.
pub struct Tapnet {
    /// Held to be dropped first.
    _services: Services,
    stack: Stack,
    ns: Netns,
}

/// Brings tapnet up on a fresh TAP.
pub fn start(settings: &Settings) -> Result<Tapnet, BoxError> {
    let ns = Netns::create("tapnet")?;
    let tap = netns::open_tap(&ns)?;
    let config = StackConfig::new()
        .with_addr(Ipv4Net {
            addr: TAP_STACK,
            prefix: PREFIX_LEN,
        })
        .with_buffers(settings.buffer, settings.buffer);
    let stack = Stack::new(tap, config)?;
    let mut listeners = Vec::new();
    for service in [Service::Sink, Service::Source, Service::Echo] {
        let addr = SocketAddr::from((TAP_STACK, service.port()));
        listeners.push((service, stack.listen(addr)?));
    }
    let services = Services::start(&ns, listeners, settings.conn_limit())?;
    Ok(Tapnet {
        _services: services,
        stack,
        ns,
    })
}

impl Subject for Tapnet {
    fn peer(&self) -> &Netns {
        &self.ns
    }

    fn addr(&self) -> Ipv4Addr {
        TAP_STACK
    }

    fn notes(&self) -> Option<String> {
        Some(format!("TAP counters: {}", self.stack.counters()))
    }
}
