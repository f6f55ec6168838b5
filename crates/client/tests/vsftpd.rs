//! The client against vsftpd (Debian's package), run the inetd way: the test accepts each
//! connection on a port-0 listener and hands the socket to a fresh `vsftpd CONFIG` as its
//! standard input and output. No port races and no waiting for a daemon to come up.
//!
//! vsftpd knows no MLSD, so these tests also exercise the LIST fallback; with TLS it requires
//! the data connections to resume the control connection's session (`require_ssl_reuse`).

mod common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{pattern, TempDir};
use zocalo_client::ftp::{Client, ClientOptions, DataMode};
use zocalo_client::ops::{self, exit_code, OpOptions, Progress};
use zocalo_client::tls::TlsOptions;
use zocalo_client::FtpUrl;

const VSFTPD: &str = "/usr/sbin/vsftpd";

/// A vsftpd "superserver": one vsftpd process per accepted connection.
struct Vsftpd {
    authority: String,
    root: TempDir,
    cert: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Vsftpd {
    fn start(tls: Option<&str>) -> Vsftpd {
        let root = TempDir::new("vsftpd");
        let public = root.path().join("pub");
        fs::create_dir(&public).unwrap();
        set_mode(&public, 0o777);
        set_mode(root.path(), 0o755);
        let cert = tls.map(|_| make_cert(root.path()));
        let conf = root.path().join("vsftpd.conf");
        fs::write(&conf, config(root.path(), tls, cert.as_deref())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, children) = (stop.clone(), children.clone());
            std::thread::spawn(move || accept_loop(listener, &conf, &stop, &children))
        };
        Vsftpd { authority, root, cert, stop, children, acceptor: Some(acceptor) }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.authority)
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.authority); // wakes the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    conf: &Path,
    stop: &AtomicBool,
    children: &Mutex<Vec<Child>>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let input = OwnedFd::from(conn.try_clone().unwrap());
        let child = Command::new(VSFTPD)
            .arg(conf)
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(OwnedFd::from(conn)))
            .stderr(Stdio::null())
            .spawn()
            .expect("vsftpd runs (apt-get install vsftpd)");
        children.lock().unwrap().push(child);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A self-signed certificate for 127.0.0.1, made with the openssl command.
fn make_cert(dir: &Path) -> PathBuf {
    let cert = dir.join("cert.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    cert
}

fn config(root: &Path, tls: Option<&str>, cert: Option<&Path>) -> String {
    let mut conf = format!(
        "listen=NO\nlisten_ipv6=NO\nanonymous_enable=YES\nlocal_enable=NO\n\
         ftp_username=daemon\nnopriv_user=nobody\nanon_root={}\nno_anon_password=YES\n\
         write_enable=YES\nanon_upload_enable=YES\nanon_mkdir_write_enable=YES\n\
         anon_other_write_enable=YES\nanon_umask=022\nseccomp_sandbox=NO\n\
         secure_chroot_dir=/var/run/vsftpd/empty\npasv_enable=YES\nport_enable=YES\n\
         connect_from_port_20=NO\nxferlog_enable=NO\nsyslog_enable=NO\n",
        root.display()
    );
    if let (Some(mode), Some(cert)) = (tls, cert) {
        conf.push_str(&format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n\
             force_anon_data_ssl=YES\nrequire_ssl_reuse=YES\nssl_ciphers=HIGH\n\
             rsa_cert_file={}\nrsa_private_key_file={}\nimplicit_ssl={}\n",
            cert.display(),
            cert.with_file_name("key.pem").display(),
            if mode == "implicit" { "YES" } else { "NO" }
        ));
    }
    conf
}

