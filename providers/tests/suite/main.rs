//! The providers' tests, in one binary: each module runs one provider (or the shared core)
//! against a fake upstream speaking its vendor's API. One binary links once.

mod common;

mod azure_openai;
mod bfl;
mod conformance;
mod example_provider;
mod fal;
mod gemini;
mod hostile;
mod live_upstream;
mod moderation;
mod openai;
mod openai_compatible;
mod replicate;
mod stability;
