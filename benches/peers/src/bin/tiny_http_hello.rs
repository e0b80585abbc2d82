//! Peer server for benches/wrk.sh: "Hello, World!" (text/plain) on tiny_http 0.12, with
//! `--workers N` threads (default 4) each looping on `server.recv()`.
//!
//! cargo run --release --bin tiny_http_hello -- [--bind ADDR] [--workers N]

use std::sync::Arc;

fn main() {
    let (bind, workers) = options();
    let server = Arc::new(tiny_http::Server::http(&bind).unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {bind}: {e}");
        std::process::exit(1)
    }));
    println!("tiny_http_hello: serving on http://{bind}/ with {workers} worker threads");
    let content_type = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain"[..]).expect("valid header");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let server = Arc::clone(&server);
            let content_type = content_type.clone();
            std::thread::spawn(move || loop {
                let request = match server.recv() {
                    Ok(request) => request,
                    Err(e) => {
                        eprintln!("error: recv: {e}");
                        continue;
                    }
                };
                let response = tiny_http::Response::from_string("Hello, World!").with_header(content_type.clone());
                let _ = request.respond(response);
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

fn options() -> (String, usize) {
    let mut bind = "127.0.0.1:8000".to_string();
    let mut workers = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(v)) => bind = v,
            ("--workers", Some(v)) => workers = v.parse().unwrap_or_else(|_| usage("--workers takes a number")),
            _ => usage(&format!("unknown or incomplete argument {arg:?}")),
        }
    }
    (bind, workers.max(1))
}

fn usage(problem: &str) -> ! {
    eprintln!("error: {problem}\nusage: tiny_http_hello [--bind ADDR] [--workers N]");
    std::process::exit(2)
}
