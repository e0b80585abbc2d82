//! Process limits that bound how many connections a server can hold.

use std::io;

/// Descriptors a connection cap derived from the limit leaves to everything else: the handlers'
/// own files and sockets, the listeners, pollers and pipes. An eighth of the limit, at least 16
/// and at most 4,096.
fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 8).clamp(16, 4096)
}

/// The most connections that fit under the current soft descriptor limit with the reserve kept
/// free; at least 1. Read when a server starts, so an app that raised its limit first (see
/// [`raise_fd_limit`]) gets the larger cap.
pub(crate) fn connection_cap_from_fd_limit() -> usize {
    let soft = crate::sys::unix::fd_limit().map_or(1024, |(soft, _)| soft);
    // An unlimited (or absurd) limit: a cap that still leaves the kernel's own bound to be hit.
    let soft = soft.min(1 << 24);
    soft.saturating_sub(reserved_descriptors(soft)).max(1) as usize
}

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`) to its hard limit,
/// and returns the new soft limit. Linux only, like the crate.
///
/// A server holds one descriptor per connection, and the soft limit is often 1,024 while the
/// hard limit is far higher: call this at the start of `main` to hold more connections. The
/// library never changes process limits by itself; the event runner's default connection cap
/// follows whatever the soft limit is when it starts.
///
/// # Errors
/// The `io::Error` of `getrlimit(2)` or `setrlimit(2)`.
///
/// ```
/// let limit = sgi::raise_fd_limit()?;
/// assert!(limit >= 3);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn raise_fd_limit() -> io::Result<u64> {
    crate::sys::unix::raise_fd_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_an_eighth_of_the_limit_within_bounds() {
        assert_eq!(reserved_descriptors(64), 16);
        assert_eq!(reserved_descriptors(256), 32);
        assert_eq!(reserved_descriptors(1024), 128);
        assert_eq!(reserved_descriptors(20_000), 2500);
        assert_eq!(reserved_descriptors(1 << 20), 4096);
    }

    #[test]
    fn the_cap_fits_under_the_soft_limit() {
        let (soft, _) = crate::sys::unix::fd_limit().unwrap();
        let cap = connection_cap_from_fd_limit() as u64;
        assert!(cap >= 1 && cap + reserved_descriptors(soft.min(1 << 24)) <= soft.max(17), "{cap} {soft}");
    }
}
