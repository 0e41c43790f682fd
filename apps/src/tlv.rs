//! `tapnet tlv-server` and `tapnet tlv-client`: the book's type-length-value protocol.
//!
//! # The wire format
//! Every message is a 5-byte header and a payload:
//!
//! ```text
//! +------+------+------+------+------+-----------------------+
//! | type |    length (u32, big-endian, bytes of payload)    |  payload ...
//! +------+------+------+------+------+-----------------------+
//! ```
//!
//! The type is [`BINARY_TYPE`] (1, any bytes) or [`STRING_TYPE`] (2, UTF-8 text). Nothing
//! else separates messages: a stream is one message after another, and the end of the
//! stream between two messages is the end of the conversation.
//!
//! # The codec
//! [`Payload::encode`] writes a message to any `Write`; [`decode`] reads one from any
//! `Read`. Two traps of the book's version are closed here:
//! - A stream `Read` may return fewer bytes than asked (a TCP segment at a time). The
//!   book's `r.Read(buf)` takes that short read for the whole payload; [`decode`] reads
//!   exactly the declared length however many reads it takes, and a stream that ends
//!   before that is an error ([`DecodeError::Truncated`]), never a short message.
//! - The length is 32 bits, so a header alone could ask for 4 GB. A length over the
//!   limit (10 MB by default, [`DEFAULT_MAX_PAYLOAD`]) is refused from the header, before
//!   anything is allocated; and the payload buffer grows with the bytes that actually
//!   arrive, so a peer that claims 10 MB and sends nothing costs nothing.
//!
//! # The apps
//! `tlv-server` decodes each message, prints it, and echoes it back encoded; a bad
//! message closes that connection only. `tlv-client` sends the messages given on the
//! command line, in that order, and checks each echo.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, ArgMatches, Args, FromArgMatches};
use stack::{Conn, Network};

use crate::args;
use crate::net::{self, App, Ctx, NetArgs};

/// The type byte of a [`Payload::Binary`].
pub const BINARY_TYPE: u8 = 1;
/// The type byte of a [`Payload::String`].
pub const STRING_TYPE: u8 = 2;
/// The header's size: one type byte and a 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;
/// The largest payload accepted when no `--max-payload` is given: 10 MB, as the book's
/// `MaxPayloadSize`.
pub const DEFAULT_MAX_PAYLOAD: u32 = 10 << 20;

/// How much of the payload buffer is reserved ahead of the bytes that arrived.
const READ_CHUNK: usize = 64 * 1024;
/// How many payload bytes the server prints before it truncates.
const SHOW_BYTES: usize = 32;

// ---------------------------------------------------------------------------------------
// The codec
// ---------------------------------------------------------------------------------------

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Type 1: any bytes.
    Binary(Vec<u8>),
    /// Type 2: UTF-8 text.
    String(String),
}

impl Payload {
    /// The type byte on the wire.
    pub fn type_byte(&self) -> u8 {
        match self {
            Payload::Binary(_) => BINARY_TYPE,
            Payload::String(_) => STRING_TYPE,
        }
    }

    /// The type's name, as printed: `Binary` or `String`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Payload::Binary(_) => "Binary",
            Payload::String(_) => "String",
        }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Binary(b) => b,
            Payload::String(s) => s.as_bytes(),
        }
    }

    /// Writes the message (header, then payload) to `w`. Fails, writing nothing, if the
    /// payload does not fit the 32-bit length.
    pub fn encode<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        let bytes = self.bytes();
        let len = u32::try_from(bytes.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {} payload of {} bytes does not fit the 4-byte length",
                    self.type_name(),
                    bytes.len()
                ),
            )
        })?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = self.type_byte();
        header[1..].copy_from_slice(&len.to_be_bytes());
        w.write_all(&header)?;
        w.write_all(bytes)?;
        w.flush()
    }

    /// A one-line view for humans: the type, the size, and the value (binary in hex,
    /// text quoted and escaped), truncated after a few dozen bytes.
    pub fn show(&self) -> String {
        let n = self.bytes().len();
        let value = match self {
            Payload::Binary(b) => {
                let hex: String = b
                    .iter()
                    .take(SHOW_BYTES)
                    .map(|x| format!("{x:02x}"))
                    .collect();
                if n > SHOW_BYTES {
                    format!("{hex}...")
                } else {
                    hex
                }
            }
            Payload::String(s) => {
                let shown: String = s.chars().take(SHOW_BYTES).collect();
                if shown.len() < s.len() {
                    format!("{shown:?}...")
                } else {
                    format!("{shown:?}")
                }
            }
        };
        let unit = if n == 1 { "byte" } else { "bytes" };
        format!("{} ({n} {unit}) {value}", self.type_name())
    }
}

