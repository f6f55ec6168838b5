//! The `zocalo` command: parses flags and hands over to the library.

use std::io::BufRead;
use std::process::ExitCode;

use clap::Parser;
use zocalo::cli::{Cli, Command, CtlRequest, Settings, UserCommand};
use zocalo::commands::{self, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Failure> = match cli.command {
        Command::Serve(args) => Settings::resolve(&args)
            .and_then(|settings| {
                zocalo::ops::logs::init(settings.json_logs, settings.log_file.as_deref())
                    .map_err(|e| format!("cannot open the log file: {e}"))?;
                match args.inetd {
                    true => zocalo::serve::run_inetd(settings),
                    false => zocalo::serve::run(settings),
                }
                .map_err(|e| e.to_string())
            })
            .map_err(Failure::from),
        Command::Tftp(args) => {
            let _ = zocalo::ops::logs::init(false, None);
            zocalo::commands::tftp(args).map_err(Failure::from)
        }
        Command::Get(args) => commands::get(args),
        Command::Put(args) => commands::put(args),
        Command::Ls(args) => commands::ls(args),
        Command::Mirror(args) => commands::mirror(args),
        Command::Bench(args) => commands::bench(*args),
        Command::Ctl { socket, request } => ctl(&socket, request).map_err(Failure::from),
        Command::Cert { out, name, force, .. } => zocalo::tls::self_signed(&out, &name, force)
            .map(|()| {
                let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
                println!("wrote {} and {}", cert.display(), key.display())
            })
            .map_err(|e| Failure::from(e.to_string())),
        Command::User(UserCommand::Add { name, users, home, read_only }) => read_password()
            .and_then(|pw| zocalo::users::add_user(&users, &name, &pw, &home, !read_only))
            .map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("zocalo: {}", f.message);
            ExitCode::from(f.code.max(1))
        }
    }
}

fn ctl(socket: &std::path::Path, request: CtlRequest) -> Result<(), String> {
    let text = match request {
        CtlRequest::Status => "status".to_string(),
        CtlRequest::Kick { session } => format!("kick {session}"),
        CtlRequest::Reload => "reload".to_string(),
        CtlRequest::Drain => "drain".to_string(),
    };
    let answer = zocalo::ops::admin::request(socket, &text)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    match answer.strip_prefix("error: ") {
        Some(e) => Err(e.trim().to_string()),
        None => {
            print!("{answer}");
            Ok(())
        }
    }
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err("empty password on standard input".into());
    }
    Ok(pw)
}
