//! Opening serial ports: the only file that touches tokio-serial.

use std::path::Path;

use tokio_serial::{
    ClearBuffer, DataBits, FlowControl, Parity, SerialPort, SerialPortBuilderExt, SerialStream,
    StopBits,
};

/// Why a port could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The device does not exist.
    #[error("{path} does not exist (is the adapter plugged in? see `ls -l /dev/serial/by-id/`)")]
    Missing {
        /// The configured path.
        path: String,
    },
    /// The daemon's user may not open it.
    #[error("permission denied on {path} (the daemon's user must be in the dialout group)")]
    Permission {
        /// The configured path.
        path: String,
    },
    /// Another program has it open (ports are opened exclusively).
    #[error("{path} is busy: another program (a running votegate, a serial console?) has it open")]
    Busy {
        /// The configured path.
        path: String,
    },
    /// Any other failure.
    #[error("cannot open {path}: {cause}")]
    Other {
        /// The configured path.
        path: String,
        /// The OS's reason.
        cause: String,
    },
}

fn builder(path: &str, baud: u32) -> tokio_serial::SerialPortBuilder {
    tokio_serial::new(path, baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
}

fn classify(path: &str, err: tokio_serial::Error) -> PortError {
    let path = path.to_string();
    match err.kind() {
        tokio_serial::ErrorKind::NoDevice => PortError::Missing { path },
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound) => PortError::Missing { path },
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
            PortError::Permission { path }
        }
        _ if err.description.contains("Device or resource busy") => PortError::Busy { path },
        _ => PortError::Other {
            path,
            cause: err.description,
        },
    }
}

/// Opens a port for async use, 8N1 without flow control, exclusively (TIOCEXCL). Whatever the
/// port received before it was opened is discarded: on a bus, polls queued up while nobody
/// listened would each get an answer, all of them stale.
pub fn open(path: &Path, baud: u32) -> Result<SerialStream, PortError> {
    let text = path.to_string_lossy();
    if !path.exists() {
        return Err(PortError::Missing {
            path: text.into_owned(),
        });
    }
    let stream = builder(&text, baud)
        .open_native_async()
        .map_err(|err| classify(&text, err))?;
    if let Err(err) = stream.clear(ClearBuffer::Input) {
        log::debug!(port:% = text; "cannot discard what the port received before: {err}");
    }
    Ok(stream)
}

/// Opens and closes a port at once: what `votegate check` does.
pub fn probe(path: &Path, baud: u32) -> Result<(), PortError> {
    let text = path.to_string_lossy();
    if !path.exists() {
        return Err(PortError::Missing {
            path: text.into_owned(),
        });
    }
    builder(&text, baud)
        .open()
        .map(drop)
        .map_err(|err| classify(&text, err))
}
