//! TFTP packets: parse arbitrary datagrams, and re-emit what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zocalo_tftp::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::parse(data) {
        let mut out = Vec::new();
        packet.emit(&mut out);
        assert!(Packet::parse(&out).is_ok(), "what we emit must parse");
    }
});
