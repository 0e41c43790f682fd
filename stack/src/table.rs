//! The stack's TCP bookkeeping, kept beside smoltcp's socket set under the same lock:
//! what each connection's handles asked for (deadlines, shutdowns, options), each
//! listener's backlog, the ephemeral ports, and the driver's hooks that make smoltcp's
//! sockets behave as Go's connections do.
//!
//! The hooks, in the order the driver calls them each pass:
//!
//! - [`Tcp::before_ingress`] and [`Tcp::before_egress`] turn smoltcp's one keepalive
//!   interval into Linux's idle / interval / count (see [`Tcp::keepalive_scan`]).
//! - [`Tcp::hand_off`], after ingress, moves newly arrived data straight to reads that
//!   are blocked waiting for it, so the ACKs of the same pass open the window, and
//!   queues the data of writes that are blocked for room as the ACKs make room, so the
//!   same pass sends it.
//! - [`Tcp::rearm`], after any frame that reached a listener's port, moves completed
//!   handshakes to the accept queue and keeps a LISTEN socket armed while the backlog
//!   has room, so a listening port never resets a SYN it has room for.
//! - [`Tcp::after_poll`] notes state changes of the connections that saw a segment, frees
//!   closed connections nobody holds, and runs the timed chores: CLOSE-WAIT warnings and
//!   the FIN-WAIT-2 timeout of orphans.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use crate::tcp::{KeepAlive, State};
use crate::time_wait::TIME_WAIT;
use crate::trace::reason;
use crate::wait::WaitList;
use crate::watch::{Tuple, Watch};

/// LISTEN sockets kept armed per listener (when the backlog has room). The driver
/// re-arms after every SYN, so two leave a spare.
const ARMED: usize = 2;
/// How long before a keepalive probe is due by the watch's clock the knob is set to the
/// interval: smoltcp's clock, which sends the probe, may run a moment ahead.
const KEEPALIVE_LEAD: Duration = Duration::from_millis(5);
/// How long an orphaned connection may sit in FIN-WAIT-2 (Linux's `tcp_fin_timeout`).
const FIN_WAIT_2_TIMEOUT: Duration = Duration::from_secs(60);
/// How often orphans are checked for being done.
const ORPHAN_TICK: Duration = Duration::from_millis(200);
/// The ephemeral port range (RFC 6335 §6).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;
/// A half-open connection this old is recycled when its listener's queue is full, even
/// with no SYN waiting (RFC 4987 §3.4, "recycling the oldest half-open TCB"). A
/// handshake on a lab link completes in a few milliseconds; one from a spoofed source
/// never does, and without recycling would hold its slot until smoltcp gave up on it,
/// minutes later. A SYN that finds the queue full takes the oldest slot sooner, once it
/// is [`HELD_SYN_RECYCLE`] old (the watch holds the SYN meanwhile: `Watch::held`).
pub(crate) const HALF_OPEN_RECYCLE: Duration = Duration::from_millis(200);
/// A half-open connection this old makes room for a SYN held for its full listener:
/// time enough for an honest handshake on a lab link, so a burst of clients never
/// loses one in progress, and short next to a client's first SYN retransmission (1 s).
pub(crate) const HELD_SYN_RECYCLE: Duration = Duration::from_millis(100);

/// Socket options that a dialer or listener passes on to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opts {
    pub(crate) read_buffer: usize,
    pub(crate) write_buffer: usize,
    pub(crate) keepalive: Option<KeepAlive>,
    pub(crate) linger: Option<Duration>,
    pub(crate) nodelay: bool,
}

impl Opts {
    /// A smoltcp socket with these options. The receive buffer's size fixes the window
    /// scale the SYN offers (RFC 7323 §2.3), which is why it must be set before the
    /// handshake.
    pub(crate) fn socket(&self) -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.read_buffer]),
            tcp::SocketBuffer::new(vec![0; self.write_buffer]),
        );
        socket.set_nagle_enabled(!self.nodelay);
        apply_keepalive(&mut socket, self.keepalive);
        socket
    }
}

/// Hands smoltcp the parts of keepalive it can do: probes after `idle` of quiet, and
/// giving up once the peer has been silent for idle + interval × count. The switch to
/// `interval` between probes is [`Tcp::keepalive_scan`]'s.
pub(crate) fn apply_keepalive(socket: &mut tcp::Socket, keepalive: Option<KeepAlive>) {
    match keepalive {
        Some(ka) => {
            socket.set_keep_alive(Some(ka.idle().into()));
            socket.set_timeout(Some(ka.give_up_after().into()));
        }
        None => {
            socket.set_keep_alive(None);
            socket.set_timeout(None);
        }
    }
}

/// Ends the sending side of `socket`: a FIN after the data queued. In CLOSE-WAIT with
/// data still unacknowledged, the FIN waits until the peer has acknowledged it all
/// (`meta.fin_pending`; the driver sends it from `sync`): smoltcp's LAST-ACK answers a
/// duplicate ACK with a challenge ACK instead of counting it, so data lost after the FIN
/// went out could only be sent again by the retransmission timer, a second or more
/// for each loss. Waiting costs the FIN at most one round trip.
pub(crate) fn send_fin(socket: &mut tcp::Socket, meta: &mut ConnMeta) {
    if socket.state() == tcp::State::CloseWait && socket.send_queue() > 0 {
        meta.fin_pending = true;
    } else {
        meta.fin_pending = false;
        socket.close();
    }
}

