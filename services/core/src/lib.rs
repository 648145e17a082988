//! Shared foundation of every Switchyard service.
//!
//! Each service crate builds on these pieces instead of growing its own: typed
//! settings, telemetry, the NATS connection and JetStream topology, the message
//! header contract with W3C trace context, the catalog stored in KV and its watch,
//! VRL mappings, the vocabulary of outcomes and failures, and the shutdown that every task obeys.

#![forbid(unsafe_code)]

pub mod admin;
pub mod apikey;
pub mod auth;
pub mod canary;
pub mod catalog;
pub mod config;
pub mod consumer;
pub mod contract;
mod error;
pub mod event;
pub mod headers;
pub mod http;
pub mod lease;
pub mod ledger;
pub mod mapping;
pub mod metrics;
pub mod nats;
pub mod operator;
pub mod outbound;
pub mod outcome;
pub mod ratelimit;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod verdict;

pub use error::{BoxError, Error};

/// Every Switchyard process allocates with jemalloc, built (`.cargo/config.toml`) to
/// return memory freed after a burst to the system within seconds. glibc's malloc
/// keeps it: after a 1.5 s NATS stall, ingest's 750 extra connections were closed
/// again, yet its RSS stayed twice what it was.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
