//! cargo run --release --example bench_app [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! The application benches/runners.rs measures every runner with, routed by `PATH_INFO`:
//! - `/hello`: `Hello, World!`, no work at all;
//! - `/cpu`: about 50 µs of deterministic CPU work (a chain of splitmix64 steps), answering the
//!   resulting hash;
//! - `/cpu200`: the same work four times over, about 200 µs (for process-level comparisons, where
//!   the load generator's own CPU must stay small);
//! - `/io`: sleeps 5 ms (a stand-in for a database or upstream call), then answers `slept`;
//! - anything else: 404.

mod common;

use std::hint::black_box;
use std::time::Duration;

/// splitmix64 steps for `/cpu`: each depends on the previous one, so the loop can be neither
/// vectorised nor folded; about 4 ns a step on a current x86-64 core, so 12 500 steps ≈ 50 µs.
const CPU_ROUNDS: u64 = 12_500;

/// How long `/io` sleeps.
const IO_SLEEP: Duration = Duration::from_millis(5);

fn cpu_work(seed: u64, rounds: u64) -> u64 {
    let mut x = seed;
    for _ in 0..rounds {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x = z ^ (z >> 31);
    }
    x
}

fn main() -> std::process::ExitCode {
    let app = sgi::handler_fn(|env, start_response| {
        let text_plain = [("Content-Type", "text/plain")];
        match env.path_info() {
            b"/hello" => Ok(start_response.start("200 OK", text_plain)?.body("Hello, World!")),
            b"/cpu" => {
                let hash = cpu_work(black_box(42), CPU_ROUNDS);
                Ok(start_response.start("200 OK", text_plain)?.body(format!("{hash:016x}")))
            }
            b"/cpu200" => {
                let hash = cpu_work(black_box(42), 4 * CPU_ROUNDS);
                Ok(start_response.start("200 OK", text_plain)?.body(format!("{hash:016x}")))
            }
            b"/io" => {
                std::thread::sleep(IO_SLEEP);
                Ok(start_response.start("200 OK", text_plain)?.body("slept"))
            }
            _ => Ok(start_response.start("404 Not Found", text_plain)?.body("not found")),
        }
    });
    common::serve(app)
}
