//! zocalo: the drivers around the sans-IO core of `zocalo-proto`, in floors. Each folder
//! imports only from the folders below it:
//!
//! 1. [`serve`] (assembly: binds, builds, runs the model; `--inetd`), [`commands`] (the
//!    client side), [`cli`] and [`config`] (the command line and `serve`'s settings);
//! 2. [`models`]: how a connection gets a driver (iterative, process, thread, pool, select,
//!    poll, epoll);
//! 3. [`services`]: what runs beside the server (admin channel, agent, metrics HTTP, TFTP)
//!    and where (a thread or a process of its own);
//! 4. [`drivers`]: the door (ACCEPT to session), the blocking driver, the event loop, the data
//!    channel, PROXY headers;
//! 5. [`state`]: accounts, limits, the cluster's shared state, the session table, reloads;
//! 6. [`sys`]: sockets, TLS streams, signals;
//! 7. [`ops`] (counters, logs, systemd) and [`storage`] (the local file system; S3 is the
//!    `zocalo-s3` crate): the ground.

mod cli;
mod commands;
mod config;
mod drivers;
mod models;
mod ops;
mod serve;
mod services;
mod state;
mod storage;
mod sys;

use std::io::BufRead;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command, CtlRequest, UserCommand};
use crate::commands::Failure;
use crate::config::Settings;

/// The `zocalo` command: parses the command line and runs what it asks for.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result: Result<(), Failure> = match cli.command {
        Command::Serve(flags) => {
            let given = matches.subcommand_matches("serve").map(cli::given_on_command_line);
            Settings::load(*flags, &given.unwrap_or_default())
        }
        .and_then(|settings| {
            crate::ops::logs::init(settings.json_logs(), settings.log_file.as_deref())
                .map_err(|e| format!("cannot open the log file: {e}"))?;
            match settings.inetd {
                true => crate::serve::run_inetd(settings),
                false => crate::serve::run(settings),
            }
            .map_err(|e| e.to_string())
        })
        .map_err(Failure::from),
        Command::Tftp(args) => {
            let _ = crate::ops::logs::init(false, None);
            crate::commands::tftp(args).map_err(Failure::from)
        }
        Command::Get(args) => commands::get(args),
        Command::Put(args) => commands::put(args),
        Command::Ls(args) => commands::ls(args),
        Command::Mirror(args) => commands::mirror(args),
        Command::Bench(args) => commands::bench(*args),
        Command::Ctl { socket, request } => ctl(&socket, request).map_err(Failure::from),
        Command::Cert { out, name, force, .. } => crate::sys::tls::self_signed(&out, &name, force)
            .map(|()| {
                let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
                println!("wrote {} and {}", cert.display(), key.display())
            })
            .map_err(|e| Failure::from(e.to_string())),
        Command::User(command) => user(command).map_err(Failure::from),
        Command::Console(command) => console(command).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // The message may quote a server's reply: no escape sequence reaches the terminal.
            eprintln!("zocalo: {}", zocalo_client::ops::printable(&f.message));
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
        CtlRequest::Undrain => "undrain".to_string(),
        CtlRequest::Quota { user, recount: false } => format!("quota {user}"),
        CtlRequest::Quota { user, recount: true } => format!("quota {user} recount"),
    };
    let answer = crate::services::admin::request(socket, &text)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    match answer.strip_prefix("error: ") {
        Some(e) => Err(e.trim().to_string()),
        None => {
            print!("{answer}");
            Ok(())
        }
    }
}

/// `zocalo console user|token NAME`: prints the table for the config file.
fn console(command: cli::ConsoleCommand) -> Result<(), String> {
    use crate::services::console::auth::{random_token, token_digest, Role};
    let role = |r: Role| if r == Role::Admin { "admin" } else { "view" };
    match command {
        cli::ConsoleCommand::User { name, role: r } => {
            let hash = crate::state::passwords::hash_password(&read_password()?)?;
            println!("[[console-user]]\nname = {name:?}\nhash = {hash:?}\nrole = {:?}", role(r));
        }
        cli::ConsoleCommand::Token { name, role: r } => {
            let token = random_token();
            eprintln!("token (shown only now): {token}");
            let sha = token_digest(&token);
            println!("[[console-token]]\nname = {name:?}\nsha256 = {sha:?}\nrole = {:?}", role(r));
        }
    }
    Ok(())
}

/// `zocalo user ...`.
fn user(command: UserCommand) -> Result<(), String> {
    use crate::state::users::{edit_users, Change, Edit};
    let change = |fields: cli::UserFields, password: Option<String>| Change {
        password,
        home: fields.home,
        perm: fields.perm,
        pairs: fields.set,
    };
    let (file, name, edit) = match command {
        UserCommand::Add { name, file, mut fields, read_only } => {
            if read_only {
                fields.perm = Some(crate::state::policy::Perm::Read);
            }
            (file, name, Edit::Add(change(fields, Some(read_password()?))))
        }
        UserCommand::Set { name, file, fields, password } => {
            let password = if password { Some(read_password()?) } else { None };
            (file, name, Edit::Set(change(fields, password)))
        }
        UserCommand::Del { name, file } => (file, name, Edit::Del),
        UserCommand::List { file } => (file, String::new(), Edit::List),
    };
    let (out, note) = edit_users(&file.users, &name, edit)?;
    print!("{out}");
    if !note.is_empty() {
        eprint!("zocalo: {note}");
    }
    Ok(())
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
