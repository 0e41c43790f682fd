//! `tapnet demo close`: the orderly close (RFC 9293 §3.6). Each side sends its own FIN
//! and has it acknowledged, so a connection closes in two halves: the client closes first
//! (FIN-WAIT-1, then FIN-WAIT-2 once its FIN is acknowledged), the server reads the end of
//! the stream and sits in CLOSE-WAIT until it closes too (LAST-ACK), and the side that
//! closed first ends in TIME-WAIT (RFC 9293 §3.6.1), holding the 4-tuple a while so that
//! a late segment of this connection is not taken for part of the next.
//!
//! [`print_table`], the socket table as narration, is shared with the other close demos.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use stack::{SocketEntry, Stack, State};

use super::{DemoArgs, Lab, PORT, SERVER};

/// How long the server waits between reading the end of the stream and closing, so that
/// CLOSE-WAIT and FIN-WAIT-2 can be seen.
const PAUSE: Duration = Duration::from_millis(300);

/// Runs the demo.
pub fn run(args: &DemoArgs) -> io::Result<ExitCode> {
    let lab = Lab::new(args, |c| c)?;
    let server_addr = SERVER;
    let listener = lab.server.listen(server_addr)?;
    lab.say(&format!("The server listens on {server_addr}."));
    let Some(client) = &lab.client else {
        lab.say(&format!(
            "On the kernel side, run: echo hello | nc -N 10.0.0.2 {PORT}  (-N: shut down \
             writing at the end of input, which sends the FIN). Watch with tcpdump -ni TAP \
             port {PORT}, and ss -tan state time-wait afterwards."
        ));
        let (conn, peer) = listener.accept_timeout(Duration::from_secs(60))?;
        lab.say(&format!("{peer} connected."));
        serve(&lab, conn, None)?;
        lab.say("The kernel client acknowledged our FIN: it is in TIME-WAIT now (ss -tan).");
        return lab.finish(&[
            "The kernel's FIN first: we went to CLOSE-WAIT and our reads returned the end of \
             the stream.",
            "Our close sent our FIN: LAST-ACK, then CLOSED when the kernel acknowledged it.",
            "The kernel client, which closed first, holds TIME-WAIT.",
        ]);
    };
    let conn = client.dial_timeout(server_addr, Duration::from_secs(5))?;
    let (accepted, _) = listener.accept_timeout(Duration::from_secs(5))?;
    lab.say("Connected. The client sends a line and closes its side.");
    (&conn).write_all(b"hello\n")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while conn.info()?.send_queue > 0 {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the server did not acknowledge the client's line within 2 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.say(
        "The line is acknowledged. The client closes: close() sends a FIN, FIN-WAIT-1 until it is acknowledged, then \
         FIN-WAIT-2, waiting for the server's FIN. A FIN takes a sequence number, as a SYN \
         does, so the server acknowledges it with seq + 1.",
    );
    conn.close()?;
    serve(&lab, accepted, Some(("client", client)))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !has_state(client, State::TimeWait) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the client did not reach TIME-WAIT within 2 s of the server's FIN",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.say(
        "The client acknowledged the server's FIN and is in TIME-WAIT: the closed \
         connection still holds its 4-tuple, so that a late segment is not taken for part \
         of a new connection, and so that it can ACK the FIN again if its ACK was lost.",
    );
    print_table(&lab, "client", client);
    lab.say(
        "(Linux holds TIME-WAIT for 60 s; smoltcp for 10 s. The server, which closed \
         second, has no TIME-WAIT: the last ACK ended it.)",
    );
    drop(listener);
    lab.finish(&[
        "Each side closes its own half with a FIN, and each FIN is acknowledged: four \
         segments (three when an ACK rides on a FIN).",
        "The side that closes first goes FIN-WAIT-1 → FIN-WAIT-2 → TIME-WAIT.",
        "The other side reads the end of the stream (read returns 0) in CLOSE-WAIT, and \
         stays there until it closes: then LAST-ACK → CLOSED.",
    ])
}

/// The server's side: reads to the end of the stream, pauses in CLOSE-WAIT (showing its
/// socket table, and the `peer` stack's if there is one), closes, and waits (bounded) for
/// the peer to acknowledge its FIN.
fn serve(lab: &Lab, conn: stack::TcpStream, peer: Option<(&str, &Stack)>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = Vec::new();
    (&conn)
        .read_to_end(&mut got)
        .map_err(|e| io::Error::new(e.kind(), format!("server reading to the end: {e}")))?;
    let state = conn.info()?.state;
    if state != State::CloseWait {
        return Err(io::Error::other(format!(
            "the server read the end of the stream but is in {state}, not CLOSE-WAIT"
        )));
    }
    lab.say(&format!(
        "The server read {} bytes, then read returned 0: the end of the stream. It is in \
         CLOSE-WAIT: the peer will send no more, but the server may still send. It waits \
         {} ms before closing.",
        got.len(),
        PAUSE.as_millis()
    ));
    std::thread::sleep(PAUSE);
    print_table(lab, "server", &lab.server);
    if let Some((who, stack)) = peer {
        print_table(lab, who, stack);
        lab.say(&format!(
            "The {who} is in FIN-WAIT-2: its FIN was acknowledged; it waits for the \
             server's. Its application has closed, so the stack holds it alone (an orphan)."
        ));
    }
    lab.say("The server closes: its FIN goes out, LAST-ACK until it is acknowledged.");
    let peer_addr = conn.peer_addr()?;
    conn.close()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .server
        .sockets()
        .iter()
        .any(|e| e.peer() == Some(peer_addr))
    {
        if Instant::now() >= deadline {
            return Err(io::Error::other(
                "the server's FIN was not acknowledged within 5 s (still in LAST-ACK)",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether `stack` holds a connection in `state`.
fn has_state(stack: &Stack, state: State) -> bool {
    stack.sockets().iter().any(|e| e.state() == state)
}

/// Prints `stack`'s socket table as narration, in the manner of `tapnet ss -a`: state,
/// queues, endpoints and time in the state, with a `!` on a CLOSE-WAIT past the warning.
pub(super) fn print_table(lab: &Lab, who: &str, stack: &Stack) {
    lab.say(&format!(
        "The {who}'s socket table (what `tapnet ss -a` shows):"
    ));
    lab.say(&format!(
        "  {:<12} {:>6} {:>6}  {:<16} {:<16} in state",
        "State", "Recv-Q", "Send-Q", "Local", "Peer"
    ));
    for entry in stack.sockets() {
        let (time, mark) = match &entry {
            SocketEntry::Listener { .. } => (String::new(), ""),
            SocketEntry::Conn {
                info,
                close_wait_overdue,
                ..
            } => (
                format!("{:.1} s", info.time_in_state.as_secs_f64()),
                if *close_wait_overdue {
                    "  ! CLOSE-WAIT past the warning"
                } else {
                    ""
                },
            ),
        };
        lab.say(&format!(
            "  {:<12} {:>6} {:>6}  {:<16} {:<16} {time}{mark}",
            entry.state().name(),
            entry.recv_q(),
            entry.send_q(),
            entry.local().to_string(),
            entry.peer().map_or("*".to_string(), |p| p.to_string()),
        ));
    }
}
