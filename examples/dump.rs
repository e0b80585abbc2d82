//! cargo run --release --example dump [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Answers every request with `{"environ": {...}, "body_hex": "..."}`: see `sgi::debug::EnvironDump`
//! for the contract.

mod common;

fn main() -> std::process::ExitCode {
    common::serve(sgi::debug::EnvironDump)
}
