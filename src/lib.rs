//! imagegen-mcp: an MCP server for image generation and editing.

pub mod args;
pub mod batch;
pub mod budget;
pub mod cache;
pub mod caller_limits;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cost;
pub mod delivery;
pub mod engine;
pub mod error;
pub mod http;
pub mod inputs;
pub mod ledger;
pub mod lifecycle;
pub mod live;
pub mod moderation;
pub mod oauth;
pub mod presets;
pub mod progress;
pub mod routing;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod transport;
