//! `tapnet demo zero-window`: a reader that stops reading (the book's "Zero Window
//! Errors"). Its receive buffer fills, it advertises a window of zero (RFC 9293 §3.8.6),
//! the writer's send buffer fills behind it and its write blocks; the writer probes the
//! closed window (RFC 9293 §3.8.6.1, RFC 1122 §4.2.2.17) with backoff until the reader
//! reads again and the window reopens.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use stack::{TcpListener, TcpStream};

use super::{DemoArgs, Lab, PORT, SERVER};

/// The reader's receive buffer: the largest window it can advertise.
const READ_BUFFER: usize = 8 << 10;
/// The writer's send buffer.
const WRITE_BUFFER: usize = 8 << 10;
/// What the writer sends in all: four times what both buffers hold.
const TOTAL: usize = 32 << 10;
/// How long the writer's blocked write waits before its deadline passes.
const WRITE_DEADLINE: Duration = Duration::from_millis(500);

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let server_addr = SERVER;
    let listener = lab
        .server
        .listen_config()
        .read_buffer(READ_BUFFER)
        .listen(server_addr)?;
    let Some(client) = &lab.client else {
        return on_tap(lab, listener);
    };
    lab.say(&format!(
        "The server listens on {server_addr} with a receive buffer of {READ_BUFFER} bytes: \
         the largest window it can offer. It will accept the connection and then not read."
    ));
    let conn = client
        .dialer()
        .write_buffer(WRITE_BUFFER)
        .timeout(Duration::from_secs(5))
        .dial(server_addr)?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();

    lab.say(&format!(
        "The client writes {TOTAL} bytes, with a write deadline {} ms away. Watch the \
         server's `win` shrink as its buffer fills, down to win 0.",
        WRITE_DEADLINE.as_millis()
    ));
    conn.set_write_deadline(Some(Instant::now() + WRITE_DEADLINE))?;
    let started = Instant::now();
    let mut queued = 0;
    let blocked = loop {
        match (&conn).write(&data[queued..]) {
            Ok(n) => queued += n,
            Err(e) => break e,
        }
        if queued == TOTAL {
            return Err(io::Error::other(format!(
                "the client wrote all {TOTAL} bytes without blocking: the window never closed"
            )));
        }
    };
    if blocked.kind() != io::ErrorKind::TimedOut {
        return Err(io::Error::new(
            blocked.kind(),
            format!("the blocked write failed, but not by its deadline: {blocked}"),
        ));
    }
    let info = conn.info()?;
    if info.peer_window != 0 {
        return Err(io::Error::other(format!(
            "the write blocked, but the server's window is {} bytes, not 0",
            info.peer_window
        )));
    }
    lab.say(&format!(
        "The write returned after {} ms: \"{blocked}\". {queued} bytes were queued: \
         {} sit in the server's full receive buffer and {} in the client's send buffer. \
         The server advertises win 0, so the client may not send any more.",
        started.elapsed().as_millis(),
        accepted.info()?.recv_queue,
        info.send_queue,
    ));
    lab.say(
        "But the window might reopen and the ACK saying so be lost. So the client probes: \
         after one RTO (smoltcp's minimum, 1 s, here) it pushes one byte past the closed \
         window. The server drops it and answers with its window, still 0.",
    );
    wait_for(Duration::from_secs(5), || {
        Ok(conn.info()?.zero_window_probes >= 1)
    })
    .map_err(|e| io::Error::other(format!("no zero-window probe was sent within 5 s ({e})")))?;
    let first = Instant::now();
    let sent = conn.info()?.segments_out;
    lab.say("The client backs off: the next probe waits twice as long.");
    wait_for(Duration::from_secs(5), || {
        Ok(conn.info()?.segments_out > sent)
    })
    .map_err(|e| {
        io::Error::other(format!(
            "no second zero-window probe was sent within 5 s of the first ({e})"
        ))
    })?;
    if conn.info()?.peer_window != 0 {
        return Err(io::Error::other(
            "the window reopened while the server was not reading",
        ));
    }
    lab.say(&format!(
        "The second probe came {:.1} s after the first.",
        first.elapsed().as_secs_f64()
    ));

    lab.say(
        "The server reads again. As its buffer drains it tells the client, with a window \
         update, that the window is open; the client sends the rest.",
    );
    let writer = {
        let conn = conn.try_clone()?;
        let rest = data[queued..].to_vec();
        thread::spawn(move || -> io::Result<()> {
            conn.set_write_deadline(Some(Instant::now() + Duration::from_secs(10)))?;
            (&conn).write_all(&rest)?;
            conn.shutdown(Shutdown::Write)
        })
    };
    let received = read_to_end(&accepted, Duration::from_secs(10))?;
    writer
        .join()
        .map_err(|_| io::Error::other("the writer thread panicked"))??;
    if received.len() != TOTAL {
        return Err(io::Error::other(format!(
            "the server read {} bytes, not the {TOTAL} the client wrote",
            received.len()
        )));
    }
    if received != data {
        return Err(io::Error::other(
            "the bytes the server read differ from those written",
        ));
    }
    lab.say(&format!(
        "The server read all {TOTAL} bytes, in order and intact. Nothing was lost: the \
         writer only waited."
    ));
    conn.close()?;
    accepted.close()?;
    drop(listener);
    lab.finish(&[
        "A reader that stops reading fills its receive buffer and advertises win 0.",
        "The writer's send buffer fills next, and its write blocks: a write deadline ends it \
         with \"i/o timeout\", the bytes queued so far stay queued.",
        "A closed window is probed with one byte, at growing intervals, so a lost window \
         update cannot deadlock the connection (RFC 9293 §3.8.6.1).",
        "When the reader reads, the window reopens and every byte arrives: flow control \
         slows the writer, it loses nothing.",
    ])
}

