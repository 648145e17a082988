//! What `switchyard dev` and the test harness share: a local `nats-server` child.
//! It is a development tool, not part of any service, so it lives here rather than
//! in core.

#![forbid(unsafe_code)]

pub mod local_server;
