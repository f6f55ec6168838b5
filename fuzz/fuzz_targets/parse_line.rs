//! The control-line path: arbitrary bytes through the line buffer and the command parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zocalo_proto::command;
use zocalo_proto::line::LineBuffer;

fuzz_target!(|data: &[u8]| {
    let _ = command::parse(data);
    let _ = command::eprt(&String::from_utf8_lossy(data));
    let _ = command::port(&String::from_utf8_lossy(data));
    let mut buf = LineBuffer::default();
    for chunk in data.chunks(7) {
        if buf.room() == 0 {
            break;
        }
        buf.extend(&chunk[..chunk.len().min(buf.room())]);
        while let Some(line) = buf.next_line() {
            let _ = command::parse(&line);
        }
    }
});
