//! cargo run --release --example files [-- --bind ADDR --runner NAME ...: --help lists every option]
//!
//! Serves the directory `FILES_ROOT` (default: the current one) as `python3 -m http.server`
//! would, with `sgi::StaticFiles`: conditional and range requests, files sent with
//! `sendfile(2)`. For `benches/sendfile.py`: `FILES_READ=1` sends the bytes of `FILES_ROOT/FILE`
//! for `GET /FILE` with reads and writes instead, the baseline sendfile is measured against.

mod common;

use std::fs::File;

fn main() -> std::process::ExitCode {
    let root = std::env::var_os("FILES_ROOT").unwrap_or_else(|| ".".into());
    if std::env::var_os("FILES_READ").is_some() {
        return common::serve(sgi::handler_fn(move |env, start_response| {
            let name = String::from_utf8_lossy(env.path_info()).trim_start_matches('/').replace('/', "");
            let file = File::open(std::path::Path::new(&root).join(name))?;
            let len = file.metadata()?.len();
            // A reader, not a file: read into memory and written, chunk by chunk.
            let body = sgi::Body::from_reader(file, Some(len));
            Ok(start_response.start("200 OK", [("Content-Type", "application/octet-stream")])?.body(body))
        }));
    }
    match sgi::StaticFiles::new(&root) {
        Ok(files) => common::serve(files),
        Err(e) => {
            eprintln!("error: cannot serve {}: {e}", std::path::Path::new(&root).display());
            std::process::ExitCode::FAILURE
        }
    }
}
