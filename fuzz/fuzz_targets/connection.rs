//! One whole connection in memory: arbitrary client bytes cut at arbitrary points, handlers that
//! read some, all or none of the body, stream, fail or panic. Fails on a panic that is not the
//! handler's own, a buffer over its bound, a connection that never ends, or output that is not
//! well-framed HTTP/1.1 (see `sgi::private::fuzz_connection`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libFuzzer's hook reports every panic, even one the server catches (a handler that
        // panics on purpose); ours stays quiet. A panic that escapes is still a crash.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| sgi::private::fuzz_connection(data)
);
