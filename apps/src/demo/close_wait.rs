//! `tapnet demo close-wait`: a server that forgets to close, as in Listing 4-27 of
//! *Network Programming with Go*. Its handler reads until the peer's FIN ends the stream
//! and returns without closing, so the connection sits in CLOSE-WAIT (RFC 9293 §3.6:
//! the peer has closed; this side has not) for as long as the server runs: the stack's
//! CLOSE-WAIT warning fires, and the socket table marks it. Then the fixed handler, which
//! closes when it is done: CLOSE-WAIT → LAST-ACK → CLOSED at once.

use std::io::{self, Read};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stack::{SocketEntry, StackConfig, State, TcpListener, TcpStream};

use super::close::print_table;
use super::{DemoArgs, Lab, PORT, SERVER};

/// The stack's default CLOSE-WAIT warning, 30 s, is too long for a demo: unless the user
/// gives `--close-wait-warning`, the demo warns after this.
const SHORT_WARNING: Duration = Duration::from_secs(1);

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| StackConfig {
        close_wait_warning: SHORT_WARNING,
        ..c
    })?;
    let warning = lab.server.config().close_wait_warning;
    let server_addr = SERVER;
    let listener = lab.server.listen(server_addr)?;
    lab.say(&format!(
        "The server listens on {server_addr}. Its handler is Listing 4-27's: read until an \
         error or the end of the stream, then return, without closing the connection. In \
         Go the forgotten net.Conn keeps its file descriptor open; here the server keeps \
         the TcpStream, which nothing closes: the same leak."
    ));
    let leaked = client_round(&lab, &listener)?;
    buggy_handler(&leaked)?;
    let state = leaked.info()?.state;
    if state != State::CloseWait {
        return Err(io::Error::other(format!(
            "the buggy handler returned but its connection is in {state}, not CLOSE-WAIT"
        )));
    }
    lab.say(&format!(
        "The handler read the end of the stream and returned. The client's FIN was \
         acknowledged, so the connection is in CLOSE-WAIT, and nothing will move it on: \
         only the server's close would. The stack warns about a CLOSE-WAIT older than {:.1} s \
         (--close-wait-warning).",
        warning.as_secs_f64()
    ));
    let deadline = Instant::now() + warning + Duration::from_secs(2);
    while !lab.server.sockets().iter().any(|e| {
        matches!(
            e,
            SocketEntry::Conn {
                close_wait_overdue: true,
                ..
            }
        )
    }) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "the server's socket table did not mark the connection in CLOSE-WAIT within \
                 {:.1} s (the warning is set at {:.1} s)",
                (warning + Duration::from_secs(2)).as_secs_f64(),
                warning.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.say(
        "The warning fired: the stack logged it on stderr (\"in CLOSE-WAIT for ...: the \
         peer closed, but the application has not closed its side\"), and the socket table \
         marks the connection. `tapnet ss -a` on a running tapnet shows the same table.",
    );
    print_table(&lab, "server", &lab.server);
    if let Some(client) = &lab.client {
        print_table(&lab, "client", client);
        lab.say(
            "The client's end waits in FIN-WAIT-2 for a FIN that will not come (the stack \
             gives up on it after 60 s, as Linux does). A server that leaks like this \
             collects one CLOSE-WAIT per client until it runs out of descriptors.",
        );
    } else {
        lab.say("On the kernel side, ss -tan shows the client in FIN-WAIT-2.");
    }

    lab.say(
        "The fix: the handler closes the connection when it is done (in Go, defer \
         c.Close() as the goroutine starts). A second client, the fixed handler.",
    );
    let conn = client_round(&lab, &listener)?;
    let peer = conn.peer_addr()?;
    fixed_handler(conn)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.server.sockets().iter().any(|e| e.peer() == Some(peer)) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the fixed handler's connection did not close within 5 s (its FIN was not \
                 acknowledged)",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.say(
        "CLOSE-WAIT lasted only as long as the handler took to notice the end of the \
         stream; its close sent the server's FIN (LAST-ACK), and the client's ACK ended \
         the connection (CLOSED). Only the leaked connection is left in the table:",
    );
    print_table(&lab, "server", &lab.server);
    lab.say(
        "Closing the leaked one too, as the end of the process would (the kernel closes a \
         dead process's descriptors):",
    );
    let peer = leaked.peer_addr()?;
    leaked.close()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.server.sockets().iter().any(|e| e.peer() == Some(peer)) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the leaked connection did not close within 5 s (its FIN was not \
                 acknowledged)",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(listener);
    lab.finish(&[
        "The peer's FIN puts the server in CLOSE-WAIT; only the server's own close ends it.",
        "A handler that returns without closing leaves the connection in CLOSE-WAIT for \
         good: the warning fires and the socket table marks it.",
        "Closing when done (defer c.Close()) takes it through LAST-ACK to CLOSED at once.",
    ])
}

/// One client: on the wire, our client dials, sends a line and closes; with `--tap`, the
/// user runs a kernel client. Returns the server's end of the connection.
fn client_round(lab: &Lab, listener: &TcpListener) -> io::Result<TcpStream> {
    let Some(client) = &lab.client else {
        lab.say(&format!(
            "On the kernel side, run: echo hello | nc -N 10.0.0.2 {PORT}  (and ss -tan \
             afterwards to see its side)"
        ));
        let (conn, peer) = listener.accept_timeout(Duration::from_secs(60))?;
        lab.say(&format!("{peer} connected."));
        return Ok(conn);
    };
    let conn = client.dial_timeout(listener.local_addr()?, Duration::from_secs(5))?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    lab.say("A client connects, sends a line and closes its side (FIN).");
    io::Write::write_all(&mut &conn, b"hello\n")?;
    conn.close()?;
    Ok(accepted)
}

/// Listing 4-27's handler: reads until an error or the end of the stream, and returns
/// without closing the connection. (Bounded, so that the demo cannot hang.)
fn buggy_handler(c: &TcpStream) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 1024];
    loop {
        match (&*c).read(&mut buf) {
            Ok(0) => return Ok(()), // Go: err == io.EOF, return: c is never closed.
            Ok(_) => {}             // handle(buf[:n])
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(io::Error::other(
                    "the client's FIN did not reach the server within 10 s",
                ));
            }
            Err(_) => return Ok(()),
        }
    }
}

/// The fix: the handler owns the connection and closes it when it is done.
fn fixed_handler(c: TcpStream) -> io::Result<()> {
    let result = buggy_handler(&c);
    c.close()?; // Go: defer c.Close()
    result
}
