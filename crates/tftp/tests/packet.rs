//! Parse and emit against byte vectors, one test per quirk.

use zocalo_tftp::packet::{OptionList, Request, MAX_REQUEST_LEN};
use zocalo_tftp::{ErrorCode, Mode, Options, Packet, ParseError};

fn round_trip(bytes: &[u8]) -> Packet<'_> {
    let packet = Packet::parse(bytes).expect("valid packet");
    let mut out = Vec::new();
    packet.emit(&mut out);
    assert_eq!(out, bytes, "emit must reproduce the wire bytes");
    assert_eq!(packet.buffer_len(), bytes.len());
    packet
}

#[test]
fn rrq_with_options() {
    let bytes = b"\x00\x01boot/x\x00octet\x00blksize\x001428\x00windowsize\x008\x00";
    let Packet::Rrq(req) = round_trip(bytes) else { panic!("not an RRQ") };
    assert_eq!((req.filename, req.mode), ("boot/x", Mode::Octet));
    let pairs: Vec<_> = req.options.iter().collect();
    assert_eq!(pairs, [("blksize", "1428"), ("windowsize", "8")]);
    let opts = Options::from_list(&req.options);
    assert_eq!((opts.blksize, opts.windowsize), (Some(1428), Some(8)));
}

#[test]
fn wrq_mode_is_case_insensitive() {
    let Ok(Packet::Wrq(req)) = Packet::parse(b"\x00\x02f\x00NetASCII\x00") else { panic!() };
    assert_eq!(req.mode, Mode::Netascii);
    assert!(req.options.is_empty());
    let mut out = Vec::new();
    Packet::Wrq(req).emit(&mut out);
    assert_eq!(out, b"\x00\x02f\x00netascii\x00");
}

#[test]
fn data_ack_error_oack() {
    assert_eq!(round_trip(b"\x00\x03\xff\xffabc"), Packet::Data { block: 65535, data: b"abc" });
    assert_eq!(round_trip(b"\x00\x03\x00\x01"), Packet::Data { block: 1, data: b"" });
    assert_eq!(round_trip(b"\x00\x04\x01\x02"), Packet::Ack { block: 258 });
    let err = round_trip(b"\x00\x05\x00\x01no such file\x00");
    assert_eq!(err, Packet::Error { code: ErrorCode::FILE_NOT_FOUND, message: "no such file" });
    let Packet::Oack(list) = round_trip(b"\x00\x06tsize\x0042\x00") else { panic!() };
    assert_eq!(list.find("TSIZE"), Some("42"));
}

#[test]
fn emitted_request_parses_back() {
    let options = OptionList::parse(b"timeout\x003\x00").unwrap();
    let req = Request { filename: "a b", mode: Mode::Octet, options };
    let mut out = Vec::new();
    Packet::Rrq(req).emit(&mut out);
    assert_eq!(out, b"\x00\x01a b\x00octet\x00timeout\x003\x00");
    assert_eq!(Packet::parse(&out), Ok(Packet::Rrq(req)));
}

fn parse_err(bytes: &[u8]) -> ParseError {
    Packet::parse(bytes).expect_err("must be rejected")
}

#[test]
fn truncated_packets() {
    for bytes in [&b""[..], b"\x00", b"\x00\x03\x00", b"\x00\x04\x00", b"\x00\x05\x00"] {
        assert_eq!(parse_err(bytes), ParseError::Truncated, "{bytes:?}");
    }
}

#[test]
fn unknown_opcodes() {
    assert_eq!(parse_err(b"\x00\x00x"), ParseError::UnknownOpcode(0));
    assert_eq!(parse_err(b"\x00\x07\x00\x00"), ParseError::UnknownOpcode(7));
    assert_eq!(parse_err(b"\xff\xff"), ParseError::UnknownOpcode(65535));
    assert_eq!(ParseError::UnknownOpcode(9).error_code(), ErrorCode::ILLEGAL_OPERATION);
}