/// Why a message could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The type byte is neither 1 (Binary) nor 2 (String).
    UnknownType(u8),
    /// The header declares a payload over the limit; nothing was allocated for it.
    TooLarge {
        /// The length the header declares.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// A String payload is not valid UTF-8.
    InvalidUtf8(std::str::Utf8Error),
    /// The stream ended inside a message.
    Truncated {
        /// What was being read: "header" or "payload".
        part: &'static str,
        /// How many bytes of it arrived.
        got: usize,
        /// How many it should have had.
        want: usize,
    },
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownType(t) => write!(
                f,
                "unknown message type {t} (expected {BINARY_TYPE} for Binary or {STRING_TYPE} for String)"
            ),
            DecodeError::TooLarge { size, max } => write!(
                f,
                "payload of {size} bytes exceeds the maximum of {max} bytes (refused from the header)"
            ),
            DecodeError::InvalidUtf8(e) => write!(f, "String payload is not valid UTF-8: {e}"),
            DecodeError::Truncated { part, got, want } => write!(
                f,
                "stream ended inside a message: {got} of {want} {part} bytes arrived"
            ),
            DecodeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::InvalidUtf8(e) => Some(e),
            DecodeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> io::Error {
        let kind = match &e {
            DecodeError::Io(inner) => inner.kind(),
            DecodeError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Reads one message from `r`, with payloads of at most `max` bytes.
///
/// Returns `Ok(None)` when the stream ends cleanly before a message starts. Reads exactly
/// the header and the declared length, across as many reads as the stream needs; the
/// stream ending inside a message is [`DecodeError::Truncated`]. A length over `max` is
/// refused from the header alone ([`DecodeError::TooLarge`]), with nothing allocated.
pub fn decode<R: Read + ?Sized>(r: &mut R, max: u32) -> Result<Option<Payload>, DecodeError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header).map_err(DecodeError::Io)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(DecodeError::Truncated {
            part: "header",
            got,
            want: HEADER_LEN,
        });
    }
    let typ = header[0];
    if typ != BINARY_TYPE && typ != STRING_TYPE {
        return Err(DecodeError::UnknownType(typ));
    }
    let size = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if size > max {
        return Err(DecodeError::TooLarge { size, max });
    }
    let want = size as usize;
    // Grow the buffer with what arrives, a chunk at a time, rather than trusting the
    // header with the whole allocation up front.
    let mut payload = Vec::with_capacity(want.min(READ_CHUNK));
    while payload.len() < want {
        let start = payload.len();
        let end = want.min(start + READ_CHUNK);
        payload.resize(end, 0);
        let got = read_full(r, &mut payload[start..]).map_err(DecodeError::Io)?;
        if got < end - start {
            return Err(DecodeError::Truncated {
                part: "payload",
                got: start + got,
                want,
            });
        }
    }
    Ok(Some(match typ {
        BINARY_TYPE => Payload::Binary(payload),
        _ => Payload::String(
            String::from_utf8(payload).map_err(|e| DecodeError::InvalidUtf8(e.utf8_error()))?,
        ),
    }))
}

/// Fills `buf` from `r` unless the stream ends first (`read_exact`, telling how much
/// arrived); returns how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses a payload limit: a size (see [`args::size`]) that fits the 4-byte length.
fn parse_limit(s: &str) -> Result<u32, String> {
    u32::try_from(args::size(s)?)
        .map_err(|_| format!("size {s:?} is over the 4-byte length's limit of 4294967295"))
}

// ---------------------------------------------------------------------------------------
// tlv-server
// ---------------------------------------------------------------------------------------

/// Options of `tapnet tlv-server`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example (tapnet on tap0 as 10.0.0.2, a kernel client on 10.0.0.1):
  tapnet tlv-server --port 4000 --tap tap0 --addr 10.0.0.2/24
  tapnet tlv-client 10.0.0.2:4000 --kernel --string hello --binary 00ff10

