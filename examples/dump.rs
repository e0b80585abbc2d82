//! cargo run --release --example dump [-- --bind ADDR --runner NAME --workers N]
//!
//! Answers every request with `{"environ": {...}, "body_hex": "..."}`: see `sgi::debug::EnvironDump`
//! for the contract.

mod common;

fn main() {
    common::serve("dump", sgi::debug::EnvironDump);
}
