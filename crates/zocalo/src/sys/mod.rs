//! The operating system's side: sockets and the descriptor reserve ([`net`]), TLS streams
//! ([`tls`]), and signals for stopping and reloading ([`shutdown`]).

pub mod net;
pub mod shutdown;
pub mod tls;
