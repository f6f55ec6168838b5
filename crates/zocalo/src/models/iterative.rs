//! `iterative`: the accepting thread serves each client itself, to the end, before it accepts
//! the next one. A second client waits in the listen backlog: the model's drawback, on show.

use std::io;

use super::{accept_loop, serve_blocking, Server};

pub fn run(mut server: Server) -> io::Result<()> {
    let ready = server.ready.take();
    let ctx = server.ctx.clone();
    accept_loop(&server, ready, |arrival| serve_blocking(arrival, &ctx), || {}, &[])
}
