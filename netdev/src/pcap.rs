//! [`PcapFile`]: a [`crate::FrameSink`] that writes the classic libpcap format.
//!
//! The format is a 24-byte file header (link type 1, Ethernet) followed by a 16-byte
//! record header and the bytes of each frame; `tcpdump -r`, `tshark -r` and Wireshark
//! read it. Written by hand because the one crate for it, `pcap-file`, offers no way to
//! flush, and a capture must be complete on disk whenever the driver sleeps, so a
//! process killed by a signal leaves a readable file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Direction, FrameSink};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535;

/// Writes every frame it is shown to a pcap file, timestamped with the wall clock.
///
/// A write error is logged once and stops the capture; it never stops the stack.
pub struct PcapFile {
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    name: String,
}

impl PcapFile {
    /// Creates (or truncates) the file at `path` and writes the pcap header.
    ///
    /// # Examples
    /// ```
    /// let path = std::env::temp_dir().join(format!("doc-{}.pcap", std::process::id()));
    /// let pcap = netdev::PcapFile::create(&path)?;
    /// # drop(pcap); std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(path: impl AsRef<Path>) -> io::Result<PcapFile> {
        let path = path.as_ref();
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
        PcapFile::from_writer(file, path.display().to_string())
    }

    /// Writes the capture to any writer; `name` is used in error messages.
    pub fn from_writer(out: impl Write + Send + 'static, name: String) -> io::Result<PcapFile> {
        let mut out = BufWriter::with_capacity(64 * 1024, Box::new(out) as Box<dyn Write + Send>);
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes()); // version 2.4
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay zero.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        out.flush()?;
        Ok(PcapFile {
            out: Some(out),
            name,
        })
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let captured = frame.len().min(SNAPLEN as usize);
        let mut record = [0u8; 16];
        record[0..4].copy_from_slice(&(now.as_secs() as u32).to_le_bytes());
        record[4..8].copy_from_slice(&now.subsec_micros().to_le_bytes());
        record[8..12].copy_from_slice(&(captured as u32).to_le_bytes());
        record[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        out.write_all(&record)?;
        out.write_all(&frame[..captured])
    }

    fn fail(&mut self, e: io::Error) {
        log::error!("pcap {}: {e}; capture stopped", self.name);
        self.out = None;
    }
}

impl FrameSink for PcapFile {
    fn frame(&mut self, _direction: Direction, frame: &[u8]) {
        if let Err(e) = self.write(frame) {
            self.fail(e);
        }
    }

    fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(|out| out.flush()) {
            self.fail(e);
        }
    }
}

impl Drop for PcapFile {
    fn drop(&mut self) {
        FrameSink::flush(self);
    }
}
