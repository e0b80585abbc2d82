//! [`Headers`]: response headers of mixed value types, for [`StartResponse::start`].
//!
//! [`StartResponse::start`]: crate::StartResponse::start

use std::borrow::Cow;

/// Response headers built one at a time, whose values may be of different types: `&str`,
/// `String`, bytes, or numbers. An array such as `[("A", "x"), ("B", name)]` needs every value
/// of one type; this does not, and it can be filled conditionally.
///
/// Borrowed values are not copied; owned ones are moved in. [`StartResponse::start`] takes it
/// as it takes an array, and checks each header the same way.
///
/// ```
/// use sgi::Headers;
/// fn app(env: &mut sgi::Environ<'_>, start_response: sgi::StartResponse<'_>) -> Result<sgi::Response, sgi::BoxError> {
///     let session = format!("session={}; HttpOnly; SameSite=Lax", 42);
///     let mut headers = Headers::new().add("Content-Type", "text/plain").add("Set-Cookie", session);
///     if env.method() == "HEAD" {
///         headers.push("X-Head", "yes");
///     }
///     headers.push("X-Answer", 42);
///     Ok(start_response.start("200 OK", headers)?.body("hi\n"))
/// }
/// # let client = sgi::testing::TestClient::new(app);
/// # let response = client.get("/");
/// # assert_eq!(response.header("Set-Cookie"), Some("session=42; HttpOnly; SameSite=Lax"));
/// # assert_eq!(response.header("X-Answer"), Some("42"));
/// ```
///
/// [`StartResponse::start`]: crate::StartResponse::start
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers<'a> {
    fields: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
}

impl<'a> Headers<'a> {
    /// No headers.
    pub fn new() -> Headers<'a> {
        Headers { fields: Vec::new() }
    }

    /// Adds a header, by value (for chaining).
    pub fn add(mut self, name: impl Into<Cow<'a, str>>, value: impl HeaderValue<'a>) -> Headers<'a> {
        self.push(name, value);
        self
    }

    /// Adds a header in place (for headers added conditionally).
    pub fn push(&mut self, name: impl Into<Cow<'a, str>>, value: impl HeaderValue<'a>) {
        self.fields.push((name.into(), value.into_header_value()));
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The headers, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|(n, v)| (&**n, &**v))
    }
}

impl<'a> IntoIterator for Headers<'a> {
    type Item = (Cow<'a, str>, Cow<'a, [u8]>);
    type IntoIter = std::vec::IntoIter<(Cow<'a, str>, Cow<'a, [u8]>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter()
    }
}

impl<'h, 'a> IntoIterator for &'h Headers<'a> {
    type Item = &'h (Cow<'a, str>, Cow<'a, [u8]>);
    type IntoIter = std::slice::Iter<'h, (Cow<'a, str>, Cow<'a, [u8]>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.fields.iter()
    }
}

/// What a [`Headers`] value can be: text, bytes (borrowed or owned) and integers (written in
/// decimal).
pub trait HeaderValue<'a> {
    /// The value's bytes, borrowed when they can be.
    fn into_header_value(self) -> Cow<'a, [u8]>;
}

impl<'a> HeaderValue<'a> for &'a str {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl<'a> HeaderValue<'a> for &'a String {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl<'a> HeaderValue<'a> for String {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        Cow::Owned(self.into_bytes())
    }
}

impl<'a> HeaderValue<'a> for Cow<'a, str> {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        match self {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }
    }
}

impl<'a> HeaderValue<'a> for &'a [u8] {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self)
    }
}

impl<'a> HeaderValue<'a> for Vec<u8> {
    fn into_header_value(self) -> Cow<'a, [u8]> {
        Cow::Owned(self)
    }
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl<'a> HeaderValue<'a> for $t {
            fn into_header_value(self) -> Cow<'a, [u8]> {
                Cow::Owned(self.to_string().into_bytes())
            }
        }
    )*};
}

integer_values!(u16, u32, u64, usize, i32, i64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestClient;

    #[test]
    fn mixed_values_go_out_in_order_and_bad_ones_are_refused_as_in_an_array() {
        let client = TestClient::new(crate::handler_fn(|env, start_response| {
            let owned = String::from("owned");
            let headers = Headers::new()
                .add("X-Static", "static")
                .add("X-Owned", owned)
                .add(String::from("X-Name"), &b"bytes"[..])
                .add("X-Number", 7u64)
                .add("X-Vec", vec![b'v']);
            if env.path_info() == b"/bad" {
                return Ok(start_response.start("200 OK", headers.add("X-Bad", "a\r\nb"))?.body(""));
            }
            Ok(start_response.start("200 OK", headers)?.body(""))
        }));
        let response = client.get("/");
        let ours: Vec<(&str, &[u8])> = response.headers().filter(|(n, _)| n.starts_with("X-")).collect();
        assert_eq!(
            ours,
            [
                ("X-Static", &b"static"[..]),
                ("X-Owned", b"owned"),
                ("X-Name", b"bytes"),
                ("X-Number", b"7"),
                ("X-Vec", b"v")
            ]
        );
        assert_eq!(client.get("/bad").status(), 500);
    }

    #[test]
    fn borrowed_values_are_not_copied() {
        let value = String::from("v");
        let headers = Headers::new().add("A", &value).add("B", "w");
        assert!(headers.into_iter().all(|(n, v)| matches!((n, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
    }
}
