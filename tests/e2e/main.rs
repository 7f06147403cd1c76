//! The end-to-end tests, in one binary: each module drives the real `imagegen-mcp` binary (or
//! its engine) as users do. One binary links once, where one per file linked a dozen times.

mod common;

mod batch_edit;
mod budget;
mod cli;
mod cluster;
mod config;
mod confirm;
mod embed;
mod gallery;
mod gpt26;
mod history;
mod hostile_local;
mod hostile_upstream;
mod http;
mod http_load;
mod lifecycle;
mod mcp_stdio;
mod moderation;
mod oauth;
mod ops;
mod presets;
mod resilience;
mod retention;
mod rotation;
mod routing;
mod store;
mod tasks;
mod transport;
mod usage;
