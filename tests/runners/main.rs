//! Every test that runs a server process, in one binary: the conformance suite, process
//! behaviour checked in `/proc`, and hostile clients. One macro, [`suite!`], instantiates every
//! per-runner test for each runner, so adding a runner is adding one line at the bottom.
//!
//! Each test's server holds `process_support::exclusive` for its life: tests that spawn servers
//! and depend on timing never run at the same time as each other.

#[path = "../process_support/mod.rs"]
mod process_support;
#[path = "../support/mod.rs"]
mod support;

mod conformance;
mod hostile;
mod master;
mod processes;
mod proxies;
mod service;

use conformance::Runner;
use processes::ListenerClose;

/// Instantiates the per-runner tests for one runner:
/// `suite!(module, runner name, [its other options], workers, closed-loop clients, when the
/// listener closes at a stop, { extra tests })`.
macro_rules! suite {
    ($module:ident, $name:expr, [$($option:expr),*], $workers:expr, $clients:expr, $listener:expr, { $($only:item)* }) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            const RUNNER: Runner = Runner { name: $name, workers: $workers, options: &[$($option),*] };

            #[test]
            fn hello() {
                conformance::hello(RUNNER);
            }

            #[test]
            fn keep_alive() {
                conformance::keep_alive(RUNNER);
            }

            #[test]
            fn pipelining() {
                conformance::pipelining(RUNNER);
            }

            #[test]
            fn post_bodies() {
                conformance::post_bodies(RUNNER);
            }

            #[test]
            fn error_statuses() {
                conformance::error_statuses(RUNNER);
            }

            #[test]
            fn panicking_handler() {
                conformance::panicking_handler(RUNNER);
            }

            #[test]
            fn handler_error() {
                conformance::handler_error(RUNNER);
            }

            #[test]
            fn slow_stream_is_not_a_stalled_write() {
                conformance::slow_stream_is_not_a_stalled_write(RUNNER);
            }

            #[test]
            fn flags() {
                conformance::flags(RUNNER);
            }

            #[test]
            fn many_clients() {
                conformance::many_clients(RUNNER);
            }

            #[test]
            fn graceful_shutdown_loses_no_request_in_flight() {
                conformance::graceful_shutdown_loses_no_request_in_flight(RUNNER);
            }

            #[test]
            fn graceful_stop_with_a_stream_in_flight() {
                processes::graceful_stop_with_request_in_flight(RUNNER, $listener);
            }

            #[test]
            fn graceful_stop_under_closed_loop_load() {
                hostile::graceful_stop_under_closed_loop_load(RUNNER, $clients);
            }

            #[test]
            fn idle_keepalive_does_not_delay_exit() {
                processes::idle_keepalive_does_not_delay_exit(RUNNER);
            }

            #[test]
            fn unix_socket() {
                processes::unix_socket(RUNNER);
            }

            $($only)*
        }
    };
}

// `--workers` is ignored by the serial runner, which serves one connection at a time: one
// closed-loop client, and its listener closes once the connection in flight is done.
suite!(serial, "serial", [], 1, 1, ListenerClose::AfterInFlight, {
    /// Instead of `slowloris_does_not_stall_others`, which the serial runner does not promise.
    #[test]
    fn slowloris_stalls_only_until_the_header_deadline() {
        conformance::slowloris_stalls_serial_only_until_the_header_deadline(RUNNER);
    }
});

suite!(threads, "threads", [], 64, 8, ListenerClose::AtSignal, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});

suite!(pool, "pool", [], 4, 8, ListenerClose::AtSignal, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});

suite!(fork, "fork", [], 64, 8, ListenerClose::AtSignal, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});

// Two loops: handlers run on them, so a slow handler holds its loop (the tests' `/slow` and
// streams hold one of two). The listeners are shared by the loops and close once every loop has
// seen the stop: after a stream in flight on one of them, as on serial.
suite!(event, "event", [], 2, 8, ListenerClose::AfterInFlight, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});

// Handlers on four offload threads; the loops only read and write.
suite!(event_offload, "event", ["--threads", "4"], 2, 8, ListenerClose::AfterInFlight, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});

// Two worker processes, each a pool of four threads; the master holds the listeners until its
// last worker is gone, so they close after the stream in flight.
suite!(prefork, "prefork", [], 2, 8, ListenerClose::AfterInFlight, {
    #[test]
    fn slowloris_does_not_stall_others() {
        conformance::slowloris_does_not_stall_others(RUNNER);
    }
});
