//! The PROXY protocol header parser: any bytes give an answer (never a panic); a whole header
//! never claims more bytes than it was given or than the limit; the header alone parses to the
//! same answer (nothing after it is needed); a v2 header re-encoded parses back to its addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zocalo_proto::proxy::{encode_v2, parse, Parsed, MAX_V2};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete(header)) => {
            assert!(header.len <= data.len() && header.len <= MAX_V2);
            assert_eq!(parse(&data[..header.len]), Ok(Parsed::Complete(header)));
            if header.addrs.is_some() {
                let again = encode_v2(header.addrs);
                let Ok(Parsed::Complete(back)) = parse(&again) else {
                    panic!("an encoded header does not parse");
                };
                assert_eq!(back.addrs.map(|a| a.source.port()), header.addrs.map(|a| a.source.port()));
            }
        }
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_V2),
        Err(_) => {}
    }
});
