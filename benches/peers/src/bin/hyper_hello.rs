//! Peer server for benches/wrk.sh: "Hello, World!" (text/plain) on hyper 1.x + hyper-util + tokio,
//! plain HTTP/1.1 with keep-alive. `--workers 1` (the default) runs a `current_thread` runtime;
//! `--workers N` (N > 1) a multi-thread runtime with N worker threads.
//!
//! cargo run --release --bin hyper_hello -- [--bind ADDR] [--workers N]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn hello(_request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    Ok(response)
}

async fn serve(bind: String, workers: usize) {
    let listener = TcpListener::bind(&bind).await.unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {bind}: {e}");
        std::process::exit(1)
    });
    let runtime = if workers == 1 { "current_thread".to_string() } else { format!("{workers}-thread") };
    println!("hyper_hello: serving on http://{}/ on a {runtime} runtime", listener.local_addr().expect("bound"));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("error: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ =
                http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service_fn(hello)).await;
        });
    }
}

fn main() {
    let (bind, workers) = options();
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    }
    .expect("tokio runtime");
    runtime.block_on(serve(bind, workers));
}

fn options() -> (String, usize) {
    let mut bind = "127.0.0.1:8000".to_string();
    let mut workers = 1usize;
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
    eprintln!("error: {problem}\nusage: hyper_hello [--bind ADDR] [--workers N]");
    std::process::exit(2)
}
