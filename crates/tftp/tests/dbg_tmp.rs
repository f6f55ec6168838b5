use std::io::Cursor;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use zocalo_tftp::*;
#[test]
fn dbg() {
    let root = std::env::temp_dir().join("zt-dbg");
    let _ = std::fs::create_dir_all(&root);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let storage = Arc::new(DirStorage::new(&root).unwrap());
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    std::thread::spawn(move || {
        serve(
            socket,
            storage,
            ServerConfig {
                write_allowed: true,
                ..Default::default()
            },
            Model::Iterative,
            &f2,
        )
    });
    let data: Vec<u8> = (0..200_513).map(|i| i as u8).collect();
    let opts = ClientOptions {
        blksize: Some(1428),
        windowsize: Some(8),
        tsize: true,
        timeout: Some(2),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let d = ClientOptions::default();
    put(addr, "f0", &mut Cursor::new(&data), None, &d).unwrap();
    eprintln!("put0 {:?}", t.elapsed());
    get(addr, "f0", &mut Vec::new(), &d).unwrap();
    eprintln!("get0 {:?}", t.elapsed());
    put(
        addr,
        "f",
        &mut Cursor::new(&data),
        Some(data.len() as u64),
        &opts,
    )
    .unwrap();
    eprintln!("put {:?}", t.elapsed());
    let mut back = Vec::new();
    let r = get(addr, "f", &mut back, &opts);
    eprintln!("get {:?} {:?} {}", t.elapsed(), r, back.len());
}
