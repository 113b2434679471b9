//! Integration tests of the whole system: the real binary, real QUIC between real processes on
//! loopback, real sandboxes. One test binary; modules by theme.

mod bad_jobs;
mod builds;
mod cache_budget;
mod conventions;
mod corpus;
mod deploy;
mod examples;
mod failures;
mod flood;
mod infer;
mod lambda;
mod liars;
mod library;
mod local_files;
mod media;
mod members;
mod nat;
mod python;
mod s3;
mod sandbox;
mod scale;
mod self_hosted;
mod test_suites;
mod trust;
mod util;
mod web;
