//! The `zocalo` command; everything is in the library, whose floors `lib.rs` describes.

fn main() -> std::process::ExitCode {
    zocalo::main()
}
