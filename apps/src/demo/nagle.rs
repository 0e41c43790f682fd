//! `tapnet demo nagle`: many small writes, with Nagle's algorithm off (nodelay, Go's and
//! tapnet's default) and on. Nagle's algorithm (RFC 896; RFC 1122 §4.2.3.4) holds back a
//! segment smaller than the MSS while earlier data is unacknowledged, so small writes
//! made meanwhile go out together: fewer segments, each a little later.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use netdev::Impairment;
use stack::{Stack, TcpListener};

use super::{DemoArgs, Lab, SERVER};

/// Writes per run.
const WRITES: usize = 50;
/// Bytes per write.
const WRITE_SIZE: usize = 10;
/// Time between writes: long enough for the stack to send each one on its own.
const GAP: Duration = Duration::from_millis(2);
/// How long the client's end of the link holds each frame: a WAN's delay, so an ACK
/// takes a while to come back.
const LINK_DELAY: Duration = Duration::from_millis(20);

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let client = lab.client()?;
    let link = lab.client_link()?;
    let server_addr = SERVER;
    let listener = lab.server.listen(server_addr)?;
    link.set_egress(Impairment {
        delay: LINK_DELAY,
        ..Impairment::default()
    })
    .map_err(io::Error::other)?;
    lab.say(&format!(
        "The client's end of the link holds each frame {} ms, as a WAN would: every ACK \
         the client waits for takes at least that long.",
        LINK_DELAY.as_millis()
    ));

    lab.say(&format!(
        "First with nodelay (Nagle off, the default in Go and here): {WRITES} writes of \
         {WRITE_SIZE} bytes, {} ms apart. The stack sends what is written without \
         waiting for ACKs: a segment for each write it finds queued, {WRITE_SIZE} bytes of \
         data behind 54 bytes of headers.",
        GAP.as_millis()
    ));
    let off = small_writes(client, &listener, server_addr, true)?;
    lab.say(&format!(
        "With nodelay: {off} segments carried the {} bytes of {WRITES} writes.",
        WRITES * WRITE_SIZE
    ));

    lab.say(
        "Now with Nagle on (nodelay false). The first write goes out at once; while it is \
         unacknowledged, the writes after it wait in the send buffer, and go out together \
         when its ACK arrives (or once they fill a whole segment).",
    );
    let on = small_writes(client, &listener, server_addr, false)?;
    lab.say(&format!(
        "With Nagle: {on} segments carried the {} bytes of {WRITES} writes.",
        WRITES * WRITE_SIZE
    ));

    lab.say(&format!(
        "{WRITES} writes of {WRITE_SIZE} bytes: {off} segments with nodelay, {on} with Nagle."
    ));
    if on >= off {
        return Err(io::Error::other(format!(
            "Nagle's algorithm did not save segments: {on} with it, {off} without"
        )));
    }
    drop(listener);
    lab.finish(&[
        &format!(
            "{WRITES} writes of {WRITE_SIZE} bytes took {off} segments with nodelay and {on} \
             with Nagle's algorithm."
        ),
        "Nagle holds a small segment while earlier data is unacknowledged: the longer the \
         round trip, the more small writes share a segment.",
        "The price is latency: a held write waits up to a round trip. Interactive protocols \
         set nodelay (Go does by default); bulk writers rarely notice either way.",
        "Nagle together with the peer's delayed ACK can stall a write-write-read exchange \
         for the delayed-ACK time: write whole messages at once instead.",
    ])
}

/// One run: a connection with `nodelay` as given, [`WRITES`] small writes, then the
/// number of segments the client sent to carry them (all acknowledged).
fn small_writes(
    client: &Stack,
    listener: &TcpListener,
    server_addr: SocketAddr,
    nodelay: bool,
) -> io::Result<u64> {
    let conn = client
        .dialer()
        .nodelay(nodelay)
        .timeout(Duration::from_secs(5))
        .dial(server_addr)?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    let reader = thread::spawn(move || -> io::Result<usize> {
        accepted.set_read_deadline(Some(Instant::now() + Duration::from_secs(10)))?;
        let mut received = Vec::new();
        (&accepted).read_to_end(&mut received)?;
        accepted.close()?;
        Ok(received.len())
    });
    let before = conn.info()?.segments_out;
    conn.set_write_deadline(Some(Instant::now() + Duration::from_secs(5)))?;
    for i in 0..WRITES {
        let byte = b'a' + (i % 26) as u8;
        (&conn).write_all(&[byte; WRITE_SIZE])?;
        thread::sleep(GAP);
    }
    // Count once everything is acknowledged, before the FIN.
    let end = Instant::now() + Duration::from_secs(5);
    while conn.info()?.send_queue > 0 {
        if Instant::now() >= end {
            return Err(io::Error::other(
                "the server did not acknowledge the small writes within 5 s",
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let segments = conn.info()?.segments_out - before;
    conn.shutdown(Shutdown::Write)?;
    let received = reader
        .join()
        .map_err(|_| io::Error::other("the server's reader thread panicked"))??;
    if received != WRITES * WRITE_SIZE {
        return Err(io::Error::other(format!(
            "the server read {received} bytes, not the {} written",
            WRITES * WRITE_SIZE
        )));
    }
    conn.close()?;
    // Let the close finish before the next run, so the trace tells the runs apart.
    thread::sleep(Duration::from_millis(100));
    Ok(segments)
}
