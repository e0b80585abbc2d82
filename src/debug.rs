//! Handlers for looking at what the server does: [`EnvironDump`].

use std::io::Read;

use crate::environ::Environ;
use crate::handler::{BoxError, Handler, Response, StartResponse};

/// Answers every request with a JSON dump of its environ and body: the contract the `dump`
/// example serves and external conformance suites read.
///
/// The body is `{"environ": {NAME: VALUE, ...}, "body_hex": "<hex of every byte of wsgi.input>"}`,
/// with every byte-string variable of the environ (each value's bytes mapped one-to-one to the
/// characters U+0000..U+00FF, as WSGI's latin-1 strings are) and `wsgi.url_scheme`, with
/// `Content-Type: application/json`.
///
/// ```
/// use sgi::debug::EnvironDump;
/// # fn check(_: impl sgi::Handler) {}
/// check(EnvironDump);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvironDump;

impl Handler for EnvironDump {
    fn call(&self, env: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let mut json = String::with_capacity(1024 + 2 * body.len());
        json.push_str("{\"environ\": {");
        for (i, (key, value)) in env.iter().enumerate() {
            if i > 0 {
                json.push_str(", ");
            }
            push_json_string(&mut json, key.chars());
            json.push_str(": ");
            push_json_string(&mut json, value.iter().map(|&b| char::from(b)));
        }
        json.push_str("}, \"body_hex\": \"");
        for b in body {
            json.push_str(&format!("{b:02x}"));
        }
        json.push_str("\"}");
        Ok(start_response.start("200 OK", [("Content-Type", "application/json")])?.body(json))
    }
}

fn push_json_string(out: &mut String, chars: impl Iterator<Item = char>) {
    out.push('"');
    for c in chars {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