fn opts(mode: DataMode) -> OpOptions {
    OpOptions {
        client: ClientOptions {
            mode,
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
        resume: false,
        progress: Progress::Never,
        delete: false,
    }
}

fn tls_opts(server: &Vsftpd, explicit: bool) -> OpOptions {
    let mut o = opts(DataMode::Passive);
    o.client.explicit_tls = explicit;
    o.client.tls = TlsOptions { cacert: server.cert.clone(), insecure: false };
    o
}

fn roundtrip(server: &Vsftpd, scheme: &str, o: &OpOptions) {
    let local = TempDir::new("vs-local");
    let data = pattern(2 * 1024 * 1024 + 5);
    let src = local.path().join("v.bin");
    fs::write(&src, &data).unwrap();
    assert_eq!(ops::put(&src, &server.url(scheme, "/pub/"), o).unwrap(), data.len() as u64);
    assert_eq!(fs::read(server.root.path().join("pub/v.bin")).unwrap(), data);
    let dest = local.path().join("back.bin");
    ops::get(&server.url(scheme, "/pub/v.bin"), Some(&dest), o).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn vsftpd_passive_and_active() {
    let server = Vsftpd::start(None);
    roundtrip(&server, "ftp", &opts(DataMode::Passive));
    roundtrip(&server, "ftp", &opts(DataMode::Active));
}

#[test]
fn vsftpd_list_fallback_and_mirror() {
    let server = Vsftpd::start(None);
    fs::create_dir_all(server.root.path().join("pub/d/e")).unwrap();
    fs::write(server.root.path().join("pub/d/e/f.txt"), b"deep").unwrap();
    fs::write(server.root.path().join("pub/d/g h.txt"), b"spaced").unwrap();
    let local = TempDir::new("vs-mirror");
    let summary = ops::mirror(&server.url("ftp", "/pub/d"), local.path(), &opts(DataMode::Passive));
    let summary = summary.unwrap();
    assert_eq!((summary.files, summary.bytes), (2, 10));
    assert_eq!(fs::read(local.path().join("e/f.txt")).unwrap(), b"deep");
    assert_eq!(fs::read(local.path().join("g h.txt")).unwrap(), b"spaced");
}

#[test]
fn vsftpd_missing_file_is_exit_code_5() {
    let server = Vsftpd::start(None);
    let local = TempDir::new("vs-err");
    let err = ops::get(
        &server.url("ftp", "/pub/nope"),
        Some(&local.path().join("x")),
        &opts(DataMode::Passive),
    );
    let err = err.unwrap_err();
    assert_eq!(exit_code(&err), 5, "{err}");
    assert!(err.to_string().contains("550"), "{err}");
}

#[test]
fn vsftpd_explicit_tls_resumes_data_sessions() {
    let server = Vsftpd::start(Some("explicit"));
    let o = tls_opts(&server, true);
    roundtrip(&server, "ftp", &o);
    let url = FtpUrl::parse(&server.url("ftp", "/")).unwrap();
    let mut client = Client::open(&url, &o.client).unwrap();
    assert!(client.is_tls());
    assert!(client.list("/pub").unwrap().contains("v.bin"));
    assert_eq!(client.data_resumed(), Some(true), "rustls resumed the control session");
    client.list("/pub").unwrap();
    assert_eq!(client.data_resumed(), Some(true), "and again on the next data connection");
    client.quit().unwrap();
}

#[test]
fn vsftpd_implicit_tls() {
    let server = Vsftpd::start(Some("implicit"));
    roundtrip(&server, "ftps", &tls_opts(&server, false));
}

#[test]
fn vsftpd_tls_refuses_an_untrusted_certificate() {
    let server = Vsftpd::start(Some("explicit"));
    let other = TempDir::new("other-ca");
    let mut o = tls_opts(&server, true);
    o.client.tls.cacert = Some(make_cert(other.path()));
    let err = ops::ls(&server.url("ftp", "/"), &o, &mut Vec::new()).unwrap_err();
    assert_eq!(exit_code(&err), 3, "{err}");
    o.client.tls = TlsOptions { cacert: None, insecure: true };
    ops::ls(&server.url("ftp", "/"), &o, &mut Vec::new()).unwrap();
}
