//! The only place that knows the operating system. Everything `unsafe` in the crate lives below.

pub(crate) mod unix;
