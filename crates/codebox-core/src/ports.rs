//! Ports of a box: a program inside listening on TCP, reached from outside through
//! [`CodeBox::connect_port`](crate::CodeBox::connect_port) or a server's
//! `/v1/sessions/{id}/ports/{port}/` route.
//!
//! The stream type uses `futures`' I/O traits so that this crate needs no runtime; a tokio
//! user adapts it with `tokio-util`'s `compat`.

use std::ops::RangeInclusive;
use std::pin::Pin;

use futures::io::{AsyncRead, AsyncWrite};

use crate::error::{CodeBoxError, Result};

/// The ports a box may expose: the unprivileged ones. Ports under 1024 are for system
/// services, which a box has none of; refusing them keeps `80` from meaning anything
/// surprising on a box that shares the host's network.
pub const PORT_RANGE: RangeInclusive<u32> = 1024..=65535;

/// A byte stream both ways to a program listening in a box.
pub trait PortIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + ?Sized> PortIo for T {}

/// A connection to a port of a box, as [`CodeBox::connect_port`](crate::CodeBox::connect_port)
/// gives it. Dropping it closes the connection.
pub type PortStream = Pin<Box<dyn PortIo>>;

/// The port `port` as a box's port, or [`InvalidInput`](crate::ErrorKind::InvalidInput) when it
/// is outside [`PORT_RANGE`]. Every layer (box, server, client) calls this one rule; it takes a
/// `u32` so that a value a `u16` cannot hold (say 70000 from a URL) is refused the same way.
pub fn check_port(port: u32) -> Result<u16> {
    if PORT_RANGE.contains(&port) {
        // The range's end is u16::MAX, so the conversion cannot fail.
        if let Ok(p) = u16::try_from(port) {
            return Ok(p);
        }
    }
    Err(CodeBoxError::invalid(format!(
        "port {port} is outside {}-{}: a box exposes only unprivileged ports",
        PORT_RANGE.start(),
        PORT_RANGE.end()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn only_unprivileged_ports_are_a_boxs() {
        assert_eq!(check_port(1024).unwrap(), 1024);
        assert_eq!(check_port(8000).unwrap(), 8000);
        assert_eq!(check_port(65535).unwrap(), 65535);
        for bad in [0, 22, 80, 1023, 65536, 70000, u32::MAX] {
            let err = check_port(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains("1024-65535"), "{err}");
        }
    }
}