/// One connection's state beyond smoltcp's socket.
pub(crate) struct ConnMeta {
    pub(crate) tuple: Tuple,
    /// Calls waiting to read, and the waker smoltcp holds for them.
    pub(crate) rx: Arc<WaitList>,
    pub(crate) rx_waker: Waker,
    /// Calls waiting to write (or for the handshake, or for linger).
    pub(crate) tx: Arc<WaitList>,
    pub(crate) tx_waker: Waker,
    pub(crate) read_deadline: Option<Instant>,
    pub(crate) write_deadline: Option<Instant>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    /// The application closed it: every handle's calls fail.
    pub(crate) closed: bool,
    pub(crate) read_shut: bool,
    pub(crate) write_shut: bool,
    /// No handle holds it any more; the driver frees it once TCP is done with it.
    pub(crate) orphan: bool,
    /// We reset it (linger 0, or close with unread data).
    pub(crate) aborted: bool,
    /// The application closed its sending side in CLOSE-WAIT while data was still
    /// unacknowledged; the FIN waits for that data (see [`send_fin`]).
    pub(crate) fin_pending: bool,
    pub(crate) opts: Opts,
    pub(crate) state: State,
    pub(crate) since: Instant,
    pub(crate) warned: bool,
    /// Data the driver took from the socket for a blocked read ([`Tcp::hand_off`]);
    /// reads return it before anything still in the socket.
    pub(crate) ahead: Ahead,
    /// The rest of a blocked write, queued by the driver as room appears
    /// ([`Tcp::hand_off`]).
    pub(crate) behind: Behind,
}

/// The part of a blocked write that did not fit in smoltcp's send buffer, copied here so
/// the driver can queue it the moment ACKs make room, and send it in the same pass,
/// instead of waking the writing thread and waiting for it to run. The write call stays
/// blocked until all of it is queued; its count of bytes written moves only as the
/// driver queues them, so a write that times out reports exactly what was queued.
#[derive(Default)]
pub(crate) struct Behind {
    data: Vec<u8>,
    start: usize,
    /// Bytes queued since the owner last looked.
    queued: usize,
    /// The write call whose data this is.
    owner: Option<u64>,
}

impl Behind {
    /// Whether write call `call` has data here.
    pub(crate) fn owned_by(&self, call: u64) -> bool {
        self.owner == Some(call)
    }

    /// Whether no write call has data here.
    pub(crate) fn is_free(&self) -> bool {
        self.owner.is_none()
    }

    /// Takes over `data` for write call `call`.
    pub(crate) fn hold(&mut self, call: u64, data: &[u8]) {
        self.data.clear();
        self.data.extend_from_slice(data);
        self.start = 0;
        self.queued = 0;
        self.owner = Some(call);
    }

    /// Bytes queued for the owner since it last asked; with `done`, whether nothing is
    /// left to queue.
    pub(crate) fn take_queued(&mut self) -> (usize, bool) {
        (
            std::mem::take(&mut self.queued),
            self.start == self.data.len(),
        )
    }

    /// Gives up what is not queued yet, and frees the slot.
    pub(crate) fn release(&mut self) {
        self.data.clear();
        self.start = 0;
        self.queued = 0;
        self.owner = None;
    }

    /// Queues what fits in `socket`. Returns whether everything is queued.
    fn feed(&mut self, socket: &mut tcp::Socket) -> bool {
        if let Ok(n) = socket.send_slice(&self.data[self.start..]) {
            self.start += n;
            self.queued += n;
        }
        self.start == self.data.len()
    }
}

/// Received bytes already taken out of smoltcp's buffer for a read that was blocked
/// waiting for them. A blocked read asks for up to `want` bytes; the driver moves them
/// here in the pass they arrive, so that pass's ACK advertises the space they leave (as
/// the kernel copies straight into a sleeping reader's buffer). They are the stream's
/// next bytes: reads take them first, in order.
#[derive(Default)]
pub(crate) struct Ahead {
    data: Vec<u8>,
    start: usize,
    /// The largest blocked read waiting on this connection; 0 when none waits.
    pub(crate) want: usize,
}

impl Ahead {
    /// Bytes waiting to be read.
    pub(crate) fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// Copies as much as fits into `buf`. Returns how much.
    pub(crate) fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = self.len().min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.start..self.start + n]);
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
        n
    }

    /// Forgets what is waiting (shutdown(Read) discards it).
    pub(crate) fn discard(&mut self) {
        self.data.clear();
        self.start = 0;
    }

    /// Moves up to `want` bytes out of `socket`, when nothing is already waiting.
    /// Returns how many.
    fn fill(&mut self, socket: &mut tcp::Socket) -> usize {
        let want = std::mem::take(&mut self.want);
        if self.len() > 0 {
            return 0;
        }
        // smoltcp's buffer is a ring: the bytes may come in two pieces.
        while self.data.len() < want {
            let room = want - self.data.len();
            let data = &mut self.data;
            match socket.recv(|chunk| {
                let n = chunk.len().min(room);
                data.extend_from_slice(&chunk[..n]);
                (n, n)
            }) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        self.data.len()
    }
}