#[test]
fn missing_nuls() {
    assert_eq!(parse_err(b"\x00\x01file"), ParseError::MissingNul);
    assert_eq!(parse_err(b"\x00\x01file\x00octet"), ParseError::MissingNul);
    assert_eq!(parse_err(b"\x00\x01f\x00octet\x00blksize\x00512"), ParseError::MissingNul);
    assert_eq!(parse_err(b"\x00\x05\x00\x00oops"), ParseError::MissingNul);
    assert_eq!(parse_err(b"\x00\x06tsize\x000"), ParseError::MissingNul);
}

#[test]
fn option_without_value() {
    let err = parse_err(b"\x00\x01f\x00octet\x00blksize\x00");
    assert_eq!(err, ParseError::OptionWithoutValue);
    assert_eq!(err.error_code(), ErrorCode::OPTION_NEGOTIATION);
}

#[test]
fn duplicate_options_ignore_case() {
    let err = parse_err(b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x001024\x00");
    assert_eq!(err, ParseError::DuplicateOption);
    assert_eq!(err.error_code(), ErrorCode::OPTION_NEGOTIATION);
}

#[test]
fn bad_modes_and_names() {
    assert_eq!(parse_err(b"\x00\x01f\x00binary\x00"), ParseError::UnknownMode);
    assert_eq!(parse_err(b"\x00\x01\x00octet\x00"), ParseError::EmptyFilename);
    assert_eq!(parse_err(b"\x00\x01\xff\xfe\x00octet\x00"), ParseError::NotText);
    assert_eq!(parse_err(b"\x00\x01f\x00octet\x00bl\xe9\x001\x00"), ParseError::NotText);
    let mail = Packet::parse(b"\x00\x01f\x00mail\x00");
    assert!(matches!(mail, Ok(Packet::Rrq(r)) if r.mode == Mode::Mail));
}

#[test]
fn oversized_packets() {
    let mut rrq = b"\x00\x01".to_vec();
    rrq.extend(vec![b'a'; MAX_REQUEST_LEN]);
    rrq.extend_from_slice(b"\x00octet\x00");
    assert_eq!(parse_err(&rrq), ParseError::Oversized);
    let mut data = b"\x00\x03\x00\x01".to_vec();
    data.resize(4 + 65465, 0);
    assert_eq!(parse_err(&data), ParseError::Oversized);
    data.truncate(4 + 65464);
    assert!(Packet::parse(&data).is_ok());
}

#[test]
fn trailing_bytes() {
    assert_eq!(parse_err(b"\x00\x04\x00\x01\x00"), ParseError::TrailingBytes);
    assert_eq!(parse_err(b"\x00\x05\x00\x01m\x00x"), ParseError::TrailingBytes);
}

#[test]
fn unknown_and_invalid_option_values_are_ignored() {
    let list = OptionList::parse(b"blksize\x004\x00timeout\x00300\x00foo\x00bar\x00tsize\x00x\x00")
        .unwrap();
    assert_eq!(Options::from_list(&list), Options::default());
    let list = OptionList::parse(b"blksize\x0099999\x00windowsize\x0070000\x00").unwrap();
    let opts = Options::from_list(&list);
    assert_eq!((opts.blksize, opts.windowsize), (Some(65535), Some(65535)));
}

/// Every prefix and every one-byte corruption of valid packets parses or fails, never panics.
#[test]
fn no_panic_on_mangled_input() {
    let samples: [&[u8]; 4] = [
        b"\x00\x01f\x00octet\x00blksize\x00512\x00tsize\x000\x00",
        b"\x00\x03\x00\x07hello",
        b"\x00\x05\x00\x02denied\x00",
        b"\x00\x06windowsize\x004\x00",
    ];
    let mut parsed = 0;
    for sample in samples {
        for end in 0..=sample.len() {
            parsed += usize::from(Packet::parse(&sample[..end]).is_ok());
        }
        for i in 0..sample.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut bytes = sample.to_vec();
                bytes[i] = byte;
                if let Ok(packet) = Packet::parse(&bytes) {
                    let mut out = Vec::new();
                    packet.emit(&mut out);
                    assert_eq!(out.len(), packet.buffer_len());
                }
            }
        }
    }
    assert!(parsed > 0);
}
