//! `thread`: a new thread per connection. Cheaper than a process, but each still costs a stack
//! and a kernel task; at shutdown the accept loop waits for every thread to finish.

use std::io;
use std::thread::JoinHandle;

use super::{accept_loop, serve_blocking, Server};

pub fn run(mut server: Server) -> io::Result<()> {
    let ready = server.ready.take();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let result = accept_loop(
        &server,
        ready,
        |arrival| {
            let ctx = server.ctx.clone();
            let spawned = std::thread::Builder::new()
                .name("zocalo-conn".into())
                .spawn(move || serve_blocking(arrival, &ctx));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::warn!("cannot spawn a thread: {e}"),
            }
            threads.retain(|t| !t.is_finished());
        },
        || {},
        &[],
    );
    server.stop_accepting();
    for t in threads {
        let _ = t.join();
    }
    result
}
