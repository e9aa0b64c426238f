//! Serial terminals (hardware/PROTOCOL.md): point-to-point over USB-serial, or polled on an
//! RS-485 bus.

pub mod frame;
