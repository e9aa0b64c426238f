//! A terminal played frame by frame: the test writes exactly the frames a rule is about (a
//! late answer, a 17-byte firmware string, a bad CRC) to the terminal end of a [`super::pty::Line`]
//! and reads the gateway's answers. Blocking, with deadlines.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use votegate::sources::serial::frame::{self, Decoder, Frame, FrameError};

/// The terminal end of a line, opened raw.
pub struct RawTerminal {
    port: File,
    decoder: Decoder,
    ready: VecDeque<Result<Frame, FrameError>>,
}

impl RawTerminal {
    /// Opens the line's terminal end, dropping whatever the gateway sent before.
    pub fn open(path: &Path) -> RawTerminal {
        let port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .expect("open the terminal end");
        // SAFETY: tcflush on a valid tty fd.
        unsafe { libc::tcflush(port.as_raw_fd(), libc::TCIFLUSH) };
        RawTerminal {
            port,
            decoder: Decoder::new(),
            ready: VecDeque::new(),
        }
    }

    /// Sends a frame.
    pub fn send(&mut self, frame: &Frame) {
        self.send_raw(&frame::encode(frame));
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.port.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(err) => panic!("write: {err}"),
            }
        }
    }

    /// The next frame (or decoding error) from the gateway within `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<Result<Frame, FrameError>> {
        let deadline = Instant::now() + limit;
        let mut buffer = [0u8; 256];
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            match self.port.read(&mut buffer) {
                Ok(n) if n > 0 => {
                    let mut out = Vec::new();
                    self.decoder.feed(&buffer[..n], &mut out);
                    self.ready.extend(out);
                    continue;
                }
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) => panic!("read: {err}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next valid frame within `limit`; panics on anything else.
    pub fn expect(&mut self, limit: Duration) -> Frame {
        match self.next(limit) {
            Some(Ok(frame)) => frame,
            other => panic!("expected a frame from the gateway, got {other:?}"),
        }
    }

    /// Asserts that the gateway sends nothing for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        if let Some(item) = self.next(quiet) {
            panic!("expected no answer, got {item:?}");
        }
    }
}
