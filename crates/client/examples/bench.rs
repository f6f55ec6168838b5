//! `cargo run --release -p zocalo-client --example bench -- URL [flags]`: the benchmark without
//! the `zocalo` binary, with the same flags as `zocalo bench` (see `bench/compare.sh`).

use std::process::ExitCode;
use std::time::Duration;

use zocalo_client::bench::{self, BenchOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, opts) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("usage error: {e}");
            return ExitCode::from(2);
        }
    };
    match bench::run(&url, &opts, &mut std::io::stdout()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(zocalo_client::exit_code(&e) as u8)
        }
    }
}

fn parse(args: &[String]) -> Result<(String, BenchOptions), String> {
    let mut opts = BenchOptions::default();
    let mut url = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--json" => opts.json = true,
            "--create-listing" => opts.create_listing = true,
            "--scenario" => opts.scenarios.push(value()?.parse()?),
            "--label" => opts.label = Some(value()?),
            "--clients" => opts.clients = num(&value()?)?,
            "--concurrency" => {
                opts.concurrency = value()?.split(',').map(num).collect::<Result<_, _>>()?
            }
            "--sessions" => opts.sessions = num(&value()?)?,
            "--idle" => opts.idle = num(&value()?)?,
            "--big-size" => opts.big_size = num(&value()?)?,
            "--multi-size" => opts.multi_size = num(&value()?)?,
            "--small-size" => opts.small_size = num(&value()?)?,
            "--list-entries" => opts.list_entries = num(&value()?)?,
            "--server-pid" => opts.server_pid = Some(num(&value()?)?),
            "--timeout" => opts.timeout = Duration::from_secs(num(&value()?)?),
            "--poller" => opts.backend = value()?.parse().map_err(|e| format!("{e}"))?,
            "--report" => opts.report = Some(value()?.into()),
            other if url.is_none() && !other.starts_with("--") => url = Some(other.to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((url.ok_or("missing URL")?, opts))
}

fn num<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("bad number {text:?}"))
}