Each message is printed as PEER TYPE (N bytes) VALUE and echoed back. A message over
--max-payload, of an unknown type, or a String that is not UTF-8 is logged as an error
and closes that client's connection; other clients carry on."
)]
pub struct ServerOpts {
    /// The TCP port to listen on (all addresses)
    #[arg(short, long, default_value_t = 4000)]
    pub port: u16,
    /// The largest payload accepted, in bytes (suffixes K, M, G: powers of 1024); a
    /// header declaring more closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD, value_parser = parse_limit)]
    pub max_payload: u32,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Runs `tapnet tlv-server` until SIGINT or SIGTERM.
pub fn run_server(args: ServerOpts) -> io::Result<ExitCode> {
    net::run(&args.net, Server(args.port, args.max_payload))
}

struct Server(u16, u32);

impl App for Server {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        let Server(port, max) = self;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listener = net
            .listen(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("tlv-server: listen on {addr}: {e}")))?;
        let local = stack::Listener::local_addr(&listener)?;
        log::info!("tlv-server listening on {local} ({describe}), payloads up to {max} bytes");
        let stopping = ctx.clone();
        net::serve(listener, ctx, move |conn, peer| {
            serve_conn(conn, peer, max, &stopping)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Decodes, prints and echoes messages until the peer ends the stream or sends
/// something that is not a valid message, then closes the connection.
fn serve_conn<C: Conn>(conn: C, peer: SocketAddr, max: u32, ctx: &Ctx) {
    log::info!("{peer}: connected");
    let mut reader = BufReader::new(conn);
    let mut count = 0u64;
    loop {
        match decode(&mut reader, max) {
            Ok(None) => {
                log::info!("{peer}: closed after {count} message(s)");
                break;
            }
            Ok(Some(payload)) => {
                count += 1;
                say!("{peer} {}", payload.show());
                if let Err(e) = payload.encode(reader.get_mut()) {
                    log::error!("{peer}: echoing message {count}: {e}; closing the connection");
                    break;
                }
            }
            // The stack going away under a shutdown is not the peer's fault.
            Err(_) if ctx.stopping() => {
                log::info!("{peer}: closed by the server's shutdown after {count} message(s)");
                break;
            }
            Err(e) => {
                log::error!("{peer}: message {}: {e}; closing the connection", count + 1);
                break;
            }
        }
    }
    if let Err(e) = reader.into_inner().close() {
        log::debug!("{peer}: close: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// tlv-client
// ---------------------------------------------------------------------------------------

/// A message given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `--string S`
    Text(String),
    /// `--binary HEX`
    Bytes(Vec<u8>),
    /// `--file F`: sent as Binary, read when it is sent.
    File(PathBuf),
}

/// `--binary`'s value: bytes written in hex.
#[derive(Clone, Debug)]
struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'-' | b'_'))
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!(
            "{s:?} has an odd number of hex digits: write each byte as two, such as 0a1b"
        ));
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    digits
        .chunks(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!(
                "{s:?} is not hex: {:?} is not a byte such as 0a or ff",
                String::from_utf8_lossy(pair)
            )),
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Hex)
}

/// The flags as clap sees them; [`ClientOpts`] puts the messages back in order.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("message").args(["strings", "binaries", "files"]).required(true).multiple(true)))]
#[command(
    after_help = "Example (a kernel server on 10.0.0.1, tapnet on tap0 as 10.0.0.2):
  tapnet tlv-server --kernel --port 4000
  tapnet tlv-client 10.0.0.1:4000 --tap tap0 --addr 10.0.0.2/24 \\
      --string 'Errors are values.' --binary 00ff10 --file ./photo.jpg

Messages are sent in the order given, one at a time; each echo is read back, printed
and compared. Exit status: 0 if every echo matched, 1 otherwise."
)]
struct ClientFlags {
    /// The server, as IPv4:PORT
    #[arg(value_name = "HOST:PORT", value_parser = args::target)]
    target: SocketAddr,
    /// Send S as a String message (may be repeated)
    #[arg(long = "string", value_name = "S")]
    strings: Vec<String>,
    /// Send bytes written in hex (`0a1b`, `0a:1b` or `0a 1b`) as a Binary message (may be
    /// repeated)
    #[arg(long = "binary", value_name = "HEX", value_parser = parse_hex)]
    binaries: Vec<Hex>,
    /// Send the contents of file F as a Binary message (may be repeated)
    #[arg(long = "file", value_name = "F")]
    files: Vec<PathBuf>,
    /// The largest payload sent or accepted back, in bytes (suffixes K, M, G: powers of
    /// 1024)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD, value_parser = parse_limit)]
    max_payload: u32,
    /// How long to wait for the connection, and for each message's echo (a bare number
    /// is seconds; units: ms, s)
    #[arg(long, value_name = "TIME", default_value = "10", value_parser = args::timeout)]
    timeout: Duration,
    #[command(flatten)]
    net: NetArgs,
}

