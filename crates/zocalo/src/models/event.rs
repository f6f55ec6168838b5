//! `select`, `poll`, `epoll[:N]`, `uring[:N]`: the notes' third kind of server, one thread watching
//! every connection ([`crate::drivers::event_loop`]). `epoll:N` and `uring:N` run N such loops,
//! each on its own listening socket bound with SO_REUSEPORT, so the kernel spreads connections
//! across them.

use std::io;

use zocalo_poller::Backend;

use super::{Listener, Server};
use crate::drivers::event_loop::{EventLoop, Shared};
use crate::sys::net;

pub fn run(mut server: Server, backend: Backend, loops: usize) -> io::Result<()> {
    let ready = server.ready.take();
    let mut extra = Vec::new();
    let listeners = std::mem::take(&mut server.listeners);
    for _ in 1..loops {
        let mut own = Vec::new();
        for l in &listeners {
            let sock = match server.inherited_listeners {
                true => l.sock.try_clone()?,
                false => net::listen(l.sock.local_addr()?, server.backlog, true)?,
            };
            own.push(Listener { sock, implicit_tls: l.implicit_tls, inherited: l.inherited });
        }
        extra.push(own);
    }
    let shared = |s: &Server| Shared {
        ctx: s.ctx.clone(),
        limits: s.limits.clone(),
        reserve: s.reserve.clone(),
    };
    let first = EventLoop::new(backend, shared(&server), listeners)?;
    let mut threads = Vec::new();
    for (i, listeners) in extra.into_iter().enumerate() {
        let event_loop = EventLoop::new(backend, shared(&server), listeners)?;
        let name = format!("zocalo-loop-{}", i + 1);
        threads.push(std::thread::Builder::new().name(name).spawn(move || event_loop.run())?);
    }
    if let Some(ready) = ready {
        ready();
    }
    let result = first.run();
    for t in threads {
        let _ = t.join();
    }
    result
}
