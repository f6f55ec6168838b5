//! The drivers: what carries a session's actions out over real sockets. The blocking driver
//! serves one connection with poll(2) on its own thread or process; the event loop serves many
//! on one thread. Both step the same door, the same connection and the same data channel, and
//! hand storage work to the same places.
//!
//! - [`accept`]: from ACCEPT to the session (listeners, PROXY headers, admission, the 421),
//!   once for every driver;
//! - [`blocking`]: one connection per thread or process (iterative, process, thread, pool);
//! - [`event_loop`]: every connection of a loop (select, poll, epoll) and [`workers`], its
//!   threads for storage and authentication calls;
//! - [`connection`]: one session's control connection, stepped by both drivers;
//! - [`data`]: the data channel, a non-blocking state machine both drivers step;
//! - [`proxy`]: reading a trusted balancer's PROXY header.

pub mod accept;
pub mod blocking;
pub mod connection;
pub mod data;
pub mod event_loop;
pub mod proxy;
pub mod workers;
