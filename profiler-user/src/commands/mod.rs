//! The commands, one module each: they wire the layers below together at the I/O edge (files,
//! signals, the kernel, child processes).
pub mod ci;
pub mod diff;
pub mod doctor;
pub mod flight_recorder;
pub mod record;
pub mod render;
pub mod replay;
pub mod watch;