impl ConnMeta {
    fn new(tuple: Tuple, opts: Opts, state: State, now: Instant) -> ConnMeta {
        let rx = WaitList::new();
        let tx = WaitList::new();
        ConnMeta {
            tuple,
            rx_waker: Waker::from(rx.clone()),
            rx,
            tx_waker: Waker::from(tx.clone()),
            tx,
            read_deadline: None,
            write_deadline: None,
            read_timeout: None,
            write_timeout: None,
            closed: false,
            read_shut: false,
            write_shut: false,
            orphan: false,
            aborted: false,
            fin_pending: false,
            opts,
            state,
            since: now,
            warned: false,
            ahead: Ahead::default(),
            behind: Behind::default(),
        }
    }

    /// Wakes every call blocked on this connection, to look at it again.
    pub(crate) fn wake_all(&self) {
        self.rx.wake_all();
        self.tx.wake_all();
    }
}

/// One listener: its pool of smoltcp sockets and its accept queue.
pub(crate) struct ListenerMeta {
    pub(crate) addr: SocketAddrV4,
    pub(crate) backlog: usize,
    pub(crate) opts: Opts,
    /// Sockets in LISTEN or SYN-RECEIVED.
    pool: Vec<SocketHandle>,
    /// Pool sockets seen in SYN-RECEIVED, with their ends, for the trace's state lines.
    syn_received: Vec<(SocketHandle, Tuple)>,
    /// When each half-open socket of the pool was first seen half-open.
    born: HashMap<SocketHandle, Instant>,
    /// Completed handshakes waiting for `accept`, in arrival order.
    pub(crate) ready: VecDeque<SocketHandle>,
    pub(crate) waiters: Arc<WaitList>,
    pub(crate) deadline: Option<Instant>,
}

/// All of the stack's TCP bookkeeping.
pub(crate) struct Tcp {
    pub(crate) conns: HashMap<SocketHandle, ConnMeta>,
    pub(crate) by_tuple: HashMap<Tuple, SocketHandle>,
    pub(crate) listeners: HashMap<u64, ListenerMeta>,
    next_listener: u64,
    next_port: u16,
    pub(crate) watch: RefCell<Watch>,
    /// Sockets whose keepalive knob was set to the probe interval for this pass.
    ka_armed: Vec<SocketHandle>,
    /// Sockets whose keepalive probing began (the knob is set to the interval for every
    /// pass while their peer stays silent).
    probing: Vec<SocketHandle>,
    /// Connections with a read blocked for data ([`Tcp::hand_off`]).
    readers: Vec<SocketHandle>,
    /// Connections with a write blocked for room ([`Tcp::hand_off`]).
    writers: Vec<SocketHandle>,
    /// Names write calls, for [`Behind`].
    next_call: u64,
    next_ka_scan: Option<Instant>,
    next_chores: Option<Instant>,
    close_wait_warning: Duration,
    retransmit_give_up: Duration,
    /// [`crate::StackConfig::max_sockets`]: TCP sockets the stack may hold at once.
    max_sockets: usize,
    /// A listener holds fewer armed sockets than it has room for, because of the limit:
    /// re-arm once sockets free up.
    starved: bool,
    /// When a full listener's oldest half-open socket becomes recyclable.
    next_rearm: Option<Instant>,
}

impl Tcp {
    pub(crate) fn new(config: &crate::StackConfig) -> Tcp {
        Tcp {
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            next_listener: 0,
            next_port: *EPHEMERAL.start() + fastrand::u16(..16384),
            watch: RefCell::new(Watch::new(config.trace.clone())),
            ka_armed: Vec::new(),
            probing: Vec::new(),
            readers: Vec::new(),
            writers: Vec::new(),
            next_call: 0,
            next_ka_scan: None,
            next_chores: None,
            close_wait_warning: config.close_wait_warning,
            retransmit_give_up: config.retransmit_give_up,
            max_sockets: config.max_sockets,
            starved: false,
            next_rearm: None,
        }
    }

    /// TCP sockets held: connections (orphans included; a TIME-WAIT record is none) and every socket of
    /// every listener's pool (armed in LISTEN, and half-open).
    pub(crate) fn socket_count(&self) -> usize {
        self.conns.len() + self.listeners.values().map(|l| l.pool.len()).sum::<usize>()
    }

    /// Whether one more socket fits under the limit. (A closed connection's TIME-WAIT
    /// holds no socket: see `Watch::enter_time_wait`.)
    pub(crate) fn has_room(&self) -> bool {
        self.socket_count() < self.max_sockets
    }

    /// The socket limit, for error messages.
    pub(crate) fn max_sockets(&self) -> usize {
        self.max_sockets
    }

