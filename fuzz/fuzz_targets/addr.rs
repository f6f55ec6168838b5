//! PORT, EPRT and EPSV arguments, and the PASV/EPSV reply parsers clients use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zocalo_proto::command;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = command::port(&text);
    let _ = command::eprt(&text);
    let _ = command::pasv_reply_addr(&text);
    let _ = command::epsv_reply_port(&text);
    let mut line = b"EPSV ".to_vec();
    line.extend_from_slice(data);
    let _ = command::parse(&line);
});
