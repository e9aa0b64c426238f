//! Frames over a byte stream: a serial port in the daemon, an in-memory pipe in tests.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Decoder, Frame, FrameError};

/// The stream ended or failed: for a serial port, it was unplugged or its device vanished.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `read` returned 0 bytes: tokio-serial does this forever once the other end is gone.
    #[error("the port was closed (end of stream)")]
    Closed,
    /// A read or write failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A framed, cancel-safe connection: partial frames survive a dropped `next` future.
pub struct Link<S> {
    stream: S,
    decoder: Decoder,
    ready: VecDeque<Result<Frame, FrameError>>,
    buffer: Box<[u8; 512]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Link<S> {
        Link {
            stream,
            decoder: Decoder::new(),
            ready: VecDeque::new(),
            buffer: Box::new([0; 512]),
        }
    }

    /// The next frame, or what was wrong with the next bytes. Cancel-safe.
    pub async fn next(&mut self) -> Result<Result<Frame, FrameError>, LinkError> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(item);
            }
            let read = self.stream.read(&mut self.buffer[..]).await?;
            if read == 0 {
                return Err(LinkError::Closed);
            }
            let mut decoded = Vec::new();
            self.decoder.feed(&self.buffer[..read], &mut decoded);
            self.ready.extend(decoded);
        }
    }

    /// The frames already read and decoded, without waiting for more. A terminal that fell
    /// behind finds several polls here and answers only the newest.
    pub fn take_buffered(&mut self) -> Vec<Result<Frame, FrameError>> {
        self.ready.drain(..).collect()
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), LinkError> {
        self.stream.write_all(&frame::encode(frame)).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends raw bytes (tests inject noise with this).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}