/// With `--tap`: a kernel writer into our reader, which stops reading for a while.
fn on_tap(lab: Lab, listener: TcpListener) -> io::Result<ExitCode> {
    lab.say(&format!(
        "The server listens on 10.0.0.2:{PORT} with a receive buffer of {READ_BUFFER} bytes. \
         On the kernel side, run: head -c 100000 /dev/zero | nc -N 10.0.0.2 {PORT}  \
         (and tcpdump -ni TAP port {PORT})"
    ));
    let (conn, peer) = listener.accept_timeout(Duration::from_secs(60))?;
    lab.say(&format!(
        "{peer} connected. The server does not read: its buffer fills and it advertises win 0."
    ));
    wait_for(
        Duration::from_secs(10),
        || Ok(conn.info()?.recv_window == 0),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "the server's window did not close within 10 s: did the kernel side send \
             more than {READ_BUFFER} bytes? ({e})"
        ))
    })?;
    lab.say(
        "Win 0. For the next 3 s the kernel probes the closed window (Linux sends a bare \
         ACK with an old sequence number) and the server answers each with win 0.",
    );
    thread::sleep(Duration::from_secs(3));
    lab.say("The server reads again: the window reopens and the rest flows.");
    let received = read_to_end(&conn, Duration::from_secs(30))?;
    lab.say(&format!("The server read {} bytes.", received.len()));
    conn.close()?;
    drop(listener);
    lab.finish(&[
        "A reader that stops reading advertises win 0; the kernel's writer probes it.",
        "When the reader reads again, the window reopens and every byte arrives.",
    ])
}

/// Reads `conn` to its end, within `limit` in all.
fn read_to_end(conn: &TcpStream, limit: Duration) -> io::Result<Vec<u8>> {
    conn.set_read_deadline(Some(Instant::now() + limit))?;
    let mut received = Vec::new();
    let mut reader = conn;
    reader.read_to_end(&mut received).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading after {} bytes: {e}", received.len()),
        )
    })?;
    Ok(received)
}

/// Polls `cond` until it holds, for at most `limit`; the error says it did not.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> io::Result<bool>) -> io::Result<()> {
    let end = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still not so after {} ms", limit.as_millis()),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