    /// Registers a connection (dialed, or completed by a listener).
    pub(crate) fn add_conn(
        &mut self,
        handle: SocketHandle,
        tuple: Tuple,
        opts: Opts,
        state: State,
        now: Instant,
    ) {
        self.conns
            .insert(handle, ConnMeta::new(tuple, opts, state, now));
        self.by_tuple.insert(tuple, handle);
        self.watch.get_mut().track(tuple, now);
        // A dial starts from CLOSED; a listener's connection completed its handshake.
        let from = if state == State::SynSent {
            State::Closed
        } else {
            State::SynReceived
        };
        self.trace_state(tuple, from, state, false, false);
        if let Some(ka) = opts.keepalive {
            self.schedule_keepalive(now + ka.idle());
        }
    }

    /// A state line for the trace, if the stack is traced.
    fn trace_state(&self, tuple: Tuple, from: State, to: State, closed: bool, aborted: bool) {
        let watch = self.watch.borrow();
        if let Some(trace) = &watch.trace {
            let rst_rx = watch.get(&tuple).is_some_and(|w| w.rst_rx);
            trace.state(tuple, from, to, reason(from, to, rst_rx, aborted, closed));
        }
    }

    /// Forgets a connection and frees its socket.
    pub(crate) fn remove_conn(&mut self, handle: SocketHandle, sockets: &mut SocketSet<'static>) {
        if let Some(meta) = self.conns.remove(&handle) {
            self.by_tuple.remove(&meta.tuple);
            self.watch.get_mut().forget(&meta.tuple);
            meta.wake_all();
        }
        sockets.remove(handle);
    }

    /// Marks a connection as held by no handle: the driver frees it when TCP is done.
    pub(crate) fn orphan(&mut self, handle: SocketHandle, now: Instant) {
        if let Some(meta) = self.conns.get_mut(&handle) {
            meta.orphan = true;
            // A connection that finished before its last handle went (the peer's FIN
            // came first: TIME-WAIT) is freed after the next pass, not at the next chore;
            // a client churning through connections would otherwise hold hundreds.
            self.watch.get_mut().look_again(&meta.tuple);
            self.schedule_chores(now + ORPHAN_TICK);
        }
    }

    pub(crate) fn schedule_keepalive(&mut self, at: Instant) {
        sooner(&mut self.next_ka_scan, at);
    }

    fn schedule_chores(&mut self, at: Instant) {
        sooner(&mut self.next_chores, at);
    }

    /// Whether a connection or listener already uses this local port on `ip`.
    fn port_in_use(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.listeners
            .values()
            .any(|l| l.addr.port() == port && (l.addr.ip().is_unspecified() || *l.addr.ip() == ip))
            || self
                .by_tuple
                .keys()
                .any(|(local, _)| local.port() == port && *local.ip() == ip)
    }

    /// The next ephemeral port for `local_ip` → `remote`, in rotation, skipping any whose
    /// 4-tuple still has a socket or a TIME-WAIT record, or that a listener holds.
    ///
    /// When every port to `remote` is taken and some only by a TIME-WAIT record, the
    /// oldest such record gives its port up, as Linux's `tcp_tw_reuse` does: the new
    /// connection's random ISN keeps old duplicates out of its window (RFC 6191's aim).
    pub(crate) fn ephemeral_port(
        &mut self,
        local_ip: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Option<u16> {
        let free = self.next_free_port(|tcp, port| {
            let tuple = (SocketAddrV4::new(local_ip, port), remote);
            !tcp.listeners.values().any(|l| l.addr.port() == port)
                && !tcp.by_tuple.contains_key(&tuple)
                && !tcp.watch.borrow().in_time_wait(&tuple)
        });
        free.or_else(|| {
            let (local, _) = self.watch.get_mut().reuse_time_wait(local_ip, remote)?;
            Some(local.port())
        })
    }

    /// A free port for a new listener on `ip`.
    pub(crate) fn listen_port(&mut self, ip: Ipv4Addr) -> Option<u16> {
        self.next_free_port(|tcp, port| !tcp.port_in_use(ip, port))
    }

    /// The next port of the ephemeral range, in rotation, that `free` accepts.
    fn next_free_port(&mut self, free: impl Fn(&Tcp, u16) -> bool) -> Option<u16> {
        for _ in EPHEMERAL {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            if free(self, port) {
                return Some(port);
            }
        }
        None
    }

    /// Whether a listener on `addr` would collide with one that exists.
    pub(crate) fn listen_conflict(&self, addr: SocketAddrV4) -> bool {
        self.listeners.values().any(|l| {
            l.addr.port() == addr.port()
                && (l.addr.ip().is_unspecified()
                    || addr.ip().is_unspecified()
                    || l.addr.ip() == addr.ip())
        })
    }

    /// Adds a listener and arms it. Returns its id.
    pub(crate) fn add_listener(
        &mut self,
        addr: SocketAddrV4,
        backlog: usize,
        opts: Opts,
        sockets: &mut SocketSet<'static>,
        now: Instant,
    ) -> u64 {
        self.next_listener += 1;
        let id = self.next_listener;
        self.listeners.insert(
            id,
            ListenerMeta {
                addr,
                backlog,
                opts,
                pool: Vec::new(),
                syn_received: Vec::new(),
                born: HashMap::new(),
                ready: VecDeque::new(),
                waiters: WaitList::new(),
                deadline: None,
            },
        );
        self.rearm(sockets, now);
        id
    }

    /// Closes a listener: its half-open connections go silently, completed ones not yet
    /// accepted are reset (as Linux does), and blocked accepts wake to fail.
    pub(crate) fn remove_listener(
        &mut self,
        id: u64,
        sockets: &mut SocketSet<'static>,
        now: Instant,
    ) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        for handle in listener.pool {
            sockets.remove(handle);
        }
        for handle in listener.ready {
            sockets.get_mut::<tcp::Socket>(handle).abort();
            if let Some(meta) = self.conns.get_mut(&handle) {
                meta.aborted = true;
            }
            self.orphan(handle, now);
        }
        self.watch
            .get_mut()
            .remove_gate(*listener.addr.ip(), listener.addr.port());
        listener.waiters.wake_all();
    }