/// Options of `tapnet tlv-client`, with the messages in command-line order.
#[derive(Debug)]
pub struct ClientOpts {
    /// The server.
    pub target: SocketAddr,
    /// What to send, in the order given.
    pub messages: Vec<Message>,
    /// The largest payload sent or accepted back.
    pub max_payload: u32,
    /// The connect timeout, and the time each exchange may take.
    pub timeout: Duration,
    /// Where to run.
    pub net: NetArgs,
}

impl FromArgMatches for ClientOpts {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = ClientFlags::from_arg_matches(matches)?;
        // clap keeps each flag's values apart; their indices give back the order in which
        // the user wrote them.
        let indices = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let mut ordered: Vec<(usize, Message)> = Vec::new();
        ordered.extend(
            indices("strings")
                .into_iter()
                .zip(flags.strings.into_iter().map(Message::Text)),
        );
        ordered.extend(
            indices("binaries")
                .into_iter()
                .zip(flags.binaries.into_iter().map(|h| Message::Bytes(h.0))),
        );
        ordered.extend(
            indices("files")
                .into_iter()
                .zip(flags.files.into_iter().map(Message::File)),
        );
        ordered.sort_by_key(|(i, _)| *i);
        Ok(ClientOpts {
            target: flags.target,
            messages: ordered.into_iter().map(|(_, m)| m).collect(),
            max_payload: flags.max_payload,
            timeout: flags.timeout,
            net: flags.net,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = ClientOpts::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ClientOpts {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        ClientFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        ClientFlags::augment_args_for_update(cmd)
    }
}

/// Runs `tapnet tlv-client`: exit 0 if every echo matched, 1 otherwise.
pub fn run_client(args: ClientOpts) -> io::Result<ExitCode> {
    let net_args = args.net.clone();
    net::run(&net_args, args)
}

impl ClientOpts {
    /// The payload a message sends, checked against the limit.
    fn payload(&self, message: &Message) -> io::Result<Payload> {
        let payload =
            match message {
                Message::Text(s) => Payload::String(s.clone()),
                Message::Bytes(b) => Payload::Binary(b.clone()),
                Message::File(path) => {
                    let size = fs::metadata(path)
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
                        .len();
                    if size > u64::from(self.max_payload) {
                        return Err(too_big(&path.display().to_string(), size, self.max_payload));
                    }
                    Payload::Binary(fs::read(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                    })?)
                }
            };
        let size = payload.bytes().len() as u64;
        if size > u64::from(self.max_payload) {
            return Err(too_big(payload.type_name(), size, self.max_payload));
        }
        Ok(payload)
    }
}

fn too_big(what: &str, size: u64, max: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: {size} bytes is over --max-payload {max}"),
    )
}

