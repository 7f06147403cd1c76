//! Test kit shared by the tests of `imagegen-mcp` and `imagegen-providers` (and usable by the
//! bench): image and body builders ([`img`], [`sse`], [`openai`]) and one scriptable fake
//! image API ([`FakeUpstream`]) that answers each request with the next [`Reply`] of a
//! script and records what it was sent, and a real `redis-server` ([`RedisServer`]).
//!
//! It depends on neither workspace crate, so both can dev-depend on it.

pub mod fake;
pub mod img;
pub mod openai;
pub mod redis;
pub mod sse;

pub use fake::{Captured, Chunk, FakeUpstream, Reply};
pub use redis::RedisServer;