    /// Every listener's half-open connections (SYN-RECEIVED, still in its pool): their
    /// ends, how long they have been half-open, and the options they will be accepted
    /// with.
    pub(crate) fn half_opens(
        &self,
        sockets: &SocketSet<'static>,
        now: Instant,
    ) -> Vec<(Tuple, Duration, Opts)> {
        let mut found = Vec::new();
        for listener in self.listeners.values() {
            for &handle in &listener.pool {
                let socket = sockets.get::<tcp::Socket>(handle);
                if socket.state() != tcp::State::SynReceived {
                    continue;
                }
                let Some((local, peer)) = socket.local_endpoint().zip(socket.remote_endpoint())
                else {
                    continue;
                };
                // Not seen half-open by a re-arm yet: it has just become so.
                let born = listener.born.get(&handle).copied().unwrap_or(now);
                let age = now.saturating_duration_since(born);
                found.push(((v4(local), v4(peer)), age, listener.opts));
            }
        }
        found
    }

    /// Re-arms every listener: completed handshakes move to the accept queue, closed
    /// half-open sockets are freed, and LISTEN sockets are added while the backlog has
    /// room. The gate then lets through as many SYNs as there are armed sockets and room.
    pub(crate) fn rearm(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let ids: Vec<u64> = self.listeners.keys().copied().collect();
        let mut half_open = 0;
        for id in ids {
            half_open += self.rearm_one(id, sockets, now);
        }
        // Half-open tuples whose socket went back to LISTEN (an RST) or closed. The set
        // of live ones is built only when the watch holds more than there are.
        if self.watch.get_mut().half_open() > half_open {
            let alive: std::collections::HashSet<Tuple> = self
                .listeners
                .values()
                .flat_map(|l| &l.pool)
                .filter_map(|&h| {
                    let socket = sockets.get::<tcp::Socket>(h);
                    Some((v4(socket.local_endpoint()?), v4(socket.remote_endpoint()?)))
                })
                .collect();
            self.watch.get_mut().prune_half_open(|t| alive.contains(t));
        }
    }

