//! imagegen-mcp: an MCP server for image generation and editing.

pub mod config;