impl App for ClientOpts {
    fn run<N: Network>(self, net: N, ctx: &Ctx, describe: &str) -> io::Result<ExitCode> {
        // Every message is read and checked before anything is sent.
        let payloads = self
            .messages
            .iter()
            .map(|m| self.payload(m))
            .collect::<io::Result<Vec<Payload>>>()?;
        let target = self.target;
        log::info!("tlv-client: connecting to {target} ({describe})");
        let conn = net.dial_timeout(target, self.timeout)?;
        let closer = conn.try_clone()?;
        ctx.on_stop(move || {
            let _ = closer.close();
        });
        let mut reader = BufReader::new(conn);
        let total = payloads.len();
        let mut matched = 0;
        for (i, sent) in payloads.iter().enumerate() {
            let n = i + 1;
            reader
                .get_ref()
                .set_deadline(Some(Instant::now() + self.timeout))?;
            sent.encode(reader.get_mut())
                .map_err(|e| io::Error::new(e.kind(), format!("sending message {n}: {e}")))?;
            let echo = match decode(&mut reader, self.max_payload) {
                Ok(Some(echo)) => echo,
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "message {n}: {target} closed the connection instead of echoing \
                             (over its payload limit?); {matched} of {total} echoes matched"
                        ),
                    ));
                }
                Err(e) => {
                    let e = io::Error::from(e);
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "message {n}: reading the echo: {e}; {matched} of {total} echoes matched"
                        ),
                    ));
                }
            };
            if echo == *sent {
                matched += 1;
                say!("{n}: echo {} ok", echo.show());
            } else {
                say!("{n}: echo {} MISMATCH, sent {}", echo.show(), sent.show());
            }
        }
        let _ = reader.into_inner().close();
        say!("{matched} of {total} echoes matched");
        Ok(if matched == total {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn encoded(p: &Payload) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        out
    }

    /// A reader that hands out one byte per call, as a trickling TCP stream might.
    struct OneByte<R>(R);

    impl<R: Read> Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    /// A reader that serves `data`, then fails the test if read any further.
    struct Exactly(Cursor<Vec<u8>>);

    impl Read for Exactly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            assert!(
                n > 0 || buf.is_empty(),
                "read past the bytes it should have needed"
            );
            Ok(n)
        }
    }

    fn book_payloads() -> Vec<Payload> {
        vec![
            Payload::Binary(b"Clear is better than clever.".to_vec()),
            Payload::String("Errors are values.".into()),
            Payload::Binary(b"Don't panic.".to_vec()),
        ]
    }

    #[test]
    fn the_header_is_a_type_byte_and_a_big_endian_length() {
        assert_eq!(
            encoded(&Payload::String("hi".into())),
            [2, 0, 0, 0, 2, b'h', b'i']
        );
        let big = Payload::Binary(vec![7; 0x0001_0203]);
        assert_eq!(encoded(&big)[..5], [1, 0, 0x01, 0x02, 0x03]);
        assert_eq!(encoded(&Payload::Binary(vec![])), [1, 0, 0, 0, 0]);
    }

    #[test]
    fn messages_round_trip_one_after_another() {
        let mut payloads = book_payloads();
        payloads.push(Payload::Binary(vec![]));
        payloads.push(Payload::String(String::new()));
        payloads.push(Payload::String("héllo ✓".into()));
        payloads.push(Payload::Binary((0..=255).cycle().take(200_000).collect()));
        let stream: Vec<u8> = payloads.iter().flat_map(encoded).collect();
        let mut r = Cursor::new(stream);
        for p in &payloads {
            assert_eq!(
                decode(&mut r, DEFAULT_MAX_PAYLOAD).unwrap().as_ref(),
                Some(p)
            );
        }
        assert!(decode(&mut r, DEFAULT_MAX_PAYLOAD).unwrap().is_none());
    }

    #[test]
    fn a_reader_giving_one_byte_per_read_still_yields_whole_messages() {
        let payloads = book_payloads();
        let stream: Vec<u8> = payloads.iter().flat_map(encoded).collect();
        let mut r = OneByte(Cursor::new(stream));
        for p in &payloads {
            assert_eq!(
                decode(&mut r, DEFAULT_MAX_PAYLOAD).unwrap().as_ref(),
                Some(p)
            );
        }
        assert!(decode(&mut r, DEFAULT_MAX_PAYLOAD).unwrap().is_none());
    }

    #[test]
    fn a_1_gb_header_is_refused_from_the_header_alone() {
        // The book's TestMaxPayloadSize: nothing but the header is read, so nothing can
        // have been allocated for the payload.
        let mut r = Exactly(Cursor::new(vec![BINARY_TYPE, 0x40, 0, 0, 0]));
        match decode(&mut r, DEFAULT_MAX_PAYLOAD) {
            Err(DecodeError::TooLarge { size, max }) => {
                assert_eq!((size, max), (1 << 30, 10 << 20));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let e = decode(&mut Cursor::new([STRING_TYPE, 0xff, 0xff, 0xff, 0xff]), 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4294967295 bytes exceeds the maximum of 10"),
            "{e}"
        );
    }

    #[test]
    fn a_payload_exactly_at_the_limit_is_accepted() {
        let p = Payload::Binary(vec![9; 100]);
        assert_eq!(
            decode(&mut Cursor::new(encoded(&p)), 100).unwrap(),
            Some(p.clone())
        );
        assert!(matches!(
            decode(&mut Cursor::new(encoded(&p)), 99),
            Err(DecodeError::TooLarge { size: 100, max: 99 })
        ));
    }

    #[test]
    fn an_unknown_type_is_an_error_naming_it() {
        for typ in [0u8, 3, 255] {
            let mut r = Exactly(Cursor::new(vec![typ, 0, 0, 0, 1]));
            let e = decode(&mut r, DEFAULT_MAX_PAYLOAD).unwrap_err();
            assert!(
                matches!(e, DecodeError::UnknownType(t) if t == typ),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("unknown message type {typ}"))
            );
        }
    }

    #[test]
    fn a_string_that_is_not_utf8_is_an_error() {
        let e = decode(&mut Cursor::new([2, 0, 0, 0, 2, 0xff, 0xfe]), 100).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidUtf8(_)), "{e:?}");
        // The same bytes as Binary are fine.
        let p = decode(&mut Cursor::new([1, 0, 0, 0, 2, 0xff, 0xfe]), 100).unwrap();
        assert_eq!(p, Some(Payload::Binary(vec![0xff, 0xfe])));
    }

    #[test]
    fn the_end_of_stream_between_messages_is_clean_and_inside_one_is_an_error() {
        assert!(decode(&mut Cursor::new([]), 100).unwrap().is_none());
        let whole = encoded(&Payload::String("Errors are values.".into()));
        for cut in 1..whole.len() {
            let e = decode(&mut OneByte(Cursor::new(&whole[..cut])), 100).unwrap_err();
            let (part, got) = if cut < HEADER_LEN {
                ("header", cut)
            } else {
                ("payload", cut - HEADER_LEN)
            };
            match e {
                DecodeError::Truncated {
                    part: p, got: g, ..
                } => {
                    assert_eq!((p, g), (part, got), "cut at {cut}")
                }
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
        // A truncated payload longer than one read chunk reports all that arrived.
        let mut long = encoded(&Payload::Binary(vec![1; 3 * READ_CHUNK]));
        long.truncate(HEADER_LEN + 2 * READ_CHUNK + 5);
        let e = decode(&mut Cursor::new(long), DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert!(
            matches!(e, DecodeError::Truncated { part: "payload", got, want }
                if got == 2 * READ_CHUNK + 5 && want == 3 * READ_CHUNK),
            "{e:?}"
        );
    }

    #[test]
    fn interrupted_reads_are_retried() {
        struct Interrupting(bool, Cursor<Vec<u8>>);
        impl Read for Interrupting {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0 = !self.0;
                if self.0 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(2);
                self.1.read(&mut buf[..n])
            }
        }
        let p = Payload::String("again".into());
        let mut r = Interrupting(false, Cursor::new(encoded(&p)));
        assert_eq!(decode(&mut r, 100).unwrap(), Some(p));
    }

    #[test]
    fn show_prints_hex_or_quoted_text_truncated() {
        assert_eq!(
            Payload::Binary(vec![0, 0xff, 0x10]).show(),
            "Binary (3 bytes) 00ff10"
        );
        assert_eq!(
            Payload::String("a\"b".into()).show(),
            "String (3 bytes) \"a\\\"b\""
        );
        let long = Payload::Binary(vec![0xab; 100]).show();
        assert_eq!(
            long,
            format!("Binary (100 bytes) {}...", "ab".repeat(SHOW_BYTES))
        );
        let text = Payload::String("é".repeat(40)).show();
        assert!(
            text.ends_with("...") && text.starts_with("String (80 bytes) \""),
            "{text}"
        );
    }

    #[test]
    fn hex_sizes_and_timeouts_parse_or_say_why_not() {
        assert_eq!(parse_hex("00ff10").unwrap().0, [0, 0xff, 0x10]);
        assert_eq!(parse_hex("0A:1b 2c").unwrap().0, [0x0a, 0x1b, 0x2c]);
        assert_eq!(parse_hex("").unwrap().0, Vec::<u8>::new());
        assert!(parse_hex("abc").unwrap_err().contains("odd number"));
        assert!(parse_hex("zz").unwrap_err().contains("not hex"));
        assert!(parse_hex("é1").is_err());
        assert_eq!(parse_limit("10M"), Ok(10 << 20));
        assert!(parse_limit("4G").is_err());
    }
}