    /// Re-arms one listener; returns how many of its sockets are half-open.
    fn rearm_one(&mut self, id: u64, sockets: &mut SocketSet<'static>, now: Instant) -> usize {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return 0;
        };
        let (mut armed, mut half_open) = (0, 0);
        let mut completed = Vec::new();
        let traced = self.watch.get_mut().trace.is_some();
        let mut syn_lines = Vec::new();
        let syn_received = &mut listener.syn_received;
        let born = &mut listener.born;
        listener.pool.retain(|&handle| {
            let socket = sockets.get::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::Listen => {
                    armed += 1;
                    born.remove(&handle); // Back from SYN-RECEIVED by an RST.
                }
                tcp::State::SynReceived | tcp::State::SynSent => {
                    half_open += 1;
                    born.entry(handle).or_insert(now);
                    if traced
                        && !syn_received.iter().any(|(h, _)| *h == handle)
                        && let Some((l, r)) = socket.local_endpoint().zip(socket.remote_endpoint())
                    {
                        syn_received.push((handle, (v4(l), v4(r))));
                        syn_lines.push((v4(l), v4(r)));
                    }
                }
                state => {
                    // Closed (or no longer addressed): freed below with the completed.
                    born.remove(&handle);
                    let ends = socket.local_endpoint().zip(socket.remote_endpoint());
                    completed.push((handle, ends.map(|(l, r)| (v4(l), v4(r))), state));
                    return false;
                }
            }
            true
        });
        let opts = listener.opts;
        let mut done = Vec::new();
        listener.syn_received.retain(|&(h, tuple)| {
            let finished = completed.iter().any(|c| c.0 == h);
            if finished {
                done.push((h, tuple));
            }
            !finished
        });
        for tuple in syn_lines {
            self.trace_state(tuple, State::Listen, State::SynReceived, false, false);
        }
        for (handle, tuple) in done {
            // Handshakes that completed are traced by add_conn; these ones failed.
            if completed
                .iter()
                .any(|c| c.0 == handle && c.2 == tcp::State::Closed)
            {
                self.trace_state(tuple, State::SynReceived, State::Closed, false, false);
            }
        }
        let mut ready = Vec::new();
        for (handle, tuple, state) in completed {
            match tuple {
                Some(tuple) if state != tcp::State::Closed => {
                    self.add_conn(handle, tuple, opts, state.into(), now);
                    ready.push(handle);
                }
                _ => {
                    sockets.remove(handle);
                }
            }
        }
        let Some(listener) = self.listeners.get_mut(&id) else {
            return half_open;
        };
        if !ready.is_empty() {
            listener.ready.extend(ready);
            listener.waiters.wake_all();
        }
        let mut room = listener
            .backlog
            .saturating_sub(listener.ready.len() + half_open);
        let (addr, port) = (*listener.addr.ip(), listener.addr.port());
        let endpoint = IpListenEndpoint {
            addr: (!addr.is_unspecified()).then(|| addr.into()),
            port,
        };
        // A full queue recycles its half-open sockets, oldest first (RFC 4987 §3.4),
        // silently (their peers are most likely spoofed): those that have waited too
        // long for the handshake's last ACK, and for each SYN the watch holds for this
        // listener, one that has had time to complete (so a burst of honest clients
        // never loses a handshake in progress). A recycled socket listens again,
        // buffers and all.
        let mut held = self.watch.get_mut().held_for(addr, port);
        while room < ARMED {
            let Some((&handle, &at)) = listener.born.iter().min_by_key(|(_, at)| **at) else {
                break;
            };
            let wait = if held > 0 {
                HELD_SYN_RECYCLE
            } else {
                HALF_OPEN_RECYCLE
            };
            if now.saturating_duration_since(at) < wait {
                sooner(&mut self.next_rearm, at + wait);
                break;
            }
            held = held.saturating_sub(1);
            listener.born.remove(&handle);
            listener.syn_received.retain(|(h, _)| *h != handle);
            listener.pool.retain(|h| *h != handle);
            // Out of the set and back in: the socket keeps its buffers, and the set's
            // record of it starts afresh (smoltcp's, of a neighbour it waits to resolve,
            // would hold its next SYN-ACK back for a second).
            if let smoltcp::socket::Socket::Tcp(mut socket) = sockets.remove(handle) {
                socket.abort();
                if socket.listen(endpoint).is_ok() {
                    listener.pool.push(sockets.add(socket));
                    armed += 1;
                }
            }
            half_open -= 1;
            room += 1;
        }
        let (want, opts) = (ARMED.min(room).saturating_sub(armed), listener.opts);
        for _ in 0..want {
            if !self.has_room() {
                // At the socket limit: SYNs beyond the armed sockets are dropped at the
                // gate, and the listener re-arms once sockets free up (after_poll).
                self.starved = true;
                break;
            }
            let mut socket = opts.socket();
            if socket.listen(endpoint).is_err() {
                break; // Port 0 or an open socket: neither happens here.
            }
            let handle = sockets.add(socket);
            if let Some(listener) = self.listeners.get_mut(&id) {
                listener.pool.push(handle);
            }
            armed += 1;
        }
        let open = armed.min(room) as u32;
        // SYNs beyond those may wait for the places that free up without an accept: the
        // half-open sockets, and the room unarmed only for now (not at the socket limit).
        let unarmed = if self.has_room() {
            room - open as usize
        } else {
            0
        };
        let waiting = (half_open + unarmed) as u32;
        let watch = self.watch.get_mut();
        watch.set_gate(addr, port, open, waiting);
        watch.release_held(addr, port, now, open);
        half_open
    }

    /// Replaces the armed LISTEN sockets of a listener whose options changed, so the next
    /// connection gets the new buffer sizes.
    pub(crate) fn refresh_listener(
        &mut self,
        id: u64,
        sockets: &mut SocketSet<'static>,
        now: Instant,
    ) {
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.pool.retain(|&handle| {
                if sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
                    sockets.remove(handle);
                    false
                } else {
                    true
                }
            });
        }
        self.rearm_one(id, sockets, now);
    }

    /// A read on `handle` is about to block for up to `want` bytes.
    pub(crate) fn await_data(&mut self, handle: SocketHandle, want: usize) {
        if let Some(meta) = self.conns.get_mut(&handle) {
            if meta.ahead.want == 0 {
                self.readers.push(handle);
            }
            meta.ahead.want = meta.ahead.want.max(want);
        }
    }

    /// A name for one write call.
    pub(crate) fn new_call(&mut self) -> u64 {
        self.next_call += 1;
        self.next_call
    }

    /// Write call `call` on `handle` is about to block with `rest` still to write: the
    /// driver queues it as room appears, if no other write holds the slot. Returns
    /// whether it took the data.
    pub(crate) fn await_room(&mut self, handle: SocketHandle, call: u64, rest: &[u8]) -> bool {
        let Some(meta) = self.conns.get_mut(&handle) else {
            return false;
        };
        if !meta.behind.is_free() {
            return meta.behind.owned_by(call);
        }
        let n = rest.len().min(meta.opts.write_buffer);
        meta.behind.hold(call, &rest[..n]);
        self.writers.push(handle);
        true
    }

    /// After ingress, the driver's work for blocked calls, so that the egress of this
    /// same pass acts on it, as if each application had run at once:
    ///
    /// - data that arrived for a blocked read moves out of the socket to that read
    ///   ([`Ahead`]) and the read wakes; the ACKs advertise the space it leaves;
    /// - the rest of a blocked write moves into the room the peer's ACKs made
    ///   ([`Behind`]) and goes out now; the write wakes once all of it is queued.
    ///
    /// Without this, the window stayed shut, or the send queue ran dry, until the
    /// application's thread ran and the next pass came.
    pub(crate) fn hand_off(&mut self, sockets: &mut SocketSet<'static>) {
        let Tcp {
            readers,
            writers,
            conns,
            ..
        } = self;
        readers.retain(|handle| {
            let Some(meta) = conns.get_mut(handle).filter(|m| m.ahead.want > 0) else {
                return false;
            };
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if !socket.can_recv() {
                return true;
            }
            if meta.ahead.fill(socket) > 0 {
                meta.rx.wake_all();
            }
            false
        });
        writers.retain(|handle| {
            let Some(meta) = conns.get_mut(handle).filter(|m| !m.behind.is_free()) else {
                return false;
            };
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if !socket.can_send() {
                return true;
            }
            if meta.behind.feed(socket) {
                meta.tx.wake_all();
                return false;
            }
            true
        });
    }

    /// Before ingress: sockets whose knob was set to the probe interval go back to
    /// `idle`, so that a segment from the peer restarts smoltcp's timer at idle.
    pub(crate) fn before_ingress(&mut self, sockets: &mut SocketSet<'static>) {
        for handle in self.ka_armed.drain(..) {
            if let Some(ka) = self.conns.get(&handle).and_then(|m| m.opts.keepalive) {
                sockets
                    .get_mut::<tcp::Socket>(handle)
                    .set_keep_alive(Some(ka.idle().into()));
            }
        }
    }

    /// Before egress: connections already probing keep the knob at `interval`, and the
    /// keepalive scan runs when one is due.
    pub(crate) fn before_egress(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        // Once a probe is out and the peer silent, every pass keeps the knob at `interval`:
        // smoltcp sends the next probe when its own timer says, which may be a moment
        // before the scan would find it due, and a probe sent under `idle` put the next
        // one a whole `idle` later, past the give-up.
        let watch = self.watch.get_mut();
        for &handle in &self.probing {
            if let Some(meta) = self.conns.get(&handle)
                && let Some(ka) = meta.opts.keepalive
                && let Some(wire) = watch.get(&meta.tuple)
                && (wire.probes_out > 0
                    || watch
                        .probe_due(&meta.tuple, ka.idle(), ka.interval())
                        .is_some_and(|due| due <= now + KEEPALIVE_LEAD))
            {
                sockets
                    .get_mut::<tcp::Socket>(handle)
                    .set_keep_alive(Some(ka.interval().into()));
                self.ka_armed.push(handle);
            }
        }
        self.probing.retain(|h| self.ka_armed.contains(h));
        if self.next_ka_scan.is_some_and(|t| t <= now) {
            self.keepalive_scan(sockets, now);
        }
    }

    /// smoltcp sends a keepalive probe when its one keepalive interval has passed since
    /// the socket last sent or received, and restarts that interval with every segment.
    /// Linux (RFC 1122 §4.2.3.6) waits `idle` for the first probe and `interval` between
    /// probes. So the knob stays at `idle`, except during the pass in which a probe is
    /// due (from [`KEEPALIVE_LEAD`] before it): then it is set to `interval`, the probe
    /// goes out and restarts smoltcp's timer at `interval`. Before each ingress the knob
    /// returns to `idle`, so a reply from the peer restarts it at `idle` again; while the
    /// peer stays silent, every egress sets it to `interval` again (`before_egress`), so
    /// each later probe restarts the timer at `interval` whenever smoltcp sends it.
    fn keepalive_scan(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let watch = self.watch.borrow();
        let mut next: Option<Instant> = None;
        for (&handle, meta) in &self.conns {
            let Some(ka) = meta.opts.keepalive else {
                continue;
            };
            if !matches!(
                meta.state,
                State::Established | State::CloseWait | State::FinWait1 | State::FinWait2
            ) {
                continue;
            }
            let Some(due) = watch.probe_due(&meta.tuple, ka.idle(), ka.interval()) else {
                continue;
            };
            let at = if due <= now + KEEPALIVE_LEAD {
                // Armed a moment early: smoltcp's clock may reach its own deadline first.
                sockets
                    .get_mut::<tcp::Socket>(handle)
                    .set_keep_alive(Some(ka.interval().into()));
                self.ka_armed.push(handle);
                if !self.probing.contains(&handle) {
                    self.probing.push(handle);
                }
                // smoltcp's own timer sends the probe; look again shortly if it was not
                // quite due by smoltcp's reckoning.
                now + ka.interval().min(Duration::from_millis(10))
            } else {
                due - KEEPALIVE_LEAD
            };
            sooner(&mut next, at);
        }
        self.next_ka_scan = next;
    }

    /// After a pass: notes state changes of the connections that saw segments, frees
    /// finished orphans, runs chores that are due, and says when the driver must next run
    /// for the TCP layer's own timers (the watch's loss rechecks among them).
    pub(crate) fn after_poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
    ) -> Option<Instant> {
        let touched = self.watch.get_mut().take_touched();
        for tuple in touched {
            if let Some(&handle) = self.by_tuple.get(&tuple) {
                self.sync(handle, sockets, now);
            }
        }
        if self.next_chores.is_some_and(|t| t <= now) {
            self.chores(sockets, now);
        }
        let recycle_due = self.next_rearm.is_some_and(|t| t <= now);
        if recycle_due || (self.starved && self.has_room()) {
            // Sockets freed under the limit, or a full listener's oldest half-open one
            // may be recycled: re-arm (which sets both again if still needed).
            self.starved = false;
            self.next_rearm = None;
            self.rearm(sockets, now);
        }
        let recheck = self.watch.get_mut().next_loss_recheck();
        [
            self.next_ka_scan,
            self.next_chores,
            self.next_rearm,
            recheck,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Brings one connection's record up to date with its socket.
    fn sync(&mut self, handle: SocketHandle, sockets: &mut SocketSet<'static>, now: Instant) {
        let Some(meta) = self.conns.get_mut(&handle) else {
            return;
        };
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if meta.fin_pending && !meta.aborted && socket.send_queue() == 0 {
            send_fin(socket, meta);
        }
        let state = State::from(socket.state());
        if state != meta.state {
            log::debug!(
                "{} -> {}: {} -> {}",
                meta.tuple.0,
                meta.tuple.1,
                meta.state,
                state
            );
            let (tuple, from) = (meta.tuple, meta.state);
            let (closed, aborted) = (meta.closed, meta.aborted);
            meta.state = state;
            meta.since = now;
            meta.warned = false;
            if state == State::CloseWait && !closed && !meta.write_shut {
                sooner(&mut self.next_chores, now + self.close_wait_warning);
            }
            self.trace_state(tuple, from, state, closed, aborted);
        }
        let Some(meta) = self.conns.get_mut(&handle) else {
            return;
        };
        if meta.opts.keepalive.is_none() {
            // smoltcp's one timeout would also end an idle connection; without keepalive,
            // only data the peer leaves unacknowledged may time out.
            let waiting =
                socket.send_queue() > 0 || matches!(state, State::SynSent | State::SynReceived);
            let want = waiting.then_some(self.retransmit_give_up.into());
            if socket.timeout() != want {
                socket.set_timeout(want);
            }
        }
        if meta.read_shut && socket.can_recv() {
            // shutdown(Read): what arrives afterwards is discarded.
            let _ = socket.recv(|data| (data.len(), ()));
        }
        if meta.orphan && state == State::Closed && socket.local_endpoint().is_none() {
            self.remove_conn(handle, sockets);
        } else if meta.orphan && state == State::TimeWait {
            // Nobody holds it and nothing more goes through it: a few numbers keep its
            // TIME-WAIT, and its socket and buffers are freed now (see `TimeWait`).
            let tuple = meta.tuple;
            if self.watch.get_mut().enter_time_wait(tuple, now) {
                self.remove_conn(handle, sockets);
                self.schedule_chores(now + TIME_WAIT);
            }
        }
    }

    /// The timed chores: CLOSE-WAIT warnings, finished and stuck orphans.
    fn chores(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        self.next_chores = None;
        while let Some(over) = self.watch.get_mut().expire_time_wait(now) {
            self.trace_state(over, State::TimeWait, State::Closed, true, false);
        }
        if let Some(at) = self.watch.get_mut().next_time_wait_end() {
            self.schedule_chores(at);
        }
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            self.sync(handle, sockets, now);
            let Some(meta) = self.conns.get_mut(&handle) else {
                continue; // Freed by sync.
            };
            let age = now.saturating_duration_since(meta.since);
            let mut next = None;
            if meta.orphan {
                if meta.state == State::FinWait2 && age >= FIN_WAIT_2_TIMEOUT {
                    log::debug!(
                        "{} -> {}: FIN-WAIT-2 for {:?} without the peer's FIN; resetting",
                        meta.tuple.0,
                        meta.tuple.1,
                        age
                    );
                    sockets.get_mut::<tcp::Socket>(handle).abort();
                    meta.aborted = true;
                }
                next = Some(now + ORPHAN_TICK);
            } else if meta.state == State::CloseWait
                && !meta.closed
                && !meta.write_shut
                && !meta.warned
            {
                if age >= self.close_wait_warning {
                    log::warn!(
                        "{} -> {}: in CLOSE-WAIT for {:.1?}: the peer closed, but the \
                         application has not closed its side",
                        meta.tuple.0,
                        meta.tuple.1,
                        age
                    );
                    meta.warned = true;
                } else {
                    next = Some(meta.since + self.close_wait_warning);
                }
            }
            if let Some(at) = next {
                self.schedule_chores(at);
            }
        }
    }
}

/// Moves a timer earlier to `at`, or sets it.
fn sooner(timer: &mut Option<Instant>, at: Instant) {
    *timer = Some(timer.map_or(at, |t| t.min(at)));
}

/// An endpoint as the IPv4 socket address it always is on this stack.
pub(crate) fn v4(endpoint: IpEndpoint) -> SocketAddrV4 {
    let smoltcp::wire::IpAddress::Ipv4(ip) = endpoint.addr;
    SocketAddrV4::new(ip, endpoint.port)
}
