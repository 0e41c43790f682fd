//! `tapnet demo linger`: what close does with data not yet delivered, under the three
//! linger settings (Go's `SetLinger`, the socket option `SO_LINGER`):
//!
//! 1. the default (no linger): close returns at once and the stack delivers the rest,
//!    then the FIN, in the background;
//! 2. linger 0: close aborts (RFC 9293 §3.10.4 ABORT): an RST goes out and the data still
//!    queued is discarded;
//! 3. a bounded linger against a reader that never reads: close waits for the data to be
//!    acknowledged, up to the bound, then resets and says the data was not delivered.
//!
//! Each round starts the same way: the server's receive buffer is small (2 KiB) and its
//! reader is stalled, so the client's 6 KiB fill the server's window and 4 KiB wait in
//! the client's send buffer when it closes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stack::{Stack, State, TcpListener, TcpStream};

use super::{DemoArgs, Lab, SERVER};

/// The server's receive buffer: the largest window it can advertise.
const SERVER_BUFFER: usize = 2048;
/// What the client writes before it closes.
const DATA: usize = 6144;
/// The bounded linger of the third round.
/// (The first zero-window probe goes out about 1 s after the window closes: well inside.)
const LINGER: Duration = Duration::from_millis(1500);

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let client = lab.client()?;
    let server_addr = SERVER;
    let listener = lab
        .server
        .listen_config()
        .read_buffer(SERVER_BUFFER)
        .listen(server_addr)?;
    lab.say(&format!(
        "The server listens on {server_addr} with a {SERVER_BUFFER}-byte receive buffer. In \
         each round the client writes {DATA} bytes to a reader that has not read yet: \
         {SERVER_BUFFER} fill the server's window, the rest waits at the client. Then the \
         client closes."
    ));

    lab.say("Round 1: the default, no linger.");
    let (conn, accepted) = stalled(&lab, client, &listener)?;
    let queued = conn.info()?.send_queue;
    let started = Instant::now();
    conn.close()?;
    let took = started.elapsed();
    lab.say(&format!(
        "close() returned Ok in {:.1} ms with {queued} bytes still queued: the stack owns \
         them now and delivers them, then the FIN, in the background. The reader resumes.",
        ms(took)
    ));
    accepted.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    (&accepted)
        .read_to_end(&mut got)
        .map_err(|e| io::Error::new(e.kind(), format!("round 1: reading to the end: {e}")))?;
    if got.len() != DATA {
        return Err(io::Error::other(format!(
            "round 1: the reader got {} bytes of {DATA} before the end of the stream",
            got.len()
        )));
    }
    lab.say(&format!(
        "The reader got all {} bytes, then the end of the stream (the FIN).",
        got.len()
    ));
    let peer = accepted.peer_addr()?;
    accepted.close()?;
    wait_gone(&lab.server, peer, "round 1")?;

    lab.say("Round 2: linger 0.");
    let (conn, accepted) = stalled(&lab, client, &listener)?;
    let queued = conn.info()?.send_queue;
    conn.set_linger(Some(Duration::ZERO))?;
    let started = Instant::now();
    conn.close()?;
    let took = started.elapsed();
    lab.say(&format!(
        "close() returned Ok in {:.1} ms and sent an RST instead of a FIN: the {queued} \
         bytes still queued were discarded, and the connection is gone at once (no \
         TIME-WAIT).",
        ms(took)
    ));
    let result = read_after_reset(&accepted)?;
    lab.say(&format!(
        "The reader's next reads: {result}. What had reached the server's buffer is \
         still there to read; the {queued} bytes that never left the client are lost, and \
         the stream ends in an error, not in an end of stream."
    ));
    drop(accepted);

    lab.say(&format!(
        "Round 3: linger {:.1} s, and the reader never reads.",
        LINGER.as_secs_f64()
    ));
    let (conn, accepted) = stalled(&lab, client, &listener)?;
    let queued = conn.info()?.send_queue;
    conn.set_linger(Some(LINGER))?;
    lab.say(&format!(
        "close() sends the FIN after the data and waits for all of it to be acknowledged, \
         {:.1} s at most. The server's window stays closed; the client probes it.",
        LINGER.as_secs_f64()
    ));
    let started = Instant::now();
    let result = conn.close();
    let took = started.elapsed();
    let Err(err) = result else {
        return Err(io::Error::other(format!(
            "round 3: close() with a {:.1} s linger returned Ok against a stalled reader \
             ({queued} bytes were queued)",
            LINGER.as_secs_f64()
        )));
    };
    if took < LINGER || took > LINGER + Duration::from_secs(1) {
        return Err(io::Error::other(format!(
            "round 3: close() returned after {:.3} s, not at the linger bound of {:.1} s: {err}",
            took.as_secs_f64(),
            LINGER.as_secs_f64()
        )));
    }
    lab.say(&format!(
        "close() returned after {:.3} s ({:?}): {err}",
        took.as_secs_f64(),
        err.kind()
    ));
    let result = read_after_reset(&accepted)?;
    lab.say(&format!("The server's next reads: {result}."));
    drop(accepted);
    drop(listener);
    lab.finish(&[
        "Default linger: close returns at once; the stack still delivers the data and the \
         FIN (here all 6144 bytes arrived).",
        "Linger 0: close sends RST ([R.]) and discards what was queued; the peer sees a \
         reset, not an end of stream.",
        "A bounded linger makes close wait for the acknowledgment of every byte; past the \
         bound it resets and returns an error, so the caller knows the data was lost.",
    ])
}

/// Connects, writes [`DATA`] to a reader that does not read, and waits (bounded) until the
/// server's window is closed. Returns the client's and the server's ends.
fn stalled(
    lab: &Lab,
    client: &Stack,
    listener: &TcpListener,
) -> io::Result<(TcpStream, TcpStream)> {
    let conn = client.dial_timeout(listener.local_addr()?, Duration::from_secs(5))?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    (&conn).write_all(&[b'x'; DATA])?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let info = conn.info()?;
        if info.peer_window == 0 && info.send_queue == DATA - SERVER_BUFFER {
            break;
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "the server's window did not close within 3 s ({} bytes queued at the \
                 client, window {})",
                info.send_queue, info.peer_window
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.say(&format!(
        "The server's window is 0: {SERVER_BUFFER} bytes sit unread in its buffer, {} wait \
         at the client.",
        DATA - SERVER_BUFFER
    ));
    Ok((conn, accepted))
}

/// Waits (bounded) for the peer's reset to close `conn`, then reads it to its end, and
/// says what the reads returned.
fn read_after_reset(conn: &TcpStream) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while conn.state() != State::Closed {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "no reset reached the server within 2 s of the client's close (it is in {})",
                conn.state()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) => return Ok(format!("{total} bytes, then the end of the stream")),
            Ok(n) => total += n,
            Err(e) if total > 0 => return Ok(format!("{total} bytes, then the error \"{e}\"")),
            Err(e) => return Ok(format!("the error \"{e}\"")),
        }
    }
}

/// Waits (bounded) until `stack` no longer holds the connection to `peer`.
fn wait_gone(stack: &Stack, peer: SocketAddr, round: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.sockets().iter().any(|e| e.peer() == Some(peer)) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{round}: the server's connection to {peer} did not close within 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A duration in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
